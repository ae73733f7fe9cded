//! Learning-rate schedules, evaluated per optimizer step: constant, step decay
//! (PyTorch's `StepLR`), cosine annealing (`CosineAnnealingLR`), each with an optional linear
//! warm-up (`LinearLR` chained in front).

/// A schedule over `total_steps` optimizer steps.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Schedule {
    pub base_lr: f32,
    pub kind: ScheduleKind,
    /// Warm-up steps, rising linearly from `warmup_start * base_lr`.
    pub warmup_steps: usize,
    pub warmup_start: f32,
    pub total_steps: usize,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ScheduleKind {
    Constant,
    /// Multiply by `gamma` every `every` steps.
    Step {
        every: usize,
        gamma: f32,
    },
    /// Cosine from the base rate to `min_lr` over the steps after warm-up.
    Cosine {
        min_lr: f32,
    },
}

impl Schedule {
    pub fn lr(&self, step: usize) -> f32 {
        if step < self.warmup_steps {
            let f = self.warmup_start
                + (1.0 - self.warmup_start) * step as f32 / self.warmup_steps as f32;
            return self.base_lr * f;
        }
        let t = step - self.warmup_steps;
        match self.kind {
            ScheduleKind::Constant => self.base_lr,
            ScheduleKind::Step { every, gamma } => {
                self.base_lr * gamma.powi((t / every.max(1)) as i32)
            }
            ScheduleKind::Cosine { min_lr } => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
                let x = (t.min(span) as f32) / span as f32;
                min_lr + (self.base_lr - min_lr) * 0.5 * (1.0 + (std::f32::consts::PI * x).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let s = Schedule {
            base_lr: 0.1,
            kind: ScheduleKind::Cosine { min_lr: 0.0 },
            warmup_steps: 10,
            warmup_start: 0.1,
            total_steps: 110,
        };
        assert!((s.lr(0) - 0.01).abs() < 1e-7);
        assert!((s.lr(5) - 0.055).abs() < 1e-6);
        assert!((s.lr(10) - 0.1).abs() < 1e-7);
        assert!((s.lr(60) - 0.05).abs() < 1e-6);
        assert!(s.lr(110).abs() < 1e-7);
    }

    #[test]
    fn step_decay() {
        let s = Schedule {
            base_lr: 1.0,
            kind: ScheduleKind::Step {
                every: 3,
                gamma: 0.1,
            },
            warmup_steps: 0,
            warmup_start: 1.0,
            total_steps: 10,
        };
        assert_eq!(s.lr(2), 1.0);
        assert!((s.lr(3) - 0.1).abs() < 1e-7);
        assert!((s.lr(7) - 0.01).abs() < 1e-8);
    }
}
