//! BatchNorm (train mode with batch statistics, or eval mode with running ones), LayerNorm over
//! the last axis, and softmax over the last axis: forwards and backwards.

use super::Buf;
use rayon::prelude::*;

/// What a training-mode BatchNorm saves for its backward.
#[derive(Clone, Debug)]
pub struct BnSaved {
    pub mean: Vec<f32>,
    pub invstd: Vec<f32>,
}

/// Per-channel `(mean, biased variance)` over N and the spatial dims.
pub fn batch_stats(x: &Buf) -> (Vec<f32>, Vec<f32>) {
    let (n, c, s) = x.ncs();
    let m = (n * s) as f64;
    let stats: Vec<(f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let planes = || (0..n).map(|i| &x.data[(i * c + ch) * s..][..s]);
            let sum: f64 = planes()
                .map(|p| p.iter().map(|&v| v as f64).sum::<f64>())
                .sum();
            let mu = sum / m;
            let sq: f64 = planes()
                .map(|p| p.iter().map(|&v| (v as f64 - mu).powi(2)).sum::<f64>())
                .sum();
            (mu as f32, (sq / m) as f32)
        })
        .collect();
    stats.into_iter().unzip()
}

/// `y = (x - mean) * invstd * gamma + beta` per channel.
pub fn affine(x: &Buf, mean: &[f32], invstd: &[f32], gamma: &[f32], beta: &[f32]) -> Buf {
    let (_, c, s) = x.ncs();
    let mut y = vec![0.0f32; x.len()];
    y.par_chunks_mut(s.max(1))
        .zip(x.data.par_chunks(s.max(1)))
        .enumerate()
        .for_each(|(k, (yo, xi))| {
            let ch = k % c;
            let a = invstd[ch] * gamma[ch];
            let b = beta[ch] - mean[ch] * a;
            yo.iter_mut().zip(xi).for_each(|(o, &v)| *o = v * a + b);
        });
    Buf::new(x.shape.clone(), y)
}

/// Train-mode forward: normalise with batch statistics and update the running ones in place
/// (PyTorch: momentum 0.1, unbiased variance for the running estimate).
#[allow(clippy::too_many_arguments)]
pub fn train_forward(
    x: &Buf,
    gamma: &[f32],
    beta: &[f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    eps: f32,
    momentum: f32,
) -> (Buf, BnSaved) {
    let (n, _, s) = x.ncs();
    let (mean, var) = batch_stats(x);
    let m = (n * s) as f32;
    let unbias = if m > 1.0 { m / (m - 1.0) } else { 1.0 };
    for ch in 0..mean.len() {
        running_mean[ch] = (1.0 - momentum) * running_mean[ch] + momentum * mean[ch];
        running_var[ch] = (1.0 - momentum) * running_var[ch] + momentum * var[ch] * unbias;
    }
    let invstd: Vec<f32> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let y = affine(x, &mean, &invstd, gamma, beta);
    (y, BnSaved { mean, invstd })
}

/// Backward of BatchNorm: `(dx, dgamma, dbeta)`. `batch` is true when the statistics came from
/// the batch (train mode) and so depend on `x`.
pub fn backward(
    x: &Buf,
    saved: &BnSaved,
    gamma: &[f32],
    dy: &[f32],
    batch: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (n, c, s) = x.ncs();
    let m = (n * s) as f32;
    // Per channel: Σdy and Σdy·x̂.
    let sums: Vec<(f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mu, is) = (saved.mean[ch], saved.invstd[ch]);
            let (mut sdy, mut sdyx) = (0.0f64, 0.0f64);
            for i in 0..n {
                let o = (i * c + ch) * s;
                for (&g, &v) in dy[o..o + s].iter().zip(&x.data[o..o + s]) {
                    sdy += g as f64;
                    sdyx += (g * (v - mu) * is) as f64;
                }
            }
            (sdy as f32, sdyx as f32)
        })
        .collect();
    let mut dx = vec![0.0f32; x.len()];
    dx.par_chunks_mut(s.max(1))
        .enumerate()
        .for_each(|(p, out)| {
            let ch = p % c;
            let (mu, is, g) = (saved.mean[ch], saved.invstd[ch], gamma[ch]);
            let (sdy, sdyx) = sums[ch];
            let base = p * s;
            for (k, o) in out.iter_mut().enumerate() {
                let i = base + k;
                *o = if batch {
                    let xh = (x.data[i] - mu) * is;
                    g * is * (dy[i] - sdy / m - xh * sdyx / m)
                } else {
                    g * is * dy[i]
                };
            }
        });
    let (dbeta, dgamma) = sums.into_iter().unzip();
    (dx, dgamma, dbeta)
}

/// LayerNorm over the last axis; returns the output and per-row `(mean, rstd)`.
pub fn layer_norm_forward(
    x: &Buf,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) -> (Buf, Vec<(f32, f32)>) {
    let d = *x.shape.last().unwrap_or(&1);
    let mut y = vec![0.0; x.len()];
    let mut stats = Vec::with_capacity(x.len() / d.max(1));
    for (row, out) in x.data.chunks(d).zip(y.chunks_mut(d)) {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
        let rstd = 1.0 / (var + eps as f64).sqrt();
        for i in 0..d {
            out[i] = ((row[i] as f64 - mean) * rstd) as f32 * gamma[i] + beta[i];
        }
        stats.push((mean as f32, rstd as f32));
    }
    (Buf::new(x.shape.clone(), y), stats)
}

/// `(dx, dgamma, dbeta)` of LayerNorm.
pub fn layer_norm_backward(
    x: &Buf,
    stats: &[(f32, f32)],
    gamma: &[f32],
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = *x.shape.last().unwrap_or(&1);
    let mut dx = vec![0.0; x.len()];
    let mut dg = vec![0.0; d];
    let mut db = vec![0.0; d];
    for (r, ((row, g), out)) in x
        .data
        .chunks(d)
        .zip(dy.chunks(d))
        .zip(dx.chunks_mut(d))
        .enumerate()
    {
        let (mean, rstd) = stats[r];
        let (mut s1, mut s2) = (0.0f32, 0.0f32);
        for i in 0..d {
            let xh = (row[i] - mean) * rstd;
            dg[i] += g[i] * xh;
            db[i] += g[i];
            let gx = g[i] * gamma[i];
            s1 += gx;
            s2 += gx * xh;
        }
        for i in 0..d {
            let xh = (row[i] - mean) * rstd;
            out[i] = rstd * (g[i] * gamma[i] - s1 / d as f32 - xh * s2 / d as f32);
        }
    }
    (dx, dg, db)
}

pub fn softmax_forward(x: &Buf) -> Buf {
    let mut y = x.data.clone();
    qvision_kernels::elementwise::softmax_rows(&mut y, *x.shape.last().unwrap_or(&1));
    Buf::new(x.shape.clone(), y)
}

/// `dx = y ⊙ (dy - Σ dy·y)` per row, from the softmax output `y`.
pub fn softmax_backward(y: &Buf, dy: &[f32]) -> Vec<f32> {
    let d = *y.shape.last().unwrap_or(&1);
    let mut dx = vec![0.0; y.len()];
    for ((yr, gr), out) in y.data.chunks(d).zip(dy.chunks(d)).zip(dx.chunks_mut(d)) {
        let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
        for i in 0..d {
            out[i] = yr[i] * (gr[i] - dot);
        }
    }
    dx
}
