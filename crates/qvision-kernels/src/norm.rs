//! Normalisations: BatchNorm in inference mode and LayerNorm over the last axis.

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

#[cfg(test)]
mod tests {
    use super::*;

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
