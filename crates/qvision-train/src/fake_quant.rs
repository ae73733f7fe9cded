//! Fake quantization for quantization-aware training (PyTorch's `FakeQuantize`): quantize and
//! dequantize in the forward pass, pass the gradient straight through (zero where the value was
//! clamped) in the backward pass.
//!
//! Activations use a moving-average min/max observer (PyTorch's QAT default, averaging constant
//! 0.01). Weights are fake-quantized with exactly the per-channel (or per-tensor) min/max
//! quantization that [`qvision_quant::convert`] applies, so the trained network is the one that
//! converts.

use qvision_quant::qparams::{calculate_qparams, QuantParams};
use qvision_quant::quantize::{quantize_weights_per_channel, quantize_weights_per_tensor};
use qvision_quant::QConfig;
use rayon::prelude::*;

/// A moving-average min/max observer with its fake-quant switch, for one activation.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ActFakeQuant {
    pub min: f32,
    pub max: f32,
    pub seen: bool,
    pub averaging_constant: f32,
    /// LSQ: the learned scale and the zero point fixed at initialisation; when set, these are
    /// the quantization parameters instead of the observed range.
    #[serde(default)]
    pub learned: Option<(f32, i32)>,
}

impl Default for ActFakeQuant {
    fn default() -> Self {
        ActFakeQuant {
            min: 0.0,
            max: 0.0,
            seen: false,
            averaging_constant: 0.01,
            learned: None,
        }
    }
}

impl ActFakeQuant {
    /// Update the running range from a batch.
    pub fn observe(&mut self, x: &[f32]) {
        let (lo, hi) = x
            .par_chunks(1 << 14)
            .map(|c| {
                c.iter()
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                        (a.min(v), b.max(v))
                    })
            })
            .reduce(
                || (f32::INFINITY, f32::NEG_INFINITY),
                |(a, b), (c, d)| (a.min(c), b.max(d)),
            );
        if lo > hi {
            return;
        }
        if self.seen {
            let c = self.averaging_constant;
            self.min += c * (lo - self.min);
            self.max += c * (hi - self.max);
        } else {
            (self.min, self.max, self.seen) = (lo, hi, true);
        }
    }

    pub fn qparams(&self, qc: &QConfig) -> QuantParams {
        if let Some((scale, zero_point)) = self.learned {
            return QuantParams { scale, zero_point };
        }
        if !self.seen {
            return QuantParams {
                scale: 1.0,
                zero_point: 0,
            };
        }
        calculate_qparams(
            self.min,
            self.max,
            qc.activation_dtype,
            qc.activation_scheme,
            qc.reduce_range,
        )
    }

    /// Fake-quantize `x` in place; returns the straight-through mask (true where the gradient
    /// passes).
    pub fn apply(&self, x: &mut [f32], qc: &QConfig) -> Vec<bool> {
        let (qmin, qmax) = qc.activation_dtype.range(qc.reduce_range);
        fake_quantize(x, self.qparams(qc), qmin, qmax)
    }
}

/// `x = (clamp(round(x/s) + z, qmin, qmax) - z) * s` in place, and the in-range mask. Rounds
/// half to even, as PyTorch does (the add-and-subtract of 1.5·2^23, exact once the quotient is
/// clamped to a small range, and vectorisable unlike `round_ties_even` on baseline x86-64).
pub fn fake_quantize(x: &mut [f32], q: QuantParams, qmin: i32, qmax: i32) -> Vec<bool> {
    const MAGIC: f32 = 12_582_912.0;
    let inv = 1.0 / q.scale;
    let z = q.zero_point as f32;
    // Quotients beyond these bounds are out of range whatever their rounding.
    let (lo, hi) = (qmin as f32 - z - 1.0, qmax as f32 - z + 1.0);
    let mut mask = vec![false; x.len()];
    x.par_chunks_mut(1 << 14)
        .zip(mask.par_chunks_mut(1 << 14))
        .for_each(|(xs, ms)| {
            for (v, m) in xs.iter_mut().zip(ms.iter_mut()) {
                let t = (*v * inv).clamp(lo, hi);
                let r = ((t + MAGIC) - MAGIC) + z;
                *m = r >= qmin as f32 && r <= qmax as f32;
                *v = (r.clamp(qmin as f32, qmax as f32) - z) * q.scale;
            }
        });
    mask
}

/// LSQ (learned step size, Esser et al. 2020): fake-quantize `x` in place and return the
/// straight-through mask and, per element, `d x_q / d scale`: `round(x/s) - x/s` inside the
/// range, `qmin - z` below it and `qmax - z` above it.
pub fn fake_quantize_lsq(
    x: &mut [f32],
    q: QuantParams,
    qmin: i32,
    qmax: i32,
) -> (Vec<bool>, Vec<f32>) {
    let factor: Vec<f32> = x
        .par_iter()
        .with_min_len(1 << 14)
        .map(|&v| {
            let t = v / q.scale;
            let r = t.round_ties_even() + q.zero_point as f32;
            if r < qmin as f32 {
                (qmin - q.zero_point) as f32
            } else if r > qmax as f32 {
                (qmax - q.zero_point) as f32
            } else {
                t.round_ties_even() - t
            }
        })
        .collect();
    (fake_quantize(x, q, qmin, qmax), factor)
}

/// The weights as the int8 model will hold them (quantized per the qconfig, dequantized).
pub fn fake_quant_weight(w: &[f32], out_channels: usize, qc: &QConfig) -> Vec<f32> {
    let q = if qc.weight_scheme.is_per_channel() {
        quantize_weights_per_channel(w, out_channels)
    } else {
        quantize_weights_per_tensor(w, out_channels)
    };
    match q {
        Ok((q, scales)) => {
            let per = w.len() / out_channels.max(1);
            q.iter()
                .enumerate()
                .map(|(i, &v)| v as f32 * scales[i / per.max(1)])
                .collect()
        }
        Err(_) => w.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qvision_quant::Backend;

    #[test]
    fn fake_quant_rounds_to_the_grid_and_masks_clamped_values() {
        let qc = QConfig::default_for(Backend::X86);
        let mut fq = ActFakeQuant::default();
        fq.observe(&[0.0, 2.55]);
        let mut x = vec![0.011, 1.0, 3.0, -1.0];
        let mask = fq.apply(&mut x, &qc);
        assert_eq!(mask, vec![true, true, false, false]);
        assert!((x[0] - 0.01).abs() < 1e-6);
        assert!((x[2] - 2.55).abs() < 1e-5);
        assert_eq!(x[3], 0.0);
        // moving average
        fq.observe(&[0.0, 3.55]);
        assert!((fq.max - 2.56).abs() < 1e-5);
    }

    #[test]
    fn lsq_scale_derivative() {
        let q = QuantParams {
            scale: 0.1,
            zero_point: 10,
        };
        let mut x = vec![0.26, -5.0, 30.0, 1.0];
        let (mask, f) = fake_quantize_lsq(&mut x, q, 0, 255);
        assert_eq!(mask, vec![true, false, false, true]);
        // 0.26/0.1 = 2.6 -> 3: 3 - 2.6; below: 0 - 10; above: 255 - 10; exact: 0.
        assert!((f[0] - 0.4).abs() < 1e-5);
        assert_eq!((f[1], f[2]), (-10.0, 245.0));
        assert!(f[3].abs() < 1e-5);
        assert!((x[0] - 0.3).abs() < 1e-6 && (x[1] + 1.0).abs() < 1e-6);
    }

    #[test]
    fn rounding_matches_round_half_to_even() {
        let q = QuantParams {
            scale: 0.5,
            zero_point: 3,
        };
        let xs: Vec<f32> = (-600..600)
            .map(|i| i as f32 * 0.125 + 0.0001 * (i % 3) as f32)
            .collect();
        let mut got = xs.clone();
        let mask = fake_quantize(&mut got, q, 0, 255);
        for ((x, g), m) in xs.iter().zip(&got).zip(&mask) {
            let r = (x / q.scale).round_ties_even() as i32 + q.zero_point;
            let want = (r.clamp(0, 255) - q.zero_point) as f32 * q.scale;
            assert_eq!(*g, want, "{x}");
            assert_eq!(*m, (0..=255).contains(&r), "{x}");
        }
    }

    #[test]
    fn weight_fake_quant_is_per_channel() {
        let qc = QConfig::default_for(Backend::X86);
        let w = vec![1.0, -0.5, 0.26, 0.01, 0.02, -0.03];
        let q = fake_quant_weight(&w, 2, &qc);
        // PyTorch's symmetric scale is max/127.5, so the extreme rounds to 127 steps.
        assert!((q[0] - 127.0 / 127.5).abs() < 1e-6);
        assert!((q[5] + 128.0 * 0.03 / 127.5).abs() < 1e-6);
        assert!((q[3] - 0.01).abs() < 2e-4);
    }
}
