//! Max, average and adaptive-average pooling over NCHW, with PyTorch's size rules
//! (`ceil_mode`, `count_include_pad`, adaptive bin edges).

use crate::sgemm::valid_range;
use crate::{shape_err, KernelError};
use qvision_tensor::pool as buffers;
use rayon::prelude::*;

/// Window geometry shared by max and average pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Pool2dParams {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub ceil_mode: bool,
}

impl Pool2dParams {
    /// PyTorch's `pooling_output_shape`.
    pub fn output_size(&self, h: usize, w: usize) -> Result<(usize, usize), KernelError> {
        let dim = |i: usize, size: usize| -> Result<usize, KernelError> {
            let (k, s, p, d) = (
                self.kernel[i],
                self.stride[i],
                self.padding[i],
                self.dilation[i],
            );
            if k == 0 || s == 0 || d == 0 || p * 2 > k {
                return Err(shape_err("pool2d", format!("invalid window {self:?}")));
            }
            let span = size as isize + 2 * p as isize - (d * (k - 1)) as isize - 1;
            if span < 0 {
                return Err(shape_err(
                    "pool2d",
                    format!("window {self:?} does not fit input {h}x{w}"),
                ));
            }
            let span = span as usize;
            let mut out = if self.ceil_mode {
                span.div_ceil(s)
            } else {
                span / s
            } + 1;
            if self.ceil_mode && (out - 1) * s >= size + p {
                out -= 1;
            }
            Ok(out)
        };
        Ok((dim(0, h)?, dim(1, w)?))
    }
}

/// Max pooling; padding counts as -inf.
pub fn max_pool2d(
    p: &Pool2dParams,
    x: &[f32],
    nc: usize,
    h: usize,
    w: usize,
) -> Result<(Vec<f32>, usize, usize), KernelError> {
    let (oh, ow) = p.output_size(h, w)?;
    check_len("max_pool2d", x, nc * h * w)?;
    let mut out = buffers::take(nc * oh * ow);
    out.par_chunks_mut((oh * ow).max(1))
        .enumerate()
        .for_each(|(c, y)| {
            let xc = &x[c * h * w..(c + 1) * h * w];
            y.fill(f32::NEG_INFINITY);
            for oy in 0..oh {
                let dst = &mut y[oy * ow..(oy + 1) * ow];
                for ky in 0..p.kernel[0] {
                    let iy =
                        (oy * p.stride[0] + ky * p.dilation[0]) as isize - p.padding[0] as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    let src = &xc[iy as usize * w..(iy as usize + 1) * w];
                    for kx in 0..p.kernel[1] {
                        // outputs whose tap kx lands inside the row: no per-element bounds test
                        let off = (kx * p.dilation[1]) as isize - p.padding[1] as isize;
                        let (lo, hi) = valid_range(ow, p.stride[1], off, w);
                        for (ox, d) in dst.iter_mut().enumerate().take(hi).skip(lo) {
                            let v = src[(ox as isize * p.stride[1] as isize + off) as usize];
                            if v > *d || v.is_nan() {
                                *d = v;
                            }
                        }
                    }
                }
            }
        });
    Ok((out, oh, ow))
}

/// Average pooling with PyTorch's divisor rule.
pub fn avg_pool2d(
    p: &Pool2dParams,
    count_include_pad: bool,
    x: &[f32],
    nc: usize,
    h: usize,
    w: usize,
) -> Result<(Vec<f32>, usize, usize), KernelError> {
    if p.dilation != [1, 1] {
        return Err(shape_err("avg_pool2d", "dilation is not supported"));
    }
    let (oh, ow) = p.output_size(h, w)?;
    check_len("avg_pool2d", x, nc * h * w)?;
    let mut out = buffers::take(nc * oh * ow);
    out.par_chunks_mut((oh * ow).max(1))
        .enumerate()
        .for_each(|(c, y)| {
            let xc = &x[c * h * w..(c + 1) * h * w];
            for oy in 0..oh {
                let hs = (oy * p.stride[0]) as isize - p.padding[0] as isize;
                let he = (hs + p.kernel[0] as isize).min((h + p.padding[0]) as isize);
                for ox in 0..ow {
                    let ws = (ox * p.stride[1]) as isize - p.padding[1] as isize;
                    let we = (ws + p.kernel[1] as isize).min((w + p.padding[1]) as isize);
                    let pool_size = (he - hs) * (we - ws);
                    let (hs, ws) = (hs.max(0) as usize, ws.max(0) as usize);
                    let (he, we) = (he.min(h as isize) as usize, we.min(w as isize) as usize);
                    let mut sum = 0.0f32;
                    for iy in hs..he {
                        for ix in ws..we {
                            sum += xc[iy * w + ix];
                        }
                    }
                    let div = if count_include_pad {
                        pool_size as f32
                    } else {
                        ((he - hs) * (we - ws)) as f32
                    };
                    y[oy * ow + ox] = sum / div;
                }
            }
        });
    Ok((out, oh, ow))
}

/// `AdaptiveAvgPool2d`: bin `i` spans `floor(i*h/oh) .. ceil((i+1)*h/oh)`.
pub fn adaptive_avg_pool2d(
    x: &[f32],
    nc: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
) -> Result<Vec<f32>, KernelError> {
    check_len("adaptive_avg_pool2d", x, nc * h * w)?;
    if oh == 0 || ow == 0 || h == 0 || w == 0 {
        return Err(shape_err(
            "adaptive_avg_pool2d",
            format!("cannot pool {h}x{w} to {oh}x{ow}"),
        ));
    }
    let mut out = buffers::take(nc * oh * ow);
    out.par_chunks_mut(oh * ow).enumerate().for_each(|(c, y)| {
        let xc = &x[c * h * w..(c + 1) * h * w];
        for oy in 0..oh {
            let (hs, he) = (oy * h / oh, ((oy + 1) * h).div_ceil(oh));
            for ox in 0..ow {
                let (ws, we) = (ox * w / ow, ((ox + 1) * w).div_ceil(ow));
                let mut sum = 0.0f32;
                for iy in hs..he {
                    for v in &xc[iy * w + ws..iy * w + we] {
                        sum += v;
                    }
                }
                y[oy * ow + ox] = sum / ((he - hs) * (we - ws)) as f32;
            }
        }
    });
    Ok(out)
}

fn check_len(op: &'static str, x: &[f32], want: usize) -> Result<(), KernelError> {
    if x.len() != want {
        return Err(shape_err(
            op,
            format!("input has {} values, want {want}", x.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(k: usize, s: usize, p: usize, ceil: bool) -> Pool2dParams {
        Pool2dParams {
            kernel: [k, k],
            stride: [s, s],
            padding: [p, p],
            dilation: [1, 1],
            ceil_mode: ceil,
        }
    }

    #[test]
    fn ceil_mode_sizes_match_pytorch() {
        // GoogLeNet: MaxPool2d(3, 2, ceil_mode=True) on 112 -> 56; on 7 -> 3 (floor) vs 4? (7-3)/2+1 = 3
        assert_eq!(
            params(3, 2, 0, true).output_size(112, 112).unwrap(),
            (56, 56)
        );
        assert_eq!(params(3, 2, 0, true).output_size(14, 14).unwrap(), (7, 7));
        assert_eq!(params(2, 2, 0, true).output_size(7, 7).unwrap(), (4, 4));
        assert_eq!(params(2, 2, 0, false).output_size(7, 7).unwrap(), (3, 3));
        assert_eq!(
            params(3, 2, 1, false).output_size(112, 112).unwrap(),
            (56, 56)
        );
    }

    fn naive_max(p: &Pool2dParams, x: &[f32], h: usize, w: usize) -> Vec<f32> {
        let (oh, ow) = p.output_size(h, w).unwrap();
        let mut out = vec![f32::NEG_INFINITY; oh * ow];
        for oy in 0..oh {
            for ox in 0..ow {
                for ky in 0..p.kernel[0] {
                    for kx in 0..p.kernel[1] {
                        let iy = (oy * p.stride[0] + ky * p.dilation[0]) as isize
                            - p.padding[0] as isize;
                        let ix = (ox * p.stride[1] + kx * p.dilation[1]) as isize
                            - p.padding[1] as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                            out[oy * ow + ox] =
                                out[oy * ow + ox].max(x[iy as usize * w + ix as usize]);
                        }
                    }
                }
            }
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn max_pool_matches_naive(k in 1usize..5, s in 1usize..4, pad in 0usize..3, d in 1usize..3, h in 1usize..12, w in 1usize..12, ceil in proptest::bool::ANY, seed in proptest::num::u64::ANY) {
            let p = Pool2dParams { kernel: [k, k], stride: [s, s], padding: [pad.min(k / 2), pad.min(k / 2)], dilation: [d, d], ceil_mode: ceil };
            if p.output_size(h, w).is_ok() {
                let x = crate::reference::pseudo_random(h * w, seed);
                let (y, _, _) = max_pool2d(&p, &x, 1, h, w).unwrap();
                proptest::prop_assert_eq!(y, naive_max(&p, &x, h, w));
            }
        }
    }

    #[test]
    fn max_pool_pads_with_neg_inf() {
        let x = [-1.0, -2.0, -3.0, -4.0];
        let (y, oh, ow) = max_pool2d(&params(3, 1, 1, false), &x, 1, 2, 2).unwrap();
        assert_eq!((oh, ow), (2, 2));
        assert_eq!(y, vec![-1.0; 4]);
    }

    #[test]
    fn avg_pool_divisors() {
        let x = [1.0; 4];
        let (y, _, _) = avg_pool2d(&params(3, 1, 1, false), true, &x, 1, 2, 2).unwrap();
        assert_eq!(y, vec![4.0 / 9.0; 4]);
        let (y, _, _) = avg_pool2d(&params(3, 1, 1, false), false, &x, 1, 2, 2).unwrap();
        assert_eq!(y, vec![1.0; 4]);
    }

    #[test]
    fn adaptive_bins_overlap_like_pytorch() {
        // 5 -> 3 bins: [0,2), [1,4), [3,5)
        let x: Vec<f32> = (0..5).map(|v| v as f32).collect();
        let y = adaptive_avg_pool2d(&x, 1, 1, 5, 1, 3).unwrap();
        assert_eq!(y, vec![0.5, 2.0, 3.5]);
        // upsampling 2 -> 7 repeats values
        let y = adaptive_avg_pool2d(&[1.0, 3.0], 1, 1, 2, 1, 7).unwrap();
        assert_eq!(y, vec![1.0, 1.0, 1.0, 2.0, 3.0, 3.0, 3.0]);
    }
}
