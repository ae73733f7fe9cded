use super::{finite_min_max, Observer};
use crate::qconfig::{QDType, QScheme};
use crate::qparams::{calculate_qparams, QuantParams};

/// Running min and max (`MinMaxObserver`).
#[derive(Clone, Debug)]
pub struct MinMaxObserver {
    dtype: QDType,
    scheme: QScheme,
    reduce_range: bool,
    range: Option<(f32, f32)>,
}

impl MinMaxObserver {
    pub fn new(dtype: QDType, scheme: QScheme, reduce_range: bool) -> Self {
        MinMaxObserver {
            dtype,
            scheme,
            reduce_range,
            range: None,
        }
    }
}

impl Observer for MinMaxObserver {
    fn observe(&mut self, x: &[f32]) {
        if let Some((lo, hi)) = finite_min_max(x) {
            self.range = Some(match self.range {
                Some((a, b)) => (a.min(lo), b.max(hi)),
                None => (lo, hi),
            });
        }
    }
    fn range(&self) -> Option<(f32, f32)> {
        self.range
    }
    fn target(&self) -> (QDType, QScheme, bool) {
        (self.dtype, self.scheme, self.reduce_range)
    }
}

/// Exponential moving average of each batch's min and max (`MovingAverageMinMaxObserver`,
/// `averaging_constant` 0.01 by default).
#[derive(Clone, Debug)]
pub struct MovingAverageMinMaxObserver {
    inner: MinMaxObserver,
    pub averaging_constant: f32,
}

impl MovingAverageMinMaxObserver {
    pub fn new(dtype: QDType, scheme: QScheme, reduce_range: bool) -> Self {
        MovingAverageMinMaxObserver {
            inner: MinMaxObserver::new(dtype, scheme, reduce_range),
            averaging_constant: 0.01,
        }
    }
}

impl Observer for MovingAverageMinMaxObserver {
    fn observe(&mut self, x: &[f32]) {
        if let Some((lo, hi)) = finite_min_max(x) {
            let c = self.averaging_constant;
            self.inner.range = Some(match self.inner.range {
                Some((a, b)) => (a + c * (lo - a), b + c * (hi - b)),
                None => (lo, hi),
            });
        }
    }
    fn range(&self) -> Option<(f32, f32)> {
        self.inner.range
    }
    fn target(&self) -> (QDType, QScheme, bool) {
        self.inner.target()
    }
}

/// Min and max per channel along axis 0 (`PerChannelMinMaxObserver`, for weights).
#[derive(Clone, Debug)]
pub struct PerChannelMinMaxObserver {
    dtype: QDType,
    scheme: QScheme,
    reduce_range: bool,
    ranges: Vec<(f32, f32)>,
}

impl PerChannelMinMaxObserver {
    pub fn new(dtype: QDType, scheme: QScheme, reduce_range: bool) -> Self {
        PerChannelMinMaxObserver {
            dtype,
            scheme,
            reduce_range,
            ranges: vec![],
        }
    }

    /// Record a tensor whose axis 0 has `channels` entries.
    pub fn observe_channels(
        &mut self,
        x: &[f32],
        channels: usize,
    ) -> Result<(), crate::QuantError> {
        if channels == 0 || !x.len().is_multiple_of(channels) {
            return Err(crate::QuantError::Shape(format!(
                "{} values do not split into {channels} channels",
                x.len()
            )));
        }
        let per = x.len() / channels;
        if self.ranges.len() != channels {
            self.ranges = vec![(f32::INFINITY, f32::NEG_INFINITY); channels];
        }
        for (c, chunk) in x.chunks(per.max(1)).enumerate() {
            if let Some((lo, hi)) = finite_min_max(chunk) {
                let r = &mut self.ranges[c];
                *r = (r.0.min(lo), r.1.max(hi));
            }
        }
        Ok(())
    }

    /// One scale and zero point per channel.
    pub fn qparams_per_channel(&self) -> Vec<QuantParams> {
        self.ranges
            .iter()
            .map(|&(lo, hi)| {
                if lo <= hi {
                    calculate_qparams(lo, hi, self.dtype, self.scheme, self.reduce_range)
                } else {
                    QuantParams {
                        scale: 1.0,
                        zero_point: 0,
                    }
                }
            })
            .collect()
    }
}
