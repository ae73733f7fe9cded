//! Pooling and per-channel scaling in NCHW16c, vectorised over the 16 lanes of a block, with
//! PyTorch's size and divisor rules (shared with [`crate::pool`], their reference).

use super::B;
use crate::pool::Pool2dParams;
use crate::{shape_err, KernelError};
use qvision_tensor::pool;
use rayon::prelude::*;

/// Max pooling over `planes` blocked planes of `h x w x 16`.
pub fn max_pool(
    p: &Pool2dParams,
    x: &[f32],
    planes: usize,
    h: usize,
    w: usize,
) -> Result<(Vec<f32>, usize, usize), KernelError> {
    window_pool(p, x, planes, h, w, true, false)
}

/// Average pooling (`count_include_pad` as in PyTorch).
pub fn avg_pool(
    p: &Pool2dParams,
    count_include_pad: bool,
    x: &[f32],
    planes: usize,
    h: usize,
    w: usize,
) -> Result<(Vec<f32>, usize, usize), KernelError> {
    window_pool(p, x, planes, h, w, false, count_include_pad)
}

fn window_pool(
    p: &Pool2dParams,
    x: &[f32],
    planes: usize,
    h: usize,
    w: usize,
    max: bool,
    count_include_pad: bool,
) -> Result<(Vec<f32>, usize, usize), KernelError> {
    if x.len() != planes * h * w * B {
        return Err(shape_err("pool2d (blocked)", "input size"));
    }
    if !max && p.dilation != [1, 1] {
        return Err(shape_err(
            "avg_pool2d (blocked)",
            "dilation is not supported",
        ));
    }
    let (oh, ow) = p.output_size(h, w)?;
    let mut out = pool::take(planes * oh * ow * B);
    let isa = crate::isa::current();
    // tasks of about an eighth of a plane's output rows: a few planes (ResNet's max pool has
    // four) would leave a thread idle when the other is late to start
    let rows = oh.div_ceil(8).max(1);
    out.par_chunks_mut((oh * ow * B).max(1))
        .enumerate()
        .for_each(|(pl, yp)| {
            yp.par_chunks_mut((rows * ow * B).max(1))
                .enumerate()
                .for_each(|(c, y)| {
                    let plane = Plane {
                        p,
                        x: &x[pl * h * w * B..(pl + 1) * h * w * B],
                        h,
                        w,
                        ow,
                        o0: c * rows * ow,
                        count_include_pad,
                    };
                    if max {
                        max_plane(isa, &plane, y);
                    } else {
                        avg_plane(isa, &plane, y);
                    }
                });
        });
    Ok((out, oh, ow))
}

/// One blocked plane of a window pool.
struct Plane<'a> {
    p: &'a Pool2dParams,
    x: &'a [f32],
    h: usize,
    w: usize,
    ow: usize,
    /// The plane's output pixel at which `y` starts.
    o0: usize,
    count_include_pad: bool,
}

/// Pool one plane's output pixels `o0..` into `y` (16 values each): max (NaN propagates, as in
/// PyTorch) or average.
#[inline(always)]
fn plane_body<const MAX: bool>(a: &Plane<'_>, y: &mut [f32]) {
    let (p, xp, h, w) = (a.p, a.x, a.h, a.w);
    for (o, out) in y.chunks_exact_mut(B).enumerate() {
        let (oy, ox) = ((a.o0 + o) / a.ow, (a.o0 + o) % a.ow);
        let mut acc = [if MAX { f32::NEG_INFINITY } else { 0.0 }; B];
        let hs = (oy * p.stride[0]) as isize - p.padding[0] as isize;
        let ws = (ox * p.stride[1]) as isize - p.padding[1] as isize;
        let [kh, kw] = p.kernel;
        let [dh, dw] = p.dilation;
        if MAX
            && hs >= 0
            && ws >= 0
            && hs as usize + (kh - 1) * dh < h
            && ws as usize + (kw - 1) * dw < w
        {
            // the whole window inside the plane (most pixels): no per-tap bounds
            let (hs, ws) = (hs as usize, ws as usize);
            for ky in 0..kh {
                let row = &xp[((hs + ky * dh) * w + ws) * B..][..((kw - 1) * dw + 1) * B];
                for kx in 0..kw {
                    let v: &[f32; B] = row[kx * dw * B..][..B].try_into().expect("16");
                    max_into(&mut acc, v);
                }
            }
            out.copy_from_slice(&acc);
            continue;
        }
        let mut count = 0usize;
        for ky in 0..p.kernel[0] {
            let iy = hs + (ky * p.dilation[0]) as isize;
            if iy < 0 || iy >= h as isize {
                continue;
            }
            for kx in 0..p.kernel[1] {
                let ix = ws + (kx * p.dilation[1]) as isize;
                if ix < 0 || ix >= w as isize {
                    continue;
                }
                count += 1;
                let v: &[f32; B] = xp[(iy as usize * w + ix as usize) * B..][..B]
                    .try_into()
                    .expect("16");
                if MAX {
                    max_into(&mut acc, v);
                } else {
                    for l in 0..B {
                        acc[l] += v[l];
                    }
                }
            }
        }
        if !MAX {
            let he = (hs + p.kernel[0] as isize).min((h + p.padding[0]) as isize);
            let we = (ws + p.kernel[1] as isize).min((w + p.padding[1]) as isize);
            let div = if a.count_include_pad {
                ((he - hs) * (we - ws)) as f32
            } else {
                count as f32
            };
            acc.iter_mut().for_each(|a| *a /= div);
        }
        out.copy_from_slice(&acc);
    }
}

/// `acc = max(acc, v)` per lane, a NaN in `v` propagating (PyTorch's max pool). The `|` (not
/// `||`) keeps it branch-free, so it compiles to vector compares and a blend.
#[inline(always)]
fn max_into(acc: &mut [f32; B], v: &[f32; B]) {
    for l in 0..B {
        acc[l] = if (v[l] > acc[l]) | v[l].is_nan() {
            v[l]
        } else {
            acc[l]
        };
    }
}

#[inline(always)]
fn max_plane_body(a: &Plane<'_>, y: &mut [f32]) {
    plane_body::<true>(a, y)
}

#[inline(always)]
fn avg_plane_body(a: &Plane<'_>, y: &mut [f32]) {
    plane_body::<false>(a, y)
}

crate::isa::multiversion!(fn max_plane(a: &Plane<'_>, y: &mut [f32]) => max_plane_body);
crate::isa::multiversion!(fn avg_plane(a: &Plane<'_>, y: &mut [f32]) => avg_plane_body);

/// `AdaptiveAvgPool2d((oh, ow))` over blocked planes.
pub fn adaptive_avg_pool(
    x: &[f32],
    planes: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
) -> Result<Vec<f32>, KernelError> {
    if x.len() != planes * h * w * B || oh == 0 || ow == 0 || h == 0 || w == 0 {
        return Err(shape_err("adaptive_avg_pool2d (blocked)", "input size"));
    }
    let mut out = pool::take(planes * oh * ow * B);
    out.par_chunks_mut(oh * ow * B)
        .enumerate()
        .for_each(|(pl, y)| {
            let xp = &x[pl * h * w * B..(pl + 1) * h * w * B];
            for oy in 0..oh {
                let (hs, he) = (oy * h / oh, ((oy + 1) * h).div_ceil(oh));
                for ox in 0..ow {
                    let (ws, we) = (ox * w / ow, ((ox + 1) * w).div_ceil(ow));
                    let mut acc = [0.0f32; B];
                    for iy in hs..he {
                        for ix in ws..we {
                            let v = &xp[(iy * w + ix) * B..(iy * w + ix + 1) * B];
                            for l in 0..B {
                                acc[l] += v[l];
                            }
                        }
                    }
                    let div = ((he - hs) * (we - ws)) as f32;
                    for (o, a) in y[(oy * ow + ox) * B..(oy * ow + ox + 1) * B]
                        .iter_mut()
                        .zip(&acc)
                    {
                        *o = a / div;
                    }
                }
            }
        });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocked::{from_blocked, to_blocked};
    use crate::reference::pseudo_random;
    use proptest::prelude::*;

    #[test]
    fn max_pool_propagates_nan_inside_and_at_the_border() {
        // one block, 6x6: a NaN in lane 3 at an interior pixel and in lane 5 at a corner
        let (h, w) = (6, 6);
        let mut x = pseudo_random(h * w * B, 7);
        x[(3 * w + 3) * B + 3] = f32::NAN;
        x[5] = f32::NAN;
        let p = Pool2dParams {
            kernel: [3, 3],
            stride: [2, 2],
            padding: [1, 1],
            dilation: [1, 1],
            ceil_mode: false,
        };
        let (y, oh, ow) = max_pool(&p, &x, 1, h, w).unwrap();
        assert_eq!((oh, ow), (3, 3));
        for oy in 0..oh {
            for ox in 0..ow {
                let px = &y[(oy * ow + ox) * B..][..B];
                // windows rows 2oy-1..2oy+1: pixel (3, 3) is in windows (1..=2, 1..=2), (0, 0) in (0, 0)
                assert_eq!(
                    px[3].is_nan(),
                    (1..=2).contains(&oy) && (1..=2).contains(&ox),
                    "({oy}, {ox})"
                );
                assert_eq!(px[5].is_nan(), oy == 0 && ox == 0, "({oy}, {ox})");
                assert!(px
                    .iter()
                    .enumerate()
                    .all(|(l, v)| l == 3 || l == 5 || !v.is_nan()));
            }
        }
    }

    proptest! {
        #[test]
        fn blocked_pools_match_nchw(c in 1usize..35, k in 1usize..4, s in 1usize..3, pad in 0usize..2, h in 1usize..30,
                                    w in 1usize..10, ceil in any::<bool>(), cip in any::<bool>(), seed in any::<u64>()) {
            let p = Pool2dParams { kernel: [k, k], stride: [s, s], padding: [pad.min(k / 2); 2], dilation: [1, 1], ceil_mode: ceil };
            prop_assume!(p.output_size(h, w).is_ok());
            let x = pseudo_random(c * h * w, seed);
            let xb = to_blocked(&x, 1, c, h * w);
            let planes = crate::blocked::blocks(c);
            let (want, oh, ow) = crate::pool::max_pool2d(&p, &x, c, h, w).unwrap();
            let (got, _, _) = max_pool(&p, &xb, planes, h, w).unwrap();
            prop_assert_eq!(from_blocked(&got, 1, c, oh * ow), want);
            let (want, _, _) = crate::pool::avg_pool2d(&p, cip, &x, c, h, w).unwrap();
            let (got, _, _) = avg_pool(&p, cip, &xb, planes, h, w).unwrap();
            prop_assert_eq!(from_blocked(&got, 1, c, oh * ow), want);
            let want = crate::pool::adaptive_avg_pool2d(&x, c, h, w, 2, 3).unwrap();
            let got = adaptive_avg_pool(&xb, planes, h, w, 2, 3).unwrap();
            prop_assert_eq!(from_blocked(&got, 1, c, 6), want);
        }
    }
}
