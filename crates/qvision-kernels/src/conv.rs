//! 2-D convolution over NCHW f32 tensors.
//!
//! Two paths, chosen once when the weights are prepared:
//! - depthwise (one input channel per group): [`crate::depthwise`], a direct SIMD loop;
//! - everything else: [`crate::sgemm`] per group, reading a 1x1 stride-1 input in place and
//!   any other geometry through an implicit im2col (never materialised).
//!
//! Bias, residual and activation are fused into the store.
//! [`crate::reference::conv2d`] is the scalar reference for both.

use crate::act::Activation;
use crate::depthwise::depthwise;
use crate::sgemm::{sgemm, Epilogue, Im2colGeom, PackedA, Rhs};
use crate::{shape_err, KernelError};
use qvision_tensor::pool;
use rayon::prelude::*;

/// Geometry of a 2-D convolution, as `torch.nn.Conv2d` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Conv2dParams {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

impl Conv2dParams {
    /// Output spatial size for an input of `h x w`, or an error when the kernel does not fit.
    pub fn output_size(&self, h: usize, w: usize) -> Result<(usize, usize), KernelError> {
        let dim = |i: usize, size: usize| -> Result<usize, KernelError> {
            let eff = self.dilation[i] * (self.kernel[i] - 1) + 1;
            let padded = size + 2 * self.padding[i];
            if padded < eff || self.stride[i] == 0 {
                return Err(shape_err(
                    "conv2d",
                    format!(
                        "kernel {:?} does not fit input {h}x{w} with padding {:?}",
                        self.kernel, self.padding
                    ),
                ));
            }
            Ok((padded - eff) / self.stride[i] + 1)
        };
        Ok((dim(0, h)?, dim(1, w)?))
    }

    /// Number of weight values: `out x in/groups x kh x kw`.
    pub fn weight_len(&self) -> usize {
        self.out_channels * (self.in_channels / self.groups) * self.kernel[0] * self.kernel[1]
    }

    pub fn validate(&self) -> Result<(), KernelError> {
        if self.groups == 0
            || !self.in_channels.is_multiple_of(self.groups)
            || !self.out_channels.is_multiple_of(self.groups)
            || self.kernel.contains(&0)
            || self.stride.contains(&0)
            || self.dilation.contains(&0)
        {
            return Err(shape_err("conv2d", format!("invalid geometry {self:?}")));
        }
        Ok(())
    }

    fn is_depthwise(&self) -> bool {
        self.in_channels == self.groups
    }

    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.padding == [0, 0]
    }
}

#[derive(Debug)]
enum Path {
    Depthwise {
        weight: Vec<f32>,
    },
    /// qvision's sgemm: B read in place, bias/residual/activation fused into the store.
    Direct {
        packed: Vec<PackedA>,
    },
}

/// A convolution with its weights prepared (packed) once, for repeated runs.
#[derive(Debug)]
pub struct PreparedConv {
    params: Conv2dParams,
    path: Path,
    bias: Option<Vec<f32>>,
    act: Option<Activation>,
}

impl PreparedConv {
    pub fn new(
        params: Conv2dParams,
        weight: &[f32],
        bias: Option<&[f32]>,
        act: Option<Activation>,
    ) -> Result<Self, KernelError> {
        params.validate()?;
        if weight.len() != params.weight_len() {
            return Err(shape_err(
                "conv2d",
                format!(
                    "weight has {} values, geometry {params:?} needs {}",
                    weight.len(),
                    params.weight_len()
                ),
            ));
        }
        if let Some(b) = bias {
            if b.len() != params.out_channels {
                return Err(shape_err(
                    "conv2d",
                    format!("bias has {} values, want {}", b.len(), params.out_channels),
                ));
            }
        }
        let path = if params.is_depthwise() {
            Path::Depthwise {
                weight: weight.to_vec(),
            }
        } else {
            let cout_g = params.out_channels / params.groups;
            let k = weight.len() / params.out_channels;
            let packed = weight
                .chunks(cout_g * k)
                .map(|w| PackedA::new(w, cout_g, k))
                .collect::<Result<Vec<_>, _>>()?;
            Path::Direct { packed }
        };
        Ok(PreparedConv {
            params,
            path,
            bias: bias.map(|b| b.to_vec()),
            act,
        })
    }

    pub fn params(&self) -> &Conv2dParams {
        &self.params
    }

    /// Run on an `n x c x h x w` input; returns the output and its spatial size.
    pub fn run(
        &self,
        input: &[f32],
        n: usize,
        h: usize,
        w: usize,
    ) -> Result<(Vec<f32>, usize, usize), KernelError> {
        self.run_with(input, n, h, w, None, self.act)
    }

    /// The activation this conv was prepared with.
    pub fn activation(&self) -> Option<Activation> {
        self.act
    }

    /// Run with an explicit epilogue: `act(conv(x) + bias + residual)`, where `residual` has the
    /// output's shape (the fused tail of a ResNet block).
    pub fn run_with(
        &self,
        input: &[f32],
        n: usize,
        h: usize,
        w: usize,
        residual: Option<&[f32]>,
        act: Option<Activation>,
    ) -> Result<(Vec<f32>, usize, usize), KernelError> {
        let p = &self.params;
        if input.len() != n * p.in_channels * h * w {
            return Err(shape_err(
                "conv2d",
                format!(
                    "input has {} values, want {n}x{}x{h}x{w}",
                    input.len(),
                    p.in_channels
                ),
            ));
        }
        let (oh, ow) = p.output_size(h, w)?;
        let in_img = p.in_channels * h * w;
        let out_img = p.out_channels * oh * ow;
        if let Some(r) = residual {
            if r.len() != n * out_img {
                return Err(shape_err(
                    "conv2d",
                    format!("residual has {} values, output {}", r.len(), n * out_img),
                ));
            }
        }
        let mut out = pool::take(n * out_img);
        for (img, (x, y)) in input
            .chunks(in_img.max(1))
            .zip(out.chunks_mut(out_img.max(1)))
            .enumerate()
        {
            match &self.path {
                Path::Depthwise { weight } => {
                    // the activation fuses into the depthwise loop unless a residual comes first
                    let dw_act = if residual.is_none() { act } else { None };
                    depthwise(p, weight, self.bias.as_deref(), dw_act, x, h, w, y, oh, ow)
                }
                Path::Direct { packed } => {
                    let res = residual.map(|r| &r[img * out_img..(img + 1) * out_img]);
                    self.direct_image(packed, x, h, w, y, oh, ow, res, act)?
                }
            }
        }
        // a depthwise conv with a residual applies both after the loop
        if matches!(self.path, Path::Depthwise { .. }) && residual.is_some() {
            epilogue(&mut out, residual, act);
        }
        Ok((out, oh, ow))
    }

    #[allow(clippy::too_many_arguments)]
    fn direct_image(
        &self,
        packed: &[PackedA],
        x: &[f32],
        h: usize,
        w: usize,
        y: &mut [f32],
        oh: usize,
        ow: usize,
        residual: Option<&[f32]>,
        act: Option<Activation>,
    ) -> Result<(), KernelError> {
        let p = &self.params;
        let cin_g = p.in_channels / p.groups;
        let cout_g = p.out_channels / p.groups;
        let n_cols = oh * ow;
        let run_group = |g: usize, pa: &PackedA, yg: &mut [f32]| {
            let xg = &x[g * cin_g * h * w..(g + 1) * cin_g * h * w];
            let ep = Epilogue {
                bias: self.bias.as_ref().map(|b| &b[g * cout_g..(g + 1) * cout_g]),
                residual: residual.map(|r| &r[g * cout_g * n_cols..(g + 1) * cout_g * n_cols]),
                act,
            };
            let rhs = if p.is_pointwise() && p.stride == [1, 1] {
                Rhs::Dense { b: xg, ldb: n_cols }
            } else {
                let geom = Im2colGeom {
                    c: cin_g,
                    h,
                    w,
                    oh,
                    ow,
                    kernel: p.kernel,
                    stride: p.stride,
                    padding: p.padding,
                    dilation: p.dilation,
                };
                Rhs::Im2col { x: xg, geom }
            };
            sgemm(pa, rhs, n_cols, yg, n_cols, ep)
        };
        let y = &mut y[..p.out_channels * n_cols];
        if packed.len() == 1 {
            return run_group(0, &packed[0], y);
        }
        // Grouped: groups in parallel (each GEMM is small).
        packed
            .par_iter()
            .zip(y.par_chunks_mut(cout_g * n_cols))
            .enumerate()
            .try_for_each(|(g, (pa, yg))| run_group(g, pa, yg))
    }
}

/// `out = act(out + residual)`, in one parallel pass.
fn epilogue(out: &mut [f32], residual: Option<&[f32]>, act: Option<Activation>) {
    const CHUNK: usize = 1 << 13;
    match (residual, act) {
        (None, None) => {}
        (None, Some(a)) => a.apply(out),
        (Some(r), act) => out
            .par_chunks_mut(CHUNK)
            .zip(r.par_chunks(CHUNK))
            .for_each(|(o, r)| match act {
                Some(a) => o
                    .iter_mut()
                    .zip(r)
                    .for_each(|(o, r)| *o = a.apply_scalar(*o + r)),
                None => o.iter_mut().zip(r).for_each(|(o, r)| *o += r),
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use proptest::prelude::*;

    fn geometry() -> impl Strategy<Value = (Conv2dParams, usize, usize, usize)> {
        (
            (1usize..4, 1usize..4, 1usize..4, 1usize..5, 1usize..5),
            (
                1usize..3,
                1usize..3,
                0usize..3,
                0usize..3,
                1usize..3,
                1usize..3,
            ),
            (1usize..11, 1usize..11, 1usize..3, 0usize..3),
        )
            .prop_map(
                |((g, cin_g, cout_g, kh, kw), (sh, sw, ph, pw, dh, dw), (h, w, n, kind))| {
                    // kind 0: general grouped, 1: depthwise (cin_g = 1), 2: pointwise
                    let (cin_g, kh, kw, ph, pw) = match kind {
                        1 => (1, kh, kw, ph, pw),
                        2 => (cin_g, 1, 1, 0, 0),
                        _ => (cin_g, kh, kw, ph, pw),
                    };
                    let p = Conv2dParams {
                        in_channels: g * cin_g,
                        out_channels: g * cout_g,
                        kernel: [kh, kw],
                        stride: [sh, sw],
                        padding: [ph.min(kh - 1), pw.min(kw - 1)],
                        dilation: [dh, dw],
                        groups: g,
                    };
                    // the dilated kernel must fit the padded input
                    let h = h.max((dh * (kh - 1) + 1).saturating_sub(2 * p.padding[0]));
                    let w = w.max((dw * (kw - 1) + 1).saturating_sub(2 * p.padding[1]));
                    (p, h.max(1), w.max(1), n)
                },
            )
    }

    proptest! {
        #[test]
        fn conv_matches_reference((p, h, w, n) in geometry(), seed in any::<u64>(), with_bias in any::<bool>(), relu in any::<bool>()) {
            let x = reference::pseudo_random(n * p.in_channels * h * w, seed);
            let wt = reference::pseudo_random(p.weight_len(), seed ^ 7);
            let b = reference::pseudo_random(p.out_channels, seed ^ 9);
            let bias = with_bias.then_some(b.as_slice());
            let act = relu.then_some(Activation::Relu);
            let conv = PreparedConv::new(p, &wt, bias, act).unwrap();
            let (got, oh, ow) = conv.run(&x, n, h, w).unwrap();
            // the fused residual epilogue equals conv, add, act
            let res = reference::pseudo_random(got.len(), seed ^ 11);
            let (fused, _, _) = conv.run_with(&x, n, h, w, Some(&res), act).unwrap();
            let (plain, _, _) = conv.run_with(&x, n, h, w, None, None).unwrap();
            for ((f, p), r) in fused.iter().zip(&plain).zip(&res) {
                let want = act.map_or(p + r, |a| a.apply_scalar(p + r));
                prop_assert!((f - want).abs() <= 1e-6 * (1.0 + want.abs()));
            }
            let (mut want, roh, row) = reference::conv2d(&p, &x, n, h, w, &wt, bias).unwrap();
            if let Some(a) = act { want.iter_mut().for_each(|v| *v = a.apply_scalar(*v)); }
            prop_assert_eq!((oh, ow), (roh, row));
            for (a, b) in got.iter().zip(&want) {
                prop_assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn kernel_larger_than_input_is_an_error() {
        let p = Conv2dParams {
            in_channels: 1,
            out_channels: 1,
            kernel: [5, 5],
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
        };
        let conv = PreparedConv::new(p, &[0.0; 25], None, None).unwrap();
        assert!(conv.run(&[0.0; 9], 1, 3, 3).is_err());
    }

    #[test]
    fn wrong_weight_size_is_an_error() {
        let p = Conv2dParams {
            in_channels: 2,
            out_channels: 1,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
            dilation: [1, 1],
            groups: 1,
        };
        assert!(PreparedConv::new(p, &[0.0; 9], None, None).is_err());
    }
}
