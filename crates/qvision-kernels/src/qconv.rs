//! Quantized 2-D convolution over NCHW u8 activations: s8 per-channel weights, i32 bias,
//! requantized u8 output (an optional ReLU becomes the output clamp). Every group is one
//! [`crate::qgemm`] over the implicit im2col of its input channels, padded with the input zero
//! point.

use crate::conv::Conv2dParams;
use crate::qgemm::{qgemm, PackedQA, QResidual, QRhs, Requant};
use crate::sgemm::{valid_range, Im2colGeom};
use crate::{shape_err, KernelError};

/// Output quantization of a [`PreparedQConv`].
#[derive(Clone, Debug, PartialEq)]
pub struct QConvOutput {
    /// Input zero point.
    pub za: u8,
    /// Per output channel `s_in * s_w[c] / s_out`.
    pub multiplier: Vec<f32>,
    /// Output zero point.
    pub zo: u8,
    /// Clamp the output at the zero point (a fused ReLU).
    pub relu: bool,
}

/// A quantized convolution with packed weights.
#[derive(Debug)]
pub struct PreparedQConv {
    params: Conv2dParams,
    packed: Vec<PackedQA>,
    /// The s8 weights as given (the direct depthwise path reads them).
    weight: Vec<i8>,
    bias: Option<Vec<i32>>,
    out: QConvOutput,
}

impl PreparedQConv {
    pub fn new(
        params: Conv2dParams,
        weight: &[i8],
        bias: Option<&[i32]>,
        out: QConvOutput,
    ) -> Result<Self, KernelError> {
        params.validate()?;
        if weight.len() != params.weight_len() {
            return Err(shape_err(
                "qconv2d",
                format!(
                    "weight has {} values, want {}",
                    weight.len(),
                    params.weight_len()
                ),
            ));
        }
        if out.multiplier.len() != params.out_channels
            || bias.is_some_and(|b| b.len() != params.out_channels)
        {
            return Err(shape_err(
                "qconv2d",
                "bias or multipliers do not match the output channels",
            ));
        }
        let cout_g = params.out_channels / params.groups;
        let k = weight.len() / params.out_channels;
        let packed = weight
            .chunks(cout_g * k)
            .map(|w| PackedQA::new(w, cout_g, k))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PreparedQConv {
            params,
            packed,
            weight: weight.to_vec(),
            bias: bias.map(<[i32]>::to_vec),
            out,
        })
    }

    pub fn params(&self) -> &Conv2dParams {
        &self.params
    }

    /// Run on `n x c x h x w` u8 input; returns the u8 output and its spatial size.
    pub fn run(
        &self,
        x: &[u8],
        n: usize,
        h: usize,
        w: usize,
    ) -> Result<(Vec<u8>, usize, usize), KernelError> {
        self.run_with_residual(x, n, h, w, None)
    }

    /// Run with a quantized residual (shaped like the output) added before the clamp:
    /// `(data, zero_point, s_residual / s_out)`.
    pub fn run_with_residual(
        &self,
        x: &[u8],
        n: usize,
        h: usize,
        w: usize,
        residual: Option<(&[u8], i32, f32)>,
    ) -> Result<(Vec<u8>, usize, usize), KernelError> {
        let p = &self.params;
        if x.len() != n * p.in_channels * h * w {
            return Err(shape_err(
                "qconv2d",
                format!(
                    "input has {} values, want {n}x{}x{h}x{w}",
                    x.len(),
                    p.in_channels
                ),
            ));
        }
        let (oh, ow) = p.output_size(h, w)?;
        let (cin_g, cout_g) = (p.in_channels / p.groups, p.out_channels / p.groups);
        let cols = oh * ow;
        let mut y = vec![0u8; n * p.out_channels * cols];
        if residual.is_some_and(|r| r.0.len() != y.len()) {
            return Err(shape_err("qconv2d", "residual does not match the output"));
        }
        if p.groups == p.in_channels && p.groups > 1 {
            self.depthwise(x, h, w, oh, ow, residual, &mut y);
            return Ok((y, oh, ow));
        }
        for b in 0..n {
            for (g, pa) in self.packed.iter().enumerate() {
                let xg = &x[(b * p.in_channels + g * cin_g) * h * w
                    ..(b * p.in_channels + (g + 1) * cin_g) * h * w];
                let span = (b * p.out_channels + g * cout_g) * cols
                    ..(b * p.out_channels + (g + 1) * cout_g) * cols;
                let res = residual.map(|(d, zero_point, multiplier)| QResidual {
                    data: &d[span.clone()],
                    zero_point,
                    multiplier,
                });
                let yg = &mut y[span];
                let rows = g * cout_g..(g + 1) * cout_g;
                let rq = Requant {
                    za: self.out.za as i32,
                    bias: self.bias.as_ref().map(|v| &v[rows.clone()]),
                    multiplier: &self.out.multiplier[rows],
                    zo: self.out.zo as i32,
                    qmin: if self.out.relu { self.out.zo } else { 0 },
                    qmax: 255,
                    residual: res,
                };
                let rhs = if p.kernel == [1, 1] && p.stride == [1, 1] && p.padding == [0, 0] {
                    QRhs::Dense { b: xg, ldb: cols }
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
                    QRhs::Im2col { x: xg, geom }
                };
                qgemm(pa, rhs, cols, yg, cols, &rq)?;
            }
        }
        Ok((y, oh, ow))
    }
}

impl PreparedQConv {
    /// Direct depthwise convolution (one input channel per group), channels in parallel:
    /// `acc = sum (x - za) * w`, requantized exactly as the GEMM path does.
    #[allow(clippy::too_many_arguments)]
    fn depthwise(
        &self,
        x: &[u8],
        h: usize,
        w: usize,
        oh: usize,
        ow: usize,
        residual: Option<(&[u8], i32, f32)>,
        y: &mut [u8],
    ) {
        use rayon::prelude::*;
        let p = &self.params;
        let [kh, kw] = p.kernel;
        let mult = p.out_channels / p.in_channels;
        let za = self.out.za as i32;
        // whole channels per task, a few thousand outputs each (small planes are many)
        let per_task = (4096 / (oh * ow).max(1)).max(1);
        y.par_chunks_mut(oh * ow)
            .with_min_len(per_task)
            .enumerate()
            .for_each(|(plane, yc)| {
                let (b, oc) = (plane / p.out_channels, plane % p.out_channels);
                let xc = &x[(b * p.in_channels + oc / mult) * h * w..][..h * w];
                let wc = &self.weight[oc * kh * kw..(oc + 1) * kh * kw];
                let rq = Requant {
                    za: 0,
                    bias: self.bias.as_deref(),
                    multiplier: &self.out.multiplier,
                    zo: self.out.zo as i32,
                    qmin: if self.out.relu { self.out.zo } else { 0 },
                    qmax: 255,
                    residual: residual.map(|(d, zero_point, multiplier)| QResidual {
                        data: d,
                        zero_point,
                        multiplier,
                    }),
                };
                let mut acc = vec![0i32; ow];
                for oy in 0..oh {
                    acc.fill(0);
                    for ky in 0..kh {
                        let iy = (oy * p.stride[0] + ky * p.dilation[0]) as isize
                            - p.padding[0] as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let row = &xc[iy as usize * w..(iy as usize + 1) * w];
                        for kx in 0..kw {
                            let wv = wc[ky * kw + kx] as i32;
                            let off = (kx * p.dilation[1]) as isize - p.padding[1] as isize;
                            // outputs whose tap lands inside the row: no per-element bounds test
                            let (lo, hi) = valid_range(ow, p.stride[1], off, w);
                            if p.stride[1] == 1 {
                                let s0 = (lo as isize + off) as usize;
                                for (a, &v) in acc[lo..hi].iter_mut().zip(&row[s0..s0 + (hi - lo)])
                                {
                                    *a += (v as i32 - za) * wv;
                                }
                            } else {
                                for (ox, a) in acc.iter_mut().enumerate().take(hi).skip(lo) {
                                    let v =
                                        row[(ox as isize * p.stride[1] as isize + off) as usize];
                                    *a += (v as i32 - za) * wv;
                                }
                            }
                        }
                    }
                    let base = plane * oh * ow + oy * ow;
                    for (ox, &a) in acc.iter().enumerate() {
                        let r = residual.map(|(d, _, _)| d[base + ox]);
                        yc[oy * ow + ox] = rq.apply(a, oc, 0, r);
                    }
                }
            });
    }
}
