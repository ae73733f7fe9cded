//! Percentile and entropy (KL) calibration, over a fixed-range histogram of the data.
//!
//! PyTorch has neither; these follow common practice: the percentile observer clips at given
//! lower/upper percentiles, and the entropy observer picks the symmetric clipping threshold that
//! minimises the KL divergence between the clipped distribution and its 128-level quantized
//! version (TensorRT's entropy calibration), then intersects `[-T, T]` with the observed range.

use super::{HistogramObserver, Observer};
use crate::qconfig::{QDType, QScheme};

/// Clips at the `lower` and `upper` percentiles (e.g. 0.01 and 99.99).
#[derive(Clone, Debug)]
pub struct PercentileObserver {
    hist: HistogramObserver,
    pub lower: f64,
    pub upper: f64,
}

impl PercentileObserver {
    pub fn new(dtype: QDType, scheme: QScheme, reduce_range: bool, lower: f64, upper: f64) -> Self {
        PercentileObserver {
            hist: HistogramObserver::new(dtype, scheme, reduce_range),
            lower,
            upper,
        }
    }
}

impl Observer for PercentileObserver {
    fn observe(&mut self, x: &[f32]) {
        self.hist.observe(x)
    }

    fn range(&self) -> Option<(f32, f32)> {
        let (lo, hi) = self.hist.observed_range()?;
        let h = self.hist.histogram();
        let total: f64 = h.iter().map(|&v| v as f64).sum();
        if total == 0.0 {
            return Some((lo, hi));
        }
        let width = (hi - lo) / h.len() as f32;
        let edge = |p: f64, from_top: bool| -> f32 {
            let target = total * p / 100.0;
            let mut acc = 0.0;
            for (i, &v) in h.iter().enumerate() {
                acc += v as f64;
                if acc >= target {
                    return lo + width * (i + usize::from(from_top)) as f32;
                }
            }
            hi
        };
        Some((
            edge(self.lower, false).max(lo),
            edge(self.upper, true).min(hi),
        ))
    }

    fn target(&self) -> (QDType, QScheme, bool) {
        self.hist.target()
    }
}

/// KL-divergence (entropy) calibration.
#[derive(Clone, Debug)]
pub struct EntropyObserver {
    hist: HistogramObserver,
    abs: HistogramObserver,
}

impl EntropyObserver {
    pub fn new(dtype: QDType, scheme: QScheme, reduce_range: bool) -> Self {
        EntropyObserver {
            hist: HistogramObserver::new(dtype, scheme, reduce_range),
            abs: HistogramObserver::with_bins(dtype, scheme, reduce_range, 2048),
        }
    }

    /// The threshold `T` minimising KL(P || Q) over the |x| histogram.
    fn threshold(&self) -> Option<f32> {
        let (_, amax) = self.abs.observed_range()?;
        let mut h: Vec<f64> = self.abs.histogram().iter().map(|&v| v as f64).collect();
        // The exact-zero spike (ReLU outputs) says nothing about where to clip and would
        // dominate the divergence: leave it out of the search.
        h[0] = 0.0;
        let bins = h.len();
        let levels = 128usize;
        if bins <= levels {
            return Some(amax);
        }
        let (mut best, mut best_i) = (f64::INFINITY, bins);
        for i in levels..=bins {
            // reference: first i bins, outliers folded into the last one
            let mut p: Vec<f64> = h[..i].to_vec();
            p[i - 1] += h[i..].iter().sum::<f64>();
            // quantize the first i bins into `levels` groups, spread back over non-empty bins
            let mut q = vec![0.0f64; i];
            for g in 0..levels {
                let (a, b) = (
                    g * i / levels,
                    ((g + 1) * i / levels).max(g * i / levels + 1),
                );
                let sum: f64 = h[a..b].iter().sum();
                let nonzero = h[a..b].iter().filter(|&&v| v > 0.0).count();
                if nonzero > 0 {
                    for j in a..b {
                        if h[j] > 0.0 {
                            q[j] = sum / nonzero as f64;
                        }
                    }
                }
            }
            let (ps, qs): (f64, f64) = (p.iter().sum(), q.iter().sum());
            if ps == 0.0 || qs == 0.0 {
                continue;
            }
            let mut kl = 0.0;
            for (pv, qv) in p.iter().zip(&q) {
                if *pv > 0.0 {
                    let (pn, qn) = (pv / ps, (qv / qs).max(1e-12));
                    kl += pn * (pn / qn).ln();
                }
            }
            if kl < best {
                best = kl;
                best_i = i;
            }
        }
        Some(amax * best_i as f32 / bins as f32)
    }
}

impl Observer for EntropyObserver {
    fn observe(&mut self, x: &[f32]) {
        self.hist.observe(x);
        let a: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        // anchor the |x| histogram at 0 so bins map to thresholds
        let mut with_zero = a;
        with_zero.push(0.0);
        self.abs.observe(&with_zero);
    }

    fn range(&self) -> Option<(f32, f32)> {
        let (lo, hi) = self.hist.observed_range()?;
        let t = self.threshold()?;
        Some((lo.max(-t), hi.min(t)))
    }

    fn target(&self) -> (QDType, QScheme, bool) {
        self.hist.target()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> Vec<f32> {
        // a bulk in [-1, 1) plus a few far outliers
        let mut v: Vec<f32> = (0..20000)
            .map(|i| ((i * 7919) % 20000) as f32 / 10000.0 - 1.0)
            .collect();
        v[3] = 40.0;
        v[9] = -35.0;
        v
    }

    #[test]
    fn percentile_clips_outliers() {
        let mut o =
            PercentileObserver::new(QDType::QUInt8, QScheme::PerTensorAffine, false, 0.1, 99.9);
        o.observe(&data());
        let (lo, hi) = o.range().unwrap();
        assert!((-1.1..-0.9).contains(&lo), "{lo}");
        assert!(hi <= 1.1 && hi > 0.9, "{hi}");
    }

    #[test]
    fn entropy_threshold_ignores_rare_outliers() {
        let mut o = EntropyObserver::new(QDType::QUInt8, QScheme::PerTensorAffine, false);
        o.observe(&data());
        let (lo, hi) = o.range().unwrap();
        assert!((0.9..10.0).contains(&hi), "{hi}");
        assert!(lo > -10.0 && lo <= -0.9, "{lo}");
        let q = o.qparams();
        assert!(q.scale < 20.0 / 255.0);
    }
}
