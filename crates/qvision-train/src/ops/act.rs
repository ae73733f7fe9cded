//! Activation derivatives (the forwards are `qvision_kernels::Activation`'s).

use qvision_kernels::Activation;
use rayon::prelude::*;

/// `dx = dy · f'(x)` for the activation `a`, given its input `x`.
pub fn backward(a: Activation, x: &[f32], dy: &[f32]) -> Vec<f32> {
    x.par_iter()
        .zip(dy)
        .with_min_len(1 << 13)
        .map(|(&x, &g)| g * derivative(a, x))
        .collect()
}

/// `f'(x)`; at the kinks the one-sided value PyTorch uses.
pub fn derivative(a: Activation, x: f32) -> f32 {
    match a {
        Activation::Relu => (x > 0.0) as u8 as f32,
        Activation::Relu6 => (x > 0.0 && x < 6.0) as u8 as f32,
        Activation::Hardswish => {
            if x < -3.0 {
                0.0
            } else if x > 3.0 {
                1.0
            } else {
                (2.0 * x + 3.0) / 6.0
            }
        }
        Activation::Hardsigmoid => {
            if x > -3.0 && x < 3.0 {
                1.0 / 6.0
            } else {
                0.0
            }
        }
        Activation::Sigmoid => {
            let s = sigmoid(x);
            s * (1.0 - s)
        }
        Activation::Silu => {
            let s = sigmoid(x);
            s * (1.0 + x * (1.0 - s))
        }
        Activation::Gelu => {
            let cdf = 0.5 * (1.0 + qvision_kernels::act::erf(x * std::f32::consts::FRAC_1_SQRT_2));
            let pdf = (-0.5 * x * x).exp() * 0.398_942_3;
            cdf + x * pdf
        }
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The forward, element-wise.
pub fn forward(a: Activation, x: &[f32]) -> Vec<f32> {
    let mut y = x.to_vec();
    a.apply(&mut y);
    y
}
