//! LayerNorm over the channels of each pixel (`LayerNorm2d`) in NCHW16c. The reference is the
//! NCHW kernel, [`crate::norm::layer_norm_2d`].

use super::{blocks, B};
use crate::isa::Isa;
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
    let mut mean = vec![0.0f32; n * hw];
    let mut inv = vec![0.0f32; n * hw];
    {
        let x: &[f32] = x;
        mean.par_chunks_mut(TILE)
            .zip(inv.par_chunks_mut(TILE))
            .enumerate()
            .for_each(|(t, (m, iv))| {
                let s = Stats {
                    x,
                    c,
                    hw,
                    p0: t * TILE,
                    eps,
                };
                stats(isa, &s, m, iv);
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
            let at = img * hw;
            let gb: &[f32; B] = g[blk * B..][..B].try_into().expect("16 lanes");
            let bb: &[f32; B] = b[blk * B..][..B].try_into().expect("16 lanes");
            normalise(isa, dst, &mean[at..at + hw], &inv[at..at + hw], gb, bb);
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

#[inline(always)]
fn stats_body(s: &Stats<'_>, mean: &mut [f32], inv: &mut [f32]) {
    let cb = blocks(s.c);
    // lanes of the last block that hold channels
    let last = s.c - (cb - 1) * B;
    let rc = 1.0 / s.c as f32;
    for (i, (m, iv)) in mean.iter_mut().zip(inv.iter_mut()).enumerate() {
        let p = s.p0 + i;
        let (img, px) = (p / s.hw, p % s.hw);
        let at = |blk: usize| ((img * cb + blk) * s.hw + px) * B;
        let mut acc = [0.0f32; B];
        for blk in 0..cb {
            let v: &[f32; B] = s.x[at(blk)..][..B].try_into().expect("16 lanes");
            acc.iter_mut().zip(v).for_each(|(a, v)| *a += v);
        }
        let mu = hsum(acc) * rc;
        let mut sq = [0.0f32; B];
        for blk in 0..cb {
            let v: &[f32; B] = s.x[at(blk)..][..B].try_into().expect("16 lanes");
            let lanes = if blk + 1 == cb { last } else { B };
            for (l, (a, v)) in sq.iter_mut().zip(v).enumerate() {
                let d = if l < lanes { v - mu } else { 0.0 };
                *a += d * d;
            }
        }
        *m = mu;
        *iv = 1.0 / (hsum(sq) * rc + s.eps).sqrt();
    }
}

/// The sum of 16 lanes as a tree (4 dependent adds, not 15).
#[inline(always)]
fn hsum(mut a: [f32; B]) -> f32 {
    let mut n = B / 2;
    while n > 0 {
        for l in 0..n {
            a[l] += a[l + n];
        }
        n /= 2;
    }
    a[0]
}

#[inline(always)]
fn normalise_body(dst: &mut [f32], mean: &[f32], inv: &[f32], g: &[f32; B], b: &[f32; B]) {
    for ((px, mu), iv) in dst.chunks_exact_mut(B).zip(mean).zip(inv) {
        for l in 0..B {
            px[l] = (px[l] - mu) * (iv * g[l]) + b[l];
        }
    }
}

crate::isa::multiversion!(fn stats(s: &Stats<'_>, mean: &mut [f32], inv: &mut [f32]) => stats_body);
crate::isa::multiversion!(fn normalise(dst: &mut [f32], mean: &[f32], inv: &[f32], g: &[f32; B], b: &[f32; B]) => normalise_body);

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
