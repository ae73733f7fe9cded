//! PyTorch's `HistogramObserver`, reproduced step for step: a 2048-bin running histogram that
//! is re-binned (upsampled 16x) when the range grows, and the non-linear search that trims the
//! range while the L2 quantization error keeps falling. The arithmetic follows PyTorch's f32/f64
//! mix so the chosen range matches; the search uses binary search where PyTorch scans linearly
//! (same result, far faster).

use super::Observer;
use crate::qconfig::{QDType, QScheme};

/// Running histogram plus PyTorch's L2-minimising range search.
#[derive(Clone, Debug)]
pub struct HistogramObserver {
    dtype: QDType,
    scheme: QScheme,
    reduce_range: bool,
    bins: usize,
    upsample_rate: usize,
    dst_nbins: usize,
    hist: Vec<f32>,
    min: f32,
    max: f32,
}

impl HistogramObserver {
    pub fn new(dtype: QDType, scheme: QScheme, reduce_range: bool) -> Self {
        Self::with_bins(dtype, scheme, reduce_range, 2048)
    }

    pub fn with_bins(dtype: QDType, scheme: QScheme, reduce_range: bool, bins: usize) -> Self {
        HistogramObserver {
            dtype,
            scheme,
            reduce_range,
            bins: bins.max(1),
            upsample_rate: 16,
            dst_nbins: 256,
            hist: vec![0.0; bins.max(1)],
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
        }
    }

    /// The running min and max of all observed values.
    pub fn observed_range(&self) -> Option<(f32, f32)> {
        (self.min <= self.max).then_some((self.min, self.max))
    }

    /// The accumulated histogram.
    pub fn histogram(&self) -> &[f32] {
        &self.hist
    }

    fn histc(&self, x: &[f32], lo: f32, hi: f32) -> Vec<f32> {
        let (lo, hi) = if lo == hi {
            (lo - 1.0, hi + 1.0)
        } else {
            (lo, hi)
        };
        let mut h = vec![0.0f32; self.bins];
        let nb = self.bins as f32;
        for &v in x {
            if !(v >= lo && v <= hi) {
                continue;
            }
            let mut pos = ((v - lo) * nb / (hi - lo)) as usize;
            if pos >= self.bins {
                pos = self.bins - 1;
            }
            h[pos] += 1.0;
        }
        h
    }

    /// `torch.linspace(start, end, steps)` in f32.
    fn linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
        if steps == 1 {
            return vec![start];
        }
        let step = (end - start) / (steps - 1) as f32;
        let half = steps / 2;
        (0..steps)
            .map(|i| {
                if i < half {
                    start + step * i as f32
                } else {
                    end - step * (steps - i - 1) as f32
                }
            })
            .collect()
    }

    fn upscale(&self, orig_min: f32, orig_max: f32, new_min: f32, new_max: f32) -> Vec<f32> {
        let up = self.upsample_rate;
        let n = self.bins * up;
        let bin_size = (orig_max - orig_min) / n as f32;
        let mids = Self::linspace(orig_min, orig_max, n + 1);
        let bounds = Self::linspace(new_min, new_max, self.bins + 1);
        let mut out = vec![0.0f32; self.bins];
        for (i, &m) in mids[..n].iter().enumerate() {
            let mid = m + 0.5 * bin_size;
            let w = self.hist[i / up] / up as f32;
            // bucketize(right=True) - 1: the last boundary <= mid
            let idx = bounds.partition_point(|&b| b <= mid) as isize - 1;
            out[idx.clamp(0, self.bins as isize - 1) as usize] += w;
        }
        out
    }

    /// The L2 quantization error of quantizing bins `start..=end` into `dst_nbins` levels.
    fn quantization_error(&self, start: usize, end: usize) -> f64 {
        let bin_width = (self.max as f64 - self.min as f64) / self.bins as f64;
        let dst_bin_width = bin_width * (end - start + 1) as f64 / self.dst_nbins as f64;
        if dst_bin_width == 0.0 {
            return 0.0;
        }
        let (bw, dbw) = (bin_width as f32, dst_bin_width as f32);
        let last = (self.dst_nbins - 1) as f32;
        let half = (dst_bin_width / 2.0) as f32;
        let neg_half = (-dst_bin_width / 2.0) as f32;
        let norm = |b: f32, e: f32, d: f32| (e * e * e - b * b * b) / 3.0 * d;
        let mut total = 0.0f64;
        for (i, &h) in self.hist.iter().enumerate() {
            let begin = (i as f32 - start as f32) * bw;
            let endv = begin + bw;
            let db = div_floor(begin, dbw).clamp(0.0, last);
            let db_center = (db + 0.5) * dbw;
            let de = div_floor(endv, dbw).clamp(0.0, last);
            let density = h / bw;
            let mut n = 0.0f32 + norm(begin - db_center, half, density);
            n += (de - db - 1.0) * norm(neg_half, half, density);
            let de_center = de * dbw + half;
            n += norm(neg_half, endv - de_center, density);
            total += n as f64;
        }
        total
    }

    /// PyTorch's `_non_linear_param_search`: the trimmed `(min, max)`.
    pub fn search_range(&self) -> Option<(f32, f32)> {
        self.observed_range()?;
        let bins = self.bins;
        let bin_width = (self.max - self.min) / bins as f32;
        let total = self.hist.iter().sum::<f32>() as f64;
        let mut csum = Vec::with_capacity(bins);
        let mut acc = 0.0f32;
        for &h in &self.hist {
            acc += h;
            csum.push(acc);
        }
        let stepsize = 1e-5f64;
        let (mut alpha, mut beta) = (0.0f64, 1.0f64);
        let (mut start, mut end) = (0usize, bins - 1);
        let mut norm_min = f64::INFINITY;
        while alpha < beta {
            let next_alpha = alpha + stepsize;
            let next_beta = beta - stepsize;
            let ta = (next_alpha * total) as f32;
            let tb = (next_beta * total) as f32;
            // first l in start..end with csum[l] >= ta (else end); last r in start+1..=end with
            // csum[r] <= tb (else start)
            let l = start + csum[start..end].partition_point(|&c| c < ta);
            let r = {
                let k = csum[start + 1..=end].partition_point(|&c| c <= tb);
                if k == 0 {
                    start
                } else {
                    start + k
                }
            };
            let (mut ns, mut ne) = (start, end);
            if l - start > end - r {
                ns = l;
                alpha = next_alpha;
            } else {
                ne = r;
                beta = next_beta;
            }
            if ns == start && ne == end {
                continue;
            }
            let norm = self.quantization_error(ns, ne);
            if norm > norm_min {
                break;
            }
            norm_min = norm;
            start = ns;
            end = ne;
        }
        Some((
            self.min + bin_width * start as f32,
            self.min + bin_width * (end + 1) as f32,
        ))
    }
}

/// Python/PyTorch floor division of floats (`torch.div(a, b, rounding_mode="floor")`).
fn div_floor(a: f32, b: f32) -> f32 {
    if b == 0.0 {
        return a / b;
    }
    let m = a % b;
    let mut div = (a - m) / b;
    if m != 0.0 && ((b < 0.0) != (m < 0.0)) {
        div -= 1.0;
    }
    if div != 0.0 {
        let f = div.floor();
        if div - f > 0.5 {
            f + 1.0
        } else {
            f
        }
    } else {
        0.0f32.copysign(a / b)
    }
}

impl Observer for HistogramObserver {
    fn observe(&mut self, x: &[f32]) {
        let finite: Vec<f32> = x.iter().copied().filter(|v| v.is_finite()).collect();
        let Some((lo, hi)) = super::finite_min_max(&finite) else {
            return;
        };
        if self.min > self.max {
            self.hist = self.histc(&finite, lo, hi);
            self.min = lo;
            self.max = hi;
            return;
        }
        let (new_min, new_max) = (self.min.min(lo), self.max.max(hi));
        let update = self.histc(&finite, new_min, new_max);
        if new_min == self.min && new_max == self.max {
            self.hist.iter_mut().zip(&update).for_each(|(h, u)| *h += u);
            return;
        }
        let combined: Vec<f32> = if self.min == self.max {
            let total: f32 = self.hist.iter().sum();
            let moved = self.histc(&[self.min], new_min, new_max);
            moved
                .iter()
                .zip(&update)
                .map(|(m, u)| m * total + u)
                .collect()
        } else {
            let moved = self.upscale(self.min, self.max, new_min, new_max);
            update.iter().zip(&moved).map(|(u, m)| u + m).collect()
        };
        self.hist = combined;
        self.min = new_min;
        self.max = new_max;
    }

    fn range(&self) -> Option<(f32, f32)> {
        self.search_range()
    }

    fn target(&self) -> (QDType, QScheme, bool) {
        (self.dtype, self.scheme, self.reduce_range)
    }
}
