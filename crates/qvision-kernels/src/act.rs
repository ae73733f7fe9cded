//! Element-wise activations, usable alone or fused into a conv/linear epilogue.

use rayon::prelude::*;

/// The activations of the torchvision classification zoo.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Activation {
    Relu,
    Relu6,
    Hardswish,
    Hardsigmoid,
    Sigmoid,
    Silu,
    /// Exact (erf) GELU, PyTorch's default.
    Gelu,
}

impl Activation {
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Relu6 => "relu6",
            Activation::Hardswish => "hardswish",
            Activation::Hardsigmoid => "hardsigmoid",
            Activation::Sigmoid => "sigmoid",
            Activation::Silu => "silu",
            Activation::Gelu => "gelu",
        }
    }

    /// Scalar definition, as PyTorch documents it.
    #[inline(always)]
    pub fn apply_scalar(self, x: f32) -> f32 {
        match self {
            Activation::Relu => x.max(0.0),
            Activation::Relu6 => x.clamp(0.0, 6.0),
            Activation::Hardswish => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
            Activation::Hardsigmoid => (x + 3.0).clamp(0.0, 6.0) / 6.0,
            Activation::Sigmoid => sigmoid(x),
            Activation::Silu => x * sigmoid(x),
            Activation::Gelu => 0.5 * x * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2)),
        }
    }

    /// Apply in place over a slice (vectorised for the CPU, in parallel for long slices).
    pub fn apply(self, data: &mut [f32]) {
        const CHUNK: usize = 1 << 14;
        let isa = crate::isa::current();
        if data.len() > CHUNK {
            data.par_chunks_mut(CHUNK)
                .for_each(|c| apply_slice(isa, c, self));
        } else {
            apply_slice(isa, data, self);
        }
    }
}

/// One loop per activation (the match hoisted out), so each vectorises.
#[inline(always)]
pub(crate) fn apply_slice_body(x: &mut [f32], a: Activation) {
    match a {
        Activation::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::Relu6 => x.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0)),
        Activation::Hardswish => x
            .iter_mut()
            .for_each(|v| *v = *v * (*v + 3.0).clamp(0.0, 6.0) / 6.0),
        Activation::Hardsigmoid => x
            .iter_mut()
            .for_each(|v| *v = (*v + 3.0).clamp(0.0, 6.0) / 6.0),
        Activation::Sigmoid => x.iter_mut().for_each(|v| *v = sigmoid(*v)),
        Activation::Silu => x.iter_mut().for_each(|v| *v *= sigmoid(*v)),
        Activation::Gelu => x
            .iter_mut()
            .for_each(|v| *v = Activation::Gelu.apply_scalar(*v)),
    }
}

crate::isa::multiversion!(pub fn apply_slice(x: &mut [f32], a: Activation) => apply_slice_body);

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

/// `e^x` in f32 without a libm call, so activation loops vectorise: `x = n ln2 + r` with
/// |r| <= ln2/2, a degree-6 polynomial for `e^r` (relative error a few ulp), and `2^n` from the
/// exponent bits. Saturates to 0 / inf outside the f32 range.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.336_55, 88.722_83);
    // round to nearest with the 1.5 * 2^23 trick: plain arithmetic, no libm call
    const SHIFT: f32 = 12_582_912.0;
    let t = x * std::f32::consts::LOG2_E + SHIFT;
    let n = t - SHIFT;
    // Cody-Waite split of ln2 keeps r accurate
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67
                    + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    // n as an integer from t's mantissa bits (no saturating float-to-int cast, which does not
    // vectorise)
    let bits = ((t.to_bits() as i32 - SHIFT.to_bits() as i32 + 127) as u32) << 23;
    p * f32::from_bits(bits)
}

/// erf in f32 (Abramowitz & Stegun 7.1.26: 1.5e-7 in exact arithmetic, below 5e-7 in f32): fast for
/// GELU in the hot path; [`erf`] is the exact reference.
#[inline]
pub fn erf_f32(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let r = 1.0 - poly * exp_f32(-a * a);
    r.copysign(x)
}

/// The error function, through musl's f64 `erf` (libm): the exact reference.
pub fn erf(x: f32) -> f32 {
    erf64(x as f64) as f32
}

fn erf64(x: f64) -> f64 {
    libm::erf(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_known_values() {
        let cases = [
            (0.0, 0.0),
            (0.1, 0.112_462_916_018_284_9),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (3.5, 0.999_999_256_901_627_7),
            (5.0, 0.999_999_999_998_462_5),
        ];
        for (x, want) in cases {
            assert!((erf64(x) - want).abs() < 1e-12, "erf({x})");
            assert!((erf64(-x) + want).abs() < 1e-12, "erf(-{x})");
        }
    }

    #[test]
    fn fast_exp_is_close_to_libm() {
        let mut worst = 0.0f64;
        for i in -8700..=8800 {
            let x = i as f32 / 100.0;
            let (a, b) = (exp_f32(x) as f64, (x as f64).exp());
            worst = worst.max(((a - b) / b).abs());
        }
        assert!(worst < 1e-6, "max relative error {worst}");
        assert!(exp_f32(-200.0) >= 0.0 && exp_f32(-200.0) < 1e-37);
        assert!(exp_f32(100.0) > 1e38, "saturates high, never NaN");
    }

    #[test]
    fn fast_erf_is_close_to_exact() {
        let mut worst = 0.0f64;
        for i in -6000..=6000 {
            let x = i as f32 / 1000.0;
            worst = worst.max((erf_f32(x) as f64 - erf64(x as f64)).abs());
        }
        assert!(worst < 5e-7, "max error {worst}");
    }

    #[test]
    fn every_isa_applies_the_same_activation() {
        let x: Vec<f32> = (-400..400).map(|i| i as f32 / 37.0).collect();
        for a in [
            Activation::Relu,
            Activation::Relu6,
            Activation::Hardswish,
            Activation::Hardsigmoid,
            Activation::Sigmoid,
            Activation::Silu,
            Activation::Gelu,
        ] {
            let want: Vec<f32> = x.iter().map(|&v| a.apply_scalar(v)).collect();
            for isa in crate::isa::available() {
                let mut y = x.clone();
                apply_slice(isa, &mut y, a);
                for (p, q) in y.iter().zip(&want) {
                    assert!(
                        (p - q).abs() <= 1e-6 * (1.0 + q.abs()),
                        "{a:?} {isa:?}: {p} vs {q}"
                    );
                }
            }
        }
    }

    #[test]
    fn activations_match_definitions() {
        assert_eq!(Activation::Relu.apply_scalar(-1.0), 0.0);
        assert_eq!(Activation::Relu6.apply_scalar(7.0), 6.0);
        assert_eq!(Activation::Hardswish.apply_scalar(1.0), 1.0 * 4.0 / 6.0);
        assert_eq!(Activation::Hardsigmoid.apply_scalar(-4.0), 0.0);
        assert!((Activation::Silu.apply_scalar(1.0) - 0.731_058_6).abs() < 1e-6);
        assert!((Activation::Gelu.apply_scalar(1.0) - 0.841_344_7).abs() < 1e-6);
    }
}
