//! LayerNorm over the channels of each pixel (`LayerNorm2d`) in NCHW16c. The reference is the
//! NCHW kernel, [`crate::norm::layer_norm_2d`].

use super::{blocks, B};
use crate::isa::Isa;
use crate::norm::{split_mean, Mean, Moments, PixelMoments, PixelStats as Stats};
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
    let moments = {
        let x: &[f32] = x;
        PixelMoments::compute(n * hw, TILE, |p0, m| {
            stats(isa, &Stats { x, c, hw, p0, eps }, m)
        })
    };
    // gamma and beta padded with zeros: padding lanes come out zero
    let mut g = vec![0.0f32; cb * B];
    let mut b = vec![0.0f32; cb * B];
    g[..c].copy_from_slice(gamma);
    b[..c].copy_from_slice(beta);
    x.par_chunks_mut(hw * B)
        .enumerate()
        .for_each(|(plane, dst)| {
            let (img, blk) = (plane / cb, plane % cb);
            let m = moments.image(img, hw);
            let gb: &[f32; B] = g[blk * B..][..B].try_into().expect("16 lanes");
            let bb: &[f32; B] = b[blk * B..][..B].try_into().expect("16 lanes");
            normalise(isa, dst, &m, gb, bb);
        });
    Ok(())
}

/// Mean (summed in f64, kept as f32 `hi + lo`) and `1 / std` per pixel, as the NCHW kernel.
/// The portable reference; AVX-512 runs [`x86::stats`] (written with intrinsics: compiled from
/// this loop, the per-pixel broadcasts made the vectoriser gather across pixels).
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

crate::isa::multiversion!(fn stats_portable(s: &Stats<'_>, m: Moments<'_>) => stats_body);
crate::isa::multiversion!(fn normalise_portable(dst: &mut [f32], m: &Mean<'_>, g: &[f32; B], b: &[f32; B]) => normalise_body);

fn stats(isa: Isa, s: &Stats<'_>, m: Moments<'_>) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: `isa` never exceeds `isa::best()`, which detected AVX-512F.
        return unsafe { x86::stats(s, m) };
    }
    stats_portable(isa, s, m)
}

fn normalise(isa: Isa, dst: &mut [f32], m: &Mean<'_>, g: &[f32; B], b: &[f32; B]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: as above.
        return unsafe { x86::normalise(dst, m, g, b) };
    }
    normalise_portable(isa, dst, m, g, b)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! AVX-512 forms of [`super::stats_body`] and [`super::normalise_body`]: one pixel's 16
    //! lanes per vector, its scalars broadcast. Every load and store goes through a checked
    //! 16-value slice.
    use super::{blocks, split_mean, Mean, Moments, Stats, B};
    use std::arch::x86_64::*;

    #[inline(always)]
    fn lanes(v: &[f32]) -> &[f32; B] {
        v[..B].try_into().expect("16 lanes")
    }

    /// # Safety
    /// AVX-512F is available.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn stats(s: &Stats<'_>, m: Moments<'_>) {
        let cb = blocks(s.c);
        let last = s.c - (cb - 1) * B;
        let last_mask: __mmask16 = if last == B {
            0xffff
        } else {
            (1u16 << last) - 1
        };
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
            let (mut a0, mut a1) = (_mm512_setzero_pd(), _mm512_setzero_pd());
            for blk in 0..cb {
                // SAFETY: 16 values of a checked slice.
                let v = unsafe { _mm512_loadu_ps(lanes(&s.x[at(blk)..]).as_ptr()) };
                let lo = _mm512_castps512_ps256(v);
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
                a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(lo));
                a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(hi));
            }
            let (mh, ml) = split_mean(_mm512_reduce_add_pd(_mm512_add_pd(a0, a1)) / s.c as f64);
            let (vh, vl) = (_mm512_set1_ps(mh), _mm512_set1_ps(ml));
            let mut sq = _mm512_setzero_ps();
            for blk in 0..cb {
                // SAFETY: 16 values of a checked slice.
                let v = unsafe { _mm512_loadu_ps(lanes(&s.x[at(blk)..]).as_ptr()) };
                let d = _mm512_sub_ps(_mm512_sub_ps(v, vh), vl);
                let mask = if blk + 1 == cb { last_mask } else { 0xffff };
                let d = _mm512_maskz_mov_ps(mask, d);
                sq = _mm512_fmadd_ps(d, d, sq);
            }
            (*h, *l) = (mh, ml);
            *iv = 1.0 / (_mm512_reduce_add_ps(sq) * rc + s.eps).sqrt();
        }
    }

    /// # Safety
    /// AVX-512F is available.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn normalise(dst: &mut [f32], m: &Mean<'_>, g: &[f32; B], b: &[f32; B]) {
        // SAFETY: 16 values each.
        let (gv, bv) = unsafe { (_mm512_loadu_ps(g.as_ptr()), _mm512_loadu_ps(b.as_ptr())) };
        for (((px, &h), &l), &iv) in dst.chunks_exact_mut(B).zip(m.hi).zip(m.lo).zip(m.inv) {
            // SAFETY: 16 values.
            let x = unsafe { _mm512_loadu_ps(px.as_ptr()) };
            let k = _mm512_mul_ps(_mm512_set1_ps(iv), gv);
            let d = _mm512_sub_ps(_mm512_sub_ps(x, _mm512_set1_ps(h)), _mm512_set1_ps(l));
            // SAFETY: 16 values (a `chunks_exact` chunk).
            unsafe { _mm512_storeu_ps(px.as_mut_ptr(), _mm512_fmadd_ps(d, k, bv)) };
        }
    }
}

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
