//! Quantizing tensors: u8 affine activations, s8 symmetric per-channel weights, i32 biases, the
//! way PyTorch's `convert` prepares them.

use crate::observer::PerChannelMinMaxObserver;
use crate::qconfig::{QDType, QScheme};
use crate::qparams::QuantParams;
use crate::QuantError;

/// `clamp(round(x / s) + z, 0, 255)`.
pub fn quantize_u8(x: &[f32], q: QuantParams) -> Vec<u8> {
    x.iter().map(|&v| q.quantize(v, 0, 255) as u8).collect()
}

/// `(q - z) * s`.
pub fn dequantize_u8(x: &[u8], q: QuantParams) -> Vec<f32> {
    x.iter().map(|&v| q.dequantize(v as i32)).collect()
}

/// Per-output-channel symmetric s8 weights (axis 0): the values and each channel's scale.
pub fn quantize_weights_per_channel(
    w: &[f32],
    channels: usize,
) -> Result<(Vec<i8>, Vec<f32>), QuantError> {
    let mut obs = PerChannelMinMaxObserver::new(QDType::QInt8, QScheme::PerChannelSymmetric, false);
    obs.observe_channels(w, channels)?;
    let qp = obs.qparams_per_channel();
    let per = w.len() / channels;
    let q = w
        .chunks(per.max(1))
        .zip(&qp)
        .flat_map(|(row, p)| row.iter().map(move |&v| p.quantize(v, -128, 127) as i8))
        .collect();
    Ok((q, qp.iter().map(|p| p.scale).collect()))
}

/// Per-tensor symmetric s8 weights (the arm/qnnpack style): one scale, repeated per channel so
/// the kernels see the same layout as per-channel weights.
pub fn quantize_weights_per_tensor(
    w: &[f32],
    channels: usize,
) -> Result<(Vec<i8>, Vec<f32>), QuantError> {
    if channels == 0 || !w.len().is_multiple_of(channels) {
        return Err(QuantError::Shape(format!(
            "{} values do not split into {channels} channels",
            w.len()
        )));
    }
    let amax = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let q = crate::qparams::calculate_qparams(
        -amax,
        amax,
        QDType::QInt8,
        QScheme::PerTensorSymmetric,
        false,
    );
    let vals = w.iter().map(|&v| q.quantize(v, -128, 127) as i8).collect();
    Ok((vals, vec![q.scale; channels]))
}

/// i32 bias in the accumulator's scale `s_in * s_w[c]`.
pub fn quantize_bias(b: &[f32], s_in: f32, s_w: &[f32]) -> Vec<i32> {
    b.iter()
        .zip(s_w)
        .map(|(&v, &sw)| (v / (s_in * sw)).round_ties_even() as i32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_channel_weights_round_trip_within_half_a_step() {
        let w: Vec<f32> = (0..24).map(|i| (i as f32 - 11.0) * 0.37).collect();
        let (q, s) = quantize_weights_per_channel(&w, 3).unwrap();
        for (c, chunk) in w.chunks(8).enumerate() {
            for (j, &v) in chunk.iter().enumerate() {
                let back = q[c * 8 + j] as f32 * s[c];
                assert!((back - v).abs() <= s[c] / 2.0 + 1e-6);
            }
        }
        assert!(quantize_weights_per_channel(&w, 5).is_err());
        let (qt, st) = quantize_weights_per_tensor(&w, 3).unwrap();
        assert!(st.iter().all(|&s| s == st[0]));
        for (v, q) in w.iter().zip(&qt) {
            assert!((*q as f32 * st[0] - v).abs() <= st[0] / 2.0 + 1e-6);
        }
    }
}
