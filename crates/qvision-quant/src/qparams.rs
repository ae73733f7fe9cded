//! Scale and zero point from a range, exactly as PyTorch's `_calculate_qparams` computes them
//! (f32 arithmetic, round half to even, `eps` floor on the scale).

use crate::qconfig::{QDType, QScheme};

/// `torch.finfo(torch.float32).eps`.
pub const EPS: f32 = f32::EPSILON;

/// One scale and zero point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantParams {
    pub scale: f32,
    pub zero_point: i32,
}

impl QuantParams {
    /// `clamp(round(x / scale) + zero_point, qmin, qmax)`.
    pub fn quantize(&self, x: f32, qmin: i32, qmax: i32) -> i32 {
        ((x / self.scale).round_ties_even() as i32 + self.zero_point).clamp(qmin, qmax)
    }

    pub fn dequantize(&self, q: i32) -> f32 {
        (q - self.zero_point) as f32 * self.scale
    }
}

/// Quantization parameters for the range `[min_val, max_val]`.
pub fn calculate_qparams(
    min_val: f32,
    max_val: f32,
    dtype: QDType,
    scheme: QScheme,
    reduce_range: bool,
) -> QuantParams {
    let (qmin, qmax) = dtype.range(reduce_range);
    let min_neg = min_val.min(0.0);
    let max_pos = max_val.max(0.0);
    if scheme.is_symmetric() {
        let max_pos = (-min_neg).max(max_pos);
        let scale = (max_pos / ((qmax - qmin) as f32 / 2.0)).max(EPS);
        let zero_point = match dtype {
            QDType::QInt8 => 0,
            QDType::QUInt8 if reduce_range => (qmin + qmax) / 2,
            QDType::QUInt8 => 128,
        };
        QuantParams { scale, zero_point }
    } else {
        let scale = ((max_pos - min_neg) / (qmax - qmin) as f32).max(EPS);
        let zero_point = (qmin - (min_neg / scale).round_ties_even() as i32).clamp(qmin, qmax);
        QuantParams { scale, zero_point }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affine_u8_covers_the_range_and_zero() {
        let q = calculate_qparams(-1.0, 3.0, QDType::QUInt8, QScheme::PerTensorAffine, false);
        assert_eq!(q.scale, 4.0 / 255.0);
        assert_eq!(q.zero_point, 64);
        assert_eq!(q.dequantize(q.quantize(0.0, 0, 255)), 0.0);
        // all-positive ranges still include zero
        let q = calculate_qparams(2.0, 3.0, QDType::QUInt8, QScheme::PerTensorAffine, false);
        assert_eq!(q.zero_point, 0);
    }

    #[test]
    fn symmetric_s8_has_zero_zero_point() {
        let q = calculate_qparams(
            -0.5,
            2.54,
            QDType::QInt8,
            QScheme::PerChannelSymmetric,
            false,
        );
        assert_eq!(q.zero_point, 0);
        assert_eq!(q.scale, 2.54 / 127.5);
        let q = calculate_qparams(0.0, 0.0, QDType::QInt8, QScheme::PerTensorSymmetric, false);
        assert_eq!(q.scale, EPS);
    }
}
