//! Observers: they watch calibration data and choose quantization parameters
//! (`torch.ao.quantization.observer`).
//!
//! | observer | range it picks |
//! |---|---|
//! | [`MinMaxObserver`] | running min and max |
//! | [`MovingAverageMinMaxObserver`] | exponential moving average of each batch's min and max |
//! | [`PerChannelMinMaxObserver`] | min and max per channel (axis 0 of weights) |
//! | [`HistogramObserver`] | PyTorch's histogram with its L2-minimising search |
//! | [`PercentileObserver`] | the given lower and upper percentiles |
//! | [`EntropyObserver`] | the clipping threshold minimising KL divergence (TensorRT's calibration) |

mod entropy;
mod histogram;
mod minmax;

pub use entropy::{EntropyObserver, PercentileObserver};
pub use histogram::HistogramObserver;
pub use minmax::{MinMaxObserver, MovingAverageMinMaxObserver, PerChannelMinMaxObserver};

use crate::qconfig::{QDType, QScheme};
use crate::qparams::{calculate_qparams, QuantParams};

/// Something that watches tensors and proposes a quantization range.
pub trait Observer: Send {
    /// Record one batch (values in any order).
    fn observe(&mut self, x: &[f32]);
    /// The range chosen so far, `None` before any finite value was seen.
    fn range(&self) -> Option<(f32, f32)>;
    /// The quantized type and scheme this observer serves.
    fn target(&self) -> (QDType, QScheme, bool);
    /// Scale and zero point for the chosen range (PyTorch's default `(1.0, 0)` when empty).
    fn qparams(&self) -> QuantParams {
        let (dtype, scheme, reduce) = self.target();
        match self.range() {
            Some((lo, hi)) => calculate_qparams(lo, hi, dtype, scheme, reduce),
            None => QuantParams {
                scale: 1.0,
                zero_point: 0,
            },
        }
    }
}

/// Min and max of the finite values of a batch.
pub(crate) fn finite_min_max(x: &[f32]) -> Option<(f32, f32)> {
    let mut lo = f32::INFINITY;
    let mut hi = f32::NEG_INFINITY;
    for &v in x {
        if v.is_finite() {
            lo = lo.min(v);
            hi = hi.max(v);
        }
    }
    (lo <= hi).then_some((lo, hi))
}
