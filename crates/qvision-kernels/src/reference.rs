//! Plain scalar references the optimised kernels are tested against, plus a deterministic
//! pseudo-random generator for test data.

use crate::conv::Conv2dParams;
use crate::KernelError;

/// Deterministic values in [-1, 1) (splitmix64), for tests.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect()
}

/// `a[m x k] · b[k x n]` with `b`'s row stride `ldb`, plus a per-row bias.
pub fn matmul(
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    ldb: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut out = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f64;
            for p in 0..k {
                acc += a[i * k + p] as f64 * b[p * ldb + j] as f64;
            }
            out[i * n + j] = acc as f32 + bias.map_or(0.0, |b| b[i]);
        }
    }
    out
}

/// Direct convolution, NCHW, accumulating in f64.
pub fn conv2d(
    p: &Conv2dParams,
    x: &[f32],
    n: usize,
    h: usize,
    w: usize,
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Result<(Vec<f32>, usize, usize), KernelError> {
    let (oh, ow) = p.output_size(h, w)?;
    let cin_g = p.in_channels / p.groups;
    let cout_g = p.out_channels / p.groups;
    let [kh, kw] = p.kernel;
    let mut out = vec![0.0f32; n * p.out_channels * oh * ow];
    for b in 0..n {
        for oc in 0..p.out_channels {
            let g = oc / cout_g;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0.0f64;
                    for ic in 0..cin_g {
                        let c = g * cin_g + ic;
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * p.stride[0] + ky * p.dilation[0]) as isize
                                    - p.padding[0] as isize;
                                let ix = (ox * p.stride[1] + kx * p.dilation[1]) as isize
                                    - p.padding[1] as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let xv = x
                                    [((b * p.in_channels + c) * h + iy as usize) * w + ix as usize];
                                let wv = weight[((oc * cin_g + ic) * kh + ky) * kw + kx];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    out[((b * p.out_channels + oc) * oh + oy) * ow + ox] =
                        acc as f32 + bias.map_or(0.0, |b| b[oc]);
                }
            }
        }
    }
    Ok((out, oh, ow))
}
