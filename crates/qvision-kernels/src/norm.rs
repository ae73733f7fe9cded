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
    // per pixel: mean, 1 / std
    let mut mean = vec![0.0f32; n * hw];
    let mut inv = vec![0.0f32; n * hw];
    {
        let x: &[f32] = x;
        mean.par_chunks_mut(TILE)
            .zip(inv.par_chunks_mut(TILE))
            .enumerate()
            .for_each(|(t, (m, iv))| {
                let p0 = t * TILE;
                let stats = PixelStats { x, c, hw, p0, eps };
                nchw_stats(isa, &stats, m, iv);
            });
    }
    x.par_chunks_mut(hw.max(1))
        .enumerate()
        .for_each(|(plane, row)| {
            let (img, ch) = (plane / c, plane % c);
            let at = img * hw;
            normalise(
                isa,
                row,
                &mean[at..at + hw],
                &inv[at..at + hw],
                gamma[ch],
                beta[ch],
            );
        });
    Ok(())
}

/// One tile of pixels (`p0..`, a flat index over `n * hw`) for the statistics pass.
struct PixelStats<'a> {
    x: &'a [f32],
    c: usize,
    hw: usize,
    p0: usize,
    eps: f32,
}

#[inline(always)]
fn nchw_stats_body(s: &PixelStats<'_>, mean: &mut [f32], inv: &mut [f32]) {
    let np = mean.len();
    let mut done = 0;
    // a tile may cross into the next image: handle each image's run separately
    while done < np {
        let p = s.p0 + done;
        let (img, px) = (p / s.hw, p % s.hw);
        let run = (s.hw - px).min(np - done);
        let base = img * s.c * s.hw + px;
        let m = &mut mean[done..done + run];
        let iv = &mut inv[done..done + run];
        m.fill(0.0);
        iv.fill(0.0);
        for ch in 0..s.c {
            let row = &s.x[base + ch * s.hw..][..run];
            m.iter_mut().zip(row).for_each(|(a, v)| *a += v);
        }
        let rc = 1.0 / s.c as f32;
        m.iter_mut().for_each(|a| *a *= rc);
        for ch in 0..s.c {
            let row = &s.x[base + ch * s.hw..][..run];
            iv.iter_mut().zip(row).zip(&*m).for_each(|((a, v), mu)| {
                let d = v - mu;
                *a += d * d;
            });
        }
        iv.iter_mut()
            .for_each(|a| *a = 1.0 / (*a * rc + s.eps).sqrt());
        done += run;
    }
}

#[inline(always)]
fn normalise_body(row: &mut [f32], mean: &[f32], inv: &[f32], g: f32, b: f32) {
    for ((v, mu), iv) in row.iter_mut().zip(mean).zip(inv) {
        *v = (*v - mu) * (iv * g) + b;
    }
}

crate::isa::multiversion!(fn nchw_stats(s: &PixelStats<'_>, mean: &mut [f32], inv: &mut [f32]) => nchw_stats_body);
crate::isa::multiversion!(fn normalise(row: &mut [f32], mean: &[f32], inv: &[f32], g: f32, b: f32) => normalise_body);

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
