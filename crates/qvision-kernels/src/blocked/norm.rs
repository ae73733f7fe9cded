//! LayerNorm over the channels of each pixel (`LayerNorm2d`) in NCHW16c. The reference is the
//! NCHW kernel, [`crate::norm::layer_norm_2d`].

use super::{blocks, B};
use crate::isa::Isa;
use crate::norm::{split_mean, Mean, Moments};
use crate::{shape_err, KernelError};
use rayon::prelude::*;

/// Pixels per work item of the statistics pass.
const TILE: usize = 32;

/// `x` is `[n][blocks(c)][hw][16]` (padding lanes zero); normalised in place over the `c` real
/// channels of every pixel. Padding lanes stay zero.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_2d(
    isa: Isa,
    x: &mut [f32],
    n: usize,
    c: usize,
    hw: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) -> Result<(), KernelError> {
    let cb = blocks(c);
    if c == 0 || x.len() != n * cb * hw * B || gamma.len() != c || beta.len() != c {
        return Err(shape_err(
            "layer_norm_2d (blocked)",
            format!("{c} channels do not match the input or affine"),
        ));
    }
    let mut hi = vec![0.0f32; n * hw];
    let mut lo = vec![0.0f32; n * hw];
    let mut inv = vec![0.0f32; n * hw];
    {
        let x: &[f32] = x;
        hi.par_chunks_mut(TILE)
            .zip(lo.par_chunks_mut(TILE))
            .zip(inv.par_chunks_mut(TILE))
            .enumerate()
            .for_each(|(t, ((h, l), iv))| {
                let s = Stats {
                    x,
                    c,
                    hw,
                    p0: t * TILE,
                    eps,
                };
                stats(
                    isa,
                    &s,
                    Moments {
                        hi: h,
                        lo: l,
                        inv: iv,
                    },
                );
            });
    }
    // gamma and beta padded with zeros: padding lanes come out zero
    let mut g = vec![0.0f32; cb * B];
    let mut b = vec![0.0f32; cb * B];
    g[..c].copy_from_slice(gamma);
    b[..c].copy_from_slice(beta);
    x.par_chunks_mut(hw * B)
        .enumerate()
        .for_each(|(plane, dst)| {
            let (img, blk) = (plane / cb, plane % cb);
            let px = img * hw..(img + 1) * hw;
            let m = Mean {
                hi: &hi[px.clone()],
                lo: &lo[px.clone()],
                inv: &inv[px],
            };
            let gb: &[f32; B] = g[blk * B..][..B].try_into().expect("16 lanes");
            let bb: &[f32; B] = b[blk * B..][..B].try_into().expect("16 lanes");
            normalise(isa, dst, &m, gb, bb);
        });
    Ok(())
}

/// A tile of pixels `p0..` (a flat index over `n * hw`).
struct Stats<'a> {
    x: &'a [f32],
    c: usize,
    hw: usize,
    p0: usize,
    eps: f32,
}

/// Mean (summed in f64, kept as f32 `hi + lo`) and `1 / std` per pixel, as the NCHW kernel.
#[inline(always)]
fn stats_body(s: &Stats<'_>, m: Moments<'_>) {
    let cb = blocks(s.c);
    // lanes of the last block that hold channels
    let last = s.c - (cb - 1) * B;
    let rc = 1.0 / s.c as f32;
    for (i, ((h, l), iv)) in
        m.hi.iter_mut()
            .zip(m.lo.iter_mut())
            .zip(m.inv.iter_mut())
            .enumerate()
    {
        let p = s.p0 + i;
        let (img, px) = (p / s.hw, p % s.hw);
        let at = |blk: usize| ((img * cb + blk) * s.hw + px) * B;
        let mut acc = [0.0f64; B];
        for blk in 0..cb {
            let v: &[f32; B] = s.x[at(blk)..][..B].try_into().expect("16 lanes");
            acc.iter_mut().zip(v).for_each(|(a, &v)| *a += v as f64);
        }
        let (mh, ml) = split_mean(hsum(acc) / s.c as f64);
        let mut sq = [0.0f32; B];
        for blk in 0..cb {
            let v: &[f32; B] = s.x[at(blk)..][..B].try_into().expect("16 lanes");
            let lanes = if blk + 1 == cb { last } else { B };
            for (lane, (a, v)) in sq.iter_mut().zip(v).enumerate() {
                let d = if lane < lanes { (v - mh) - ml } else { 0.0 };
                *a += d * d;
            }
        }
        (*h, *l) = (mh, ml);
        *iv = 1.0 / (hsum(sq) * rc + s.eps).sqrt();
    }
}

#[inline(always)]
fn normalise_body(dst: &mut [f32], m: &Mean<'_>, g: &[f32; B], b: &[f32; B]) {
    for (((px, h), lo), iv) in dst.chunks_exact_mut(B).zip(m.hi).zip(m.lo).zip(m.inv) {
        for l in 0..B {
            px[l] = ((px[l] - h) - lo) * (iv * g[l]) + b[l];
        }
    }
}

crate::isa::multiversion!(fn stats(s: &Stats<'_>, m: Moments<'_>) => stats_body);
crate::isa::multiversion!(fn normalise(dst: &mut [f32], m: &Mean<'_>, g: &[f32; B], b: &[f32; B]) => normalise_body);

/// The sum of 16 lanes as a tree (4 dependent adds, not 15).
#[inline(always)]
fn hsum<T: Copy + std::ops::AddAssign>(mut a: [T; B]) -> T {
    let mut n = B / 2;
    while n > 0 {
        for l in 0..n {
            a[l] += a[l + n];
        }
        n /= 2;
    }
    a[0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocked::{from_blocked, to_blocked};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn blocked_layer_norm_2d_matches_nchw(n in 1usize..3, c in 1usize..50, hw in 1usize..100, seed in any::<u64>()) {
            let x: Vec<f32> = crate::reference::pseudo_random(n * c * hw, seed).iter().map(|v| v * 3.0 + 1.0).collect();
            let g = crate::reference::pseudo_random(c, seed ^ 1);
            let b = crate::reference::pseudo_random(c, seed ^ 2);
            let mut want = x.clone();
            crate::norm::layer_norm_2d(Isa::Scalar, &mut want, n, c, hw, &g, &b, 1e-6).unwrap();
            for isa in crate::isa::available() {
                let mut y = to_blocked(&x, n, c, hw);
                layer_norm_2d(isa, &mut y, n, c, hw, &g, &b, 1e-6).unwrap();
                let cb = blocks(c);
                // padding lanes stay zero
                for (i, v) in y.iter().enumerate() {
                    let ch = (i / (hw * B)) % cb * B + i % B;
                    if ch >= c { prop_assert_eq!(*v, 0.0); }
                }
                for (a, w) in from_blocked(&y, n, c, hw).iter().zip(&want) {
                    prop_assert!((a - w).abs() <= 1e-5 * (1.0 + w.abs()), "{:?}: {} vs {}", isa, a, w);
                }
            }
        }
    }
}
