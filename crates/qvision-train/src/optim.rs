//! Optimizers with PyTorch's update rules: SGD (momentum, dampening-free, Nesterov, L2 weight
//! decay) and AdamW (decoupled weight decay). State is kept per parameter name so it can be
//! checkpointed.

use std::collections::BTreeMap;

/// Which optimizer and its hyper-parameters (the learning rate comes from the schedule).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum OptimizerKind {
    Sgd {
        momentum: f32,
        nesterov: bool,
        weight_decay: f32,
    },
    AdamW {
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
    },
}

impl OptimizerKind {
    pub fn sgd(momentum: f32, nesterov: bool, weight_decay: f32) -> Self {
        OptimizerKind::Sgd {
            momentum,
            nesterov,
            weight_decay,
        }
    }

    /// AdamW with PyTorch's defaults (betas 0.9/0.999, eps 1e-8).
    pub fn adamw(weight_decay: f32) -> Self {
        OptimizerKind::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }
}

/// Per-parameter state.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ParamState {
    /// Momentum buffer (SGD) or first moment (AdamW).
    pub m: Vec<f32>,
    /// Second moment (AdamW).
    pub v: Vec<f32>,
    pub step: u64,
}

/// An optimizer over named parameters.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Optimizer {
    pub kind: OptimizerKind,
    pub state: BTreeMap<String, ParamState>,
}

impl Optimizer {
    pub fn new(kind: OptimizerKind) -> Self {
        Optimizer {
            kind,
            state: BTreeMap::new(),
        }
    }

    /// One update of parameter `name` with gradient `g` at learning rate `lr`.
    pub fn step(&mut self, name: &str, p: &mut [f32], g: &[f32], lr: f32) {
        let st = self.state.entry(name.to_string()).or_default();
        st.step += 1;
        match self.kind {
            OptimizerKind::Sgd {
                momentum,
                nesterov,
                weight_decay,
            } => {
                if momentum == 0.0 {
                    for (p, &g) in p.iter_mut().zip(g) {
                        *p -= lr * (g + weight_decay * *p);
                    }
                    return;
                }
                if st.m.len() != p.len() {
                    st.m = vec![0.0; p.len()];
                }
                let first = st.step == 1;
                for ((p, &g), b) in p.iter_mut().zip(g).zip(st.m.iter_mut()) {
                    let d = g + weight_decay * *p;
                    *b = if first { d } else { momentum * *b + d };
                    let upd = if nesterov { d + momentum * *b } else { *b };
                    *p -= lr * upd;
                }
            }
            OptimizerKind::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                if st.m.len() != p.len() {
                    st.m = vec![0.0; p.len()];
                    st.v = vec![0.0; p.len()];
                }
                let t = st.step as i32;
                let bc1 = 1.0 - beta1.powi(t);
                let bc2 = 1.0 - beta2.powi(t);
                for (((p, &g), m), v) in p
                    .iter_mut()
                    .zip(g)
                    .zip(st.m.iter_mut())
                    .zip(st.v.iter_mut())
                {
                    *p *= 1.0 - lr * weight_decay;
                    *m = beta1 * *m + (1.0 - beta1) * g;
                    *v = beta2 * *v + (1.0 - beta2) * g * g;
                    let denom = (*v / bc2).sqrt() + eps;
                    *p -= lr * (*m / bc1) / denom;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgd_momentum_nesterov_matches_pytorch_by_hand() {
        // torch.optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
        let mut o = Optimizer::new(OptimizerKind::sgd(0.9, true, 0.01));
        let mut p = vec![1.0f32];
        o.step("p", &mut p, &[0.5], 0.1);
        // d = 0.5 + 0.01 = 0.51; b = 0.51; upd = 0.51 + 0.9*0.51 = 0.969
        assert!((p[0] - (1.0 - 0.0969)).abs() < 1e-6);
        o.step("p", &mut p, &[0.5], 0.1);
        let d = 0.5 + 0.01 * (1.0 - 0.0969f32);
        let b = 0.9 * 0.51 + d;
        assert!((p[0] - (1.0 - 0.0969 - 0.1 * (d + 0.9 * b))).abs() < 1e-6);
    }

    #[test]
    fn adamw_first_step_moves_by_lr() {
        let mut o = Optimizer::new(OptimizerKind::adamw(0.0));
        let mut p = vec![1.0f32, -1.0];
        o.step("p", &mut p, &[0.3, -2.0], 0.01);
        assert!((p[0] - 0.99).abs() < 1e-5);
        assert!((p[1] + 0.99).abs() < 1e-5);
    }
}
