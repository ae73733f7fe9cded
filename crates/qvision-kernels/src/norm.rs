//! Normalisations: BatchNorm in inference mode, LayerNorm over the last axis and LayerNorm over
//! the channels of NCHW (`LayerNorm2d`; the blocked layout's is in `crate::blocked::norm`).

use crate::{shape_err, KernelError};
use rayon::prelude::*;

/// Inference BatchNorm over NCHW: `y = (x - mean) / sqrt(var + eps) * gamma + beta`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm(
    x: &mut [f32],
    n: usize,
    c: usize,
    hw: usize,
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
) -> Result<(), KernelError> {
    if x.len() != n * c * hw || [gamma.len(), beta.len(), mean.len(), var.len()] != [c; 4] {
        return Err(shape_err(
            "batch_norm",
            format!("{c} channels do not match the input or statistics"),
        ));
    }
    let (scale, shift) = batch_norm_affine(gamma, beta, mean, var, eps);
    x.par_chunks_mut(hw.max(1))
        .enumerate()
        .for_each(|(i, plane)| {
            let ch = i % c;
            plane
                .iter_mut()
                .for_each(|v| *v = *v * scale[ch] + shift[ch]);
        });
    Ok(())
}

/// The per-channel `(scale, shift)` that an inference BatchNorm applies.
pub fn batch_norm_affine(
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
) -> (Vec<f32>, Vec<f32>) {
    let scale: Vec<f32> = gamma
        .iter()
        .zip(var)
        .map(|(g, v)| g / (v + eps).sqrt())
        .collect();
    let shift = beta
        .iter()
        .zip(mean)
        .zip(&scale)
        .map(|((b, m), s)| b - m * s)
        .collect();
    (scale, shift)
}

/// LayerNorm over rows of length `len` (the last axis), PyTorch's biased variance.
pub fn layer_norm(
    x: &mut [f32],
    len: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) -> Result<(), KernelError> {
    if len == 0 || !x.len().is_multiple_of(len) || gamma.len() != len || beta.len() != len {
        return Err(shape_err(
            "layer_norm",
            format!("normalised size {len} does not match the input or affine"),
        ));
    }
    x.par_chunks_mut(len).for_each(|row| {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / len as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / len as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
            *v = ((*v as f64 - mean) * inv) as f32 * g + b;
        }
    });
    Ok(())
}

/// Concatenate planes and apply a per-plane affine map and an activation in one pass:
/// DenseNet's `relu(batch_norm(cat(features)))` without the concatenated copy.
///
/// Layout-agnostic: image `i` of part `k` is `planes[k]` planes of `plane_len` values each
/// (NCHW: a plane is a channel; NCHW16c: a block of 16 channels), and the output is, per image,
/// the parts' planes in order. Output plane `p` (counted within an image) maps value `j` of the
/// plane to `act(v * scale[p][j % 16] + shift[p][j % 16])`, so NCHW passes a scale repeated over
/// the 16 lanes and the blocked layout the block's 16 channels.
#[allow(clippy::too_many_arguments)]
pub fn concat_affine(
    isa: crate::isa::Isa,
    parts: &[&[f32]],
    planes: &[usize],
    plane_len: usize,
    n: usize,
    scale: &[[f32; 16]],
    shift: &[[f32; 16]],
    act: Option<crate::act::Activation>,
) -> Result<Vec<f32>, KernelError> {
    let total: usize = planes.iter().sum();
    let sizes_ok = parts.len() == planes.len()
        && parts
            .iter()
            .zip(planes)
            .all(|(p, &k)| p.len() == n * k * plane_len);
    if !sizes_ok || scale.len() != total || shift.len() != total {
        return Err(shape_err(
            "concat_affine",
            "parts, planes and per-plane affine do not match",
        ));
    }
    // (part, first plane of the part within an image) for each output plane of an image
    let mut source = Vec::with_capacity(total);
    for (k, &np) in planes.iter().enumerate() {
        source.extend((0..np).map(|j| (k, j)));
    }
    let mut out = qvision_tensor::pool::take(n * total * plane_len);
    out.par_chunks_mut(plane_len.max(1))
        .enumerate()
        .for_each(|(op, dst)| {
            let (img, p) = (op / total, op % total);
            let (k, j) = source[p];
            let at = (img * planes[k] + j) * plane_len;
            let src = &parts[k][at..at + plane_len];
            affine_act(isa, dst, src, &scale[p], &shift[p], act);
        });
    Ok(out)
}

/// `dst = act(src * s[j % 16] + t[j % 16])`, in pieces small enough to stay in L1 between the
/// affine map and the activation.
pub(crate) fn affine_act(
    isa: crate::isa::Isa,
    dst: &mut [f32],
    src: &[f32],
    s: &[f32; 16],
    t: &[f32; 16],
    act: Option<crate::act::Activation>,
) {
    for (d, x) in dst.chunks_mut(4096).zip(src.chunks(4096)) {
        affine(isa, d, x, s, t);
        if let Some(a) = act {
            crate::act::apply_slice(isa, d, a);
        }
    }
}

#[inline(always)]
fn affine_body(dst: &mut [f32], src: &[f32], s: &[f32; 16], t: &[f32; 16]) {
    let mut d16 = dst.chunks_exact_mut(16);
    let mut s16 = src.chunks_exact(16);
    for (d, x) in (&mut d16).zip(&mut s16) {
        for l in 0..16 {
            d[l] = x[l] * s[l] + t[l];
        }
    }
    for (l, (d, x)) in d16
        .into_remainder()
        .iter_mut()
        .zip(s16.remainder())
        .enumerate()
    {
        *d = x * s[l] + t[l];
    }
}

crate::isa::multiversion!(fn affine_portable(dst: &mut [f32], src: &[f32], s: &[f32; 16], t: &[f32; 16]) => affine_body);

/// [`affine_body`]; AVX-512 in intrinsics (compiled from the loop, the vectoriser gathered
/// across 16-value chunks).
fn affine(isa: crate::isa::Isa, dst: &mut [f32], src: &[f32], s: &[f32; 16], t: &[f32; 16]) {
    #[cfg(target_arch = "x86_64")]
    if isa == crate::isa::Isa::Avx512 {
        // SAFETY: `isa` never exceeds `isa::best()`, which detected AVX-512F.
        return unsafe { x86::affine(dst, src, s, t) };
    }
    affine_portable(isa, dst, src, s, t)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX-512F is available.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn affine(dst: &mut [f32], src: &[f32], s: &[f32; 16], t: &[f32; 16]) {
        // SAFETY: 16 values each.
        let (sv, tv) = unsafe { (_mm512_loadu_ps(s.as_ptr()), _mm512_loadu_ps(t.as_ptr())) };
        let mut d16 = dst.chunks_exact_mut(16);
        let mut x16 = src.chunks_exact(16);
        for (d, x) in (&mut d16).zip(&mut x16) {
            // SAFETY: `chunks_exact` chunks of 16 values.
            unsafe {
                let v = _mm512_fmadd_ps(_mm512_loadu_ps(x.as_ptr()), sv, tv);
                _mm512_storeu_ps(d.as_mut_ptr(), v);
            }
        }
        let (d, x) = (d16.into_remainder(), x16.remainder());
        for (l, (d, x)) in d.iter_mut().zip(x).enumerate() {
            *d = x * s[l] + t[l];
        }
    }
}

/// Pixels per work item of [`layer_norm_2d`]'s statistics pass.
const TILE: usize = 64;

/// LayerNorm over the `c` channels of every pixel of NCHW `x` (`[n][c][hw]`), in place:
/// torchvision's `LayerNorm2d`, PyTorch's biased variance. Statistics per tile of pixels
/// (vectorised over pixels, two passes over the channels: mean, then centred variance), then
/// one parallel pass per channel plane.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_2d(
    isa: crate::isa::Isa,
    x: &mut [f32],
    n: usize,
    c: usize,
    hw: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) -> Result<(), KernelError> {
    if c == 0 || x.len() != n * c * hw || gamma.len() != c || beta.len() != c {
        return Err(shape_err(
            "layer_norm_2d",
            format!("{c} channels do not match the input or affine"),
        ));
    }
    // per pixel: the mean as f32 hi + lo parts, and 1 / std
    let moments = {
        let x: &[f32] = x;
        PixelMoments::compute(n * hw, TILE, |p0, m| {
            nchw_stats(isa, &PixelStats { x, c, hw, p0, eps }, m)
        })
    };
    x.par_chunks_mut(hw.max(1))
        .enumerate()
        .for_each(|(plane, row)| {
            let (img, ch) = (plane / c, plane % c);
            normalise(isa, row, &moments.image(img, hw), gamma[ch], beta[ch]);
        });
    Ok(())
}

/// Per-pixel statistics over `n * hw` pixels, as [`Moments`] describes them.
pub(crate) struct PixelMoments {
    hi: Vec<f32>,
    lo: Vec<f32>,
    inv: Vec<f32>,
}

impl PixelMoments {
    /// Filled tile by tile in parallel: `tile_stats(p0, moments)` writes pixels `p0..`.
    pub(crate) fn compute(
        pixels: usize,
        tile: usize,
        tile_stats: impl Fn(usize, Moments<'_>) + Sync + Send,
    ) -> Self {
        let mut m = PixelMoments {
            hi: vec![0.0; pixels],
            lo: vec![0.0; pixels],
            inv: vec![0.0; pixels],
        };
        m.hi.par_chunks_mut(tile)
            .zip(m.lo.par_chunks_mut(tile))
            .zip(m.inv.par_chunks_mut(tile))
            .enumerate()
            .for_each(|(t, ((hi, lo), inv))| tile_stats(t * tile, Moments { hi, lo, inv }));
        m
    }

    /// The statistics of image `img`'s `hw` pixels.
    pub(crate) fn image(&self, img: usize, hw: usize) -> Mean<'_> {
        let px = img * hw..(img + 1) * hw;
        Mean {
            hi: &self.hi[px.clone()],
            lo: &self.lo[px.clone()],
            inv: &self.inv[px],
        }
    }
}

/// One tile of pixels (`p0..`, a flat index over `n * hw`) for the statistics pass (NCHW
/// here, blocked in `crate::blocked::norm`).
pub(crate) struct PixelStats<'a> {
    pub x: &'a [f32],
    pub c: usize,
    pub hw: usize,
    pub p0: usize,
    pub eps: f32,
}

/// Per-pixel statistics being written: the mean is summed in f64 and kept as `hi + lo` (two
/// f32), so `(x - hi) - lo` centres a value accurately even when the channels barely differ
/// (`x - hi` is exact there); then `1 / sqrt(var + eps)`.
pub(crate) struct Moments<'a> {
    pub hi: &'a mut [f32],
    pub lo: &'a mut [f32],
    pub inv: &'a mut [f32],
}

/// The statistics of a run of pixels, read back.
pub(crate) struct Mean<'a> {
    pub hi: &'a [f32],
    pub lo: &'a [f32],
    pub inv: &'a [f32],
}

/// `mean` as `hi + lo`.
#[inline(always)]
pub(crate) fn split_mean(mean: f64) -> (f32, f32) {
    let hi = mean as f32;
    (hi, (mean - hi as f64) as f32)
}

#[inline(always)]
fn nchw_stats_body(s: &PixelStats<'_>, m: Moments<'_>) {
    let np = m.hi.len();
    let mut done = 0;
    let mut acc = [0.0f64; TILE];
    // a tile may cross into the next image: handle each image's run separately
    while done < np {
        let p = s.p0 + done;
        let (img, px) = (p / s.hw, p % s.hw);
        let run = (s.hw - px).min(np - done);
        let base = img * s.c * s.hw + px;
        let a = &mut acc[..run];
        a.fill(0.0);
        for ch in 0..s.c {
            let row = &s.x[base + ch * s.hw..][..run];
            a.iter_mut().zip(row).for_each(|(a, &v)| *a += v as f64);
        }
        let (hi, lo) = (&mut m.hi[done..done + run], &mut m.lo[done..done + run]);
        for ((h, l), a) in hi.iter_mut().zip(lo.iter_mut()).zip(&*a) {
            (*h, *l) = split_mean(a / s.c as f64);
        }
        let iv = &mut m.inv[done..done + run];
        iv.fill(0.0);
        for ch in 0..s.c {
            let row = &s.x[base + ch * s.hw..][..run];
            for (((a, v), h), l) in iv.iter_mut().zip(row).zip(&*hi).zip(&*lo) {
                let d = (v - h) - l;
                *a += d * d;
            }
        }
        let rc = 1.0 / s.c as f32;
        iv.iter_mut()
            .for_each(|a| *a = 1.0 / (*a * rc + s.eps).sqrt());
        done += run;
    }
}

#[inline(always)]
fn normalise_body(row: &mut [f32], m: &Mean<'_>, g: f32, b: f32) {
    for (((v, h), l), iv) in row.iter_mut().zip(m.hi).zip(m.lo).zip(m.inv) {
        *v = ((*v - h) - l) * (iv * g) + b;
    }
}

crate::isa::multiversion!(fn nchw_stats(s: &PixelStats<'_>, m: Moments<'_>) => nchw_stats_body);
crate::isa::multiversion!(fn normalise(row: &mut [f32], m: &Mean<'_>, g: f32, b: f32) => normalise_body);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// LayerNorm over the channels of each pixel, in f64.
    pub(crate) fn layer_norm_2d_naive(
        x: &[f32],
        n: usize,
        c: usize,
        hw: usize,
        g: &[f32],
        b: &[f32],
        eps: f32,
    ) -> Vec<f32> {
        let mut y = x.to_vec();
        for img in 0..n {
            for p in 0..hw {
                let at = |ch: usize| (img * c + ch) * hw + p;
                let mean = (0..c).map(|ch| x[at(ch)] as f64).sum::<f64>() / c as f64;
                let var = (0..c)
                    .map(|ch| (x[at(ch)] as f64 - mean).powi(2))
                    .sum::<f64>()
                    / c as f64;
                let inv = 1.0 / (var + eps as f64).sqrt();
                for ch in 0..c {
                    y[at(ch)] =
                        ((x[at(ch)] as f64 - mean) * inv * g[ch] as f64 + b[ch] as f64) as f32;
                }
            }
        }
        y
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn concat_affine_is_concat_then_batch_norm_then_act(n in 1usize..3, c0 in 1usize..20, c1 in 1usize..20,
                                                           hw in 1usize..70, act in 0usize..3, seed in any::<u64>()) {
            let a = crate::reference::pseudo_random(n * c0 * hw, seed);
            let b = crate::reference::pseudo_random(n * c1 * hw, seed ^ 1);
            let c = c0 + c1;
            let g = crate::reference::pseudo_random(c, seed ^ 2);
            let beta = crate::reference::pseudo_random(c, seed ^ 3);
            let mean = crate::reference::pseudo_random(c, seed ^ 4);
            let var: Vec<f32> = crate::reference::pseudo_random(c, seed ^ 5).iter().map(|v| v.abs() + 0.1).collect();
            let act = [None, Some(crate::Activation::Relu), Some(crate::Activation::Gelu)][act];
            // reference: concat, batch norm, activation
            let mut want = Vec::new();
            for img in 0..n {
                want.extend_from_slice(&a[img * c0 * hw..(img + 1) * c0 * hw]);
                want.extend_from_slice(&b[img * c1 * hw..(img + 1) * c1 * hw]);
            }
            batch_norm(&mut want, n, c, hw, &g, &beta, &mean, &var, 1e-5).unwrap();
            if let Some(f) = act { want.iter_mut().for_each(|v| *v = f.apply_scalar(*v)); }
            let (sc, sh) = batch_norm_affine(&g, &beta, &mean, &var, 1e-5);
            let scale: Vec<[f32; 16]> = sc.iter().map(|&v| [v; 16]).collect();
            let shift: Vec<[f32; 16]> = sh.iter().map(|&v| [v; 16]).collect();
            for isa in crate::isa::available() {
                let y = concat_affine(isa, &[&a, &b], &[c0, c1], hw, n, &scale, &shift, act).unwrap();
                for (p, q) in y.iter().zip(&want) {
                    prop_assert!((p - q).abs() <= 1e-5 * (1.0 + q.abs()), "{:?}: {} vs {}", isa, p, q);
                }
            }
        }

        #[test]
        fn layer_norm_2d_matches_naive(n in 1usize..3, c in 1usize..40, hw in 1usize..150, seed in any::<u64>()) {
            let x: Vec<f32> = crate::reference::pseudo_random(n * c * hw, seed).iter().map(|v| v * 3.0 + 1.0).collect();
            let g = crate::reference::pseudo_random(c, seed ^ 1);
            let b = crate::reference::pseudo_random(c, seed ^ 2);
            let want = layer_norm_2d_naive(&x, n, c, hw, &g, &b, 1e-6);
            for isa in crate::isa::available() {
                let mut y = x.clone();
                layer_norm_2d(isa, &mut y, n, c, hw, &g, &b, 1e-6).unwrap();
                for (a, w) in y.iter().zip(&want) {
                    prop_assert!((a - w).abs() <= 1e-5 * (1.0 + w.abs()), "{:?}: {} vs {}", isa, a, w);
                }
            }
        }
    }

    #[test]
    fn layer_norm_normalises() {
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        layer_norm(&mut x, 4, &[1.0; 4], &[0.0; 4], 0.0).unwrap();
        let mean: f32 = x.iter().sum::<f32>() / 4.0;
        let var: f32 = x.iter().map(|v| v * v).sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5);
    }

    #[test]
    fn batch_norm_applies_stats() {
        let mut x = vec![3.0, 5.0];
        batch_norm(
            &mut x,
            1,
            2,
            1,
            &[2.0, 1.0],
            &[1.0, 0.0],
            &[1.0, 1.0],
            &[4.0, 1.0],
            0.0,
        )
        .unwrap();
        assert_eq!(x[0], (3.0 - 1.0) / 2.0 * 2.0 + 1.0);
        assert_eq!(x[1], 4.0);
        assert!(batch_norm(&mut x, 1, 3, 1, &[1.0], &[1.0], &[1.0], &[1.0], 0.0).is_err());
    }
}
