//! Quantized operators (`Op::Q`). Rank-4 u8 activations are NHWC (`[n, h, w, c]`): a pixel's
//! channels are contiguous, which is what the int8 GEMM and the channel-vector kernels want.
//! Other u8 tensors (a linear layer's rows) keep their logical layout. Quantization parameters
//! are `(scale, zero_point)` pairs; u8 `q` stands for `(q - zero_point) * scale`.

use qvision_kernels::pool::Pool2dParams;
use qvision_kernels::{Activation, Conv2dParams};
use serde::{Deserialize, Serialize};

/// `(scale, zero_point)` of a u8 tensor.
pub type Qp = (f32, i32);

/// A quantized operator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum QOp {
    /// `[x f32]` to u8; `nhwc` also moves an NCHW tensor to NHWC.
    Quantize {
        q: Qp,
        nhwc: bool,
    },
    /// `[x f32]` in the blocked `[n, c/16, h, w, 16]` layout to NHWC u8 with `channels`
    /// channels (inserted by the blocked-layout pass in place of `FromBlocked` + `Quantize`).
    QuantizeBlocked {
        q: Qp,
        channels: usize,
    },
    /// `[x u8]` to f32; `nhwc` moves an NHWC tensor back to NCHW.
    Dequantize {
        q: Qp,
        nhwc: bool,
    },
    /// `[x, weight s8 (PyTorch layout), bias i32, weight scales f32, residual u8?]`, NHWC.
    /// ReLU / ReLU6 are clamps; other activations run in real units before requantization.
    Conv2d {
        params: Conv2dParams,
        input: Qp,
        output: Qp,
        residual: Option<Qp>,
        act: Option<Activation>,
    },
    /// `[x (.., in), weight s8 (out x in), bias i32, weight scales f32]`. With `f32_out` the
    /// result is written in f32 (a graph output: no output quantization noise), and `output`
    /// only scales the arithmetic.
    Linear {
        input: Qp,
        output: Qp,
        act: Option<Activation>,
        #[serde(default)]
        f32_out: bool,
    },
    /// `[a, b]`, same shape, requantized sum.
    Add {
        a: Qp,
        b: Qp,
        output: Qp,
        relu: bool,
    },
    /// `[a, b]`: `b` shaped like `a` or one value per (image, channel) of an NHWC `a`.
    Mul {
        a: Qp,
        b: Qp,
        output: Qp,
    },
    /// `[x, scale f32 [C], shift f32 [C]]` NHWC: a per-channel affine map (an unfolded
    /// BatchNorm), optionally followed by ReLU.
    ChannelAffine {
        input: Qp,
        output: Qp,
        relu: bool,
    },
    /// `[x]`: a byte table (an activation, or a requantization).
    Lut {
        table: Vec<u8>,
        /// What the table computes (for export).
        #[serde(default)]
        act: Option<Activation>,
        #[serde(default)]
        input: Option<Qp>,
        #[serde(default)]
        output: Option<Qp>,
    },
    /// `[x]` NHWC; the output keeps the input's parameters.
    MaxPool2d(Pool2dParams),
    AvgPool2d {
        pool: Pool2dParams,
        count_include_pad: bool,
        input: Qp,
        output: Qp,
    },
    AdaptiveAvgPool2d {
        size: [usize; 2],
        input: Qp,
        output: Qp,
    },
    /// `[x...]` NHWC along channels; inputs with other parameters are requantized by table.
    Concat {
        inputs: Vec<Qp>,
        output: Qp,
    },
    /// `[x]` NHWC into channel slices.
    Split {
        sizes: Vec<usize>,
    },
    ChannelShuffle {
        groups: usize,
    },
    /// `[x]` NHWC `[n, h, w, c]` to `[n, c*h*w]` in NCHW order (what `Flatten(1)` gives in fp32).
    Flatten,
    /// `[x]` NHWC viewed as a plain `[n, h, w, c]` tensor (fp32's `permute(0, 2, 3, 1)`), or
    /// back (`to_nhwc`): no data moves.
    Relayout {
        to_nhwc: bool,
    },
    /// `[x (.., c), weight f32, bias f32]`: LayerNorm over the last axis, computed in f32 per
    /// row and requantized.
    LayerNorm {
        eps: f32,
        input: Qp,
        output: Qp,
    },
}

impl QOp {
    pub fn kind(&self) -> &'static str {
        match self {
            QOp::Quantize { .. } | QOp::QuantizeBlocked { .. } => "Quantize",
            QOp::Dequantize { .. } => "Dequantize",
            QOp::Conv2d { .. } => "QConv2d",
            QOp::Linear { .. } => "QLinear",
            QOp::Add { .. } => "QAdd",
            QOp::Mul { .. } => "QMul",
            QOp::Lut { .. } => "QLut",
            QOp::ChannelAffine { .. } => "QBatchNorm2d",
            QOp::MaxPool2d(_) => "QMaxPool2d",
            QOp::AvgPool2d { .. } => "QAvgPool2d",
            QOp::AdaptiveAvgPool2d { .. } => "QAdaptiveAvgPool2d",
            QOp::Concat { .. } => "QConcat",
            QOp::Split { .. } => "QSplit",
            QOp::ChannelShuffle { .. } => "QChannelShuffle",
            QOp::Flatten => "QFlatten",
            QOp::Relayout { .. } => "QRelayout",
            QOp::LayerNorm { .. } => "QLayerNorm",
        }
    }

    /// Output shapes (NHWC for rank-4 u8 values).
    pub fn infer_shapes(&self, ins: &[&[usize]]) -> Result<Vec<Vec<usize>>, String> {
        if ins.is_empty() {
            return Err("expects an input".into());
        }
        let nhwc = |s: &[usize]| -> Result<[usize; 4], String> {
            <[usize; 4]>::try_from(s).map_err(|_| format!("expects an NHWC input, got {s:?}"))
        };
        let x = ins[0];
        Ok(match self {
            QOp::Quantize { nhwc: true, .. } => {
                let [n, c, h, w] = nhwc(x)?;
                vec![vec![n, h, w, c]]
            }
            QOp::QuantizeBlocked { channels, .. } => match x {
                [n, cb, h, w, 16] if cb * 16 >= *channels && *channels + 16 > cb * 16 => {
                    vec![vec![*n, *h, *w, *channels]]
                }
                s => {
                    return Err(format!(
                        "{s:?} is not a blocked tensor of {channels} channels"
                    ))
                }
            },
            QOp::Dequantize { nhwc: true, .. } => {
                let [n, h, w, c] = nhwc(x)?;
                vec![vec![n, c, h, w]]
            }
            QOp::Quantize { .. }
            | QOp::Dequantize { .. }
            | QOp::Add { .. }
            | QOp::Mul { .. }
            | QOp::Lut { .. }
            | QOp::ChannelAffine { .. }
            | QOp::ChannelShuffle { .. }
            | QOp::LayerNorm { .. } => vec![x.to_vec()],
            QOp::Conv2d { params, .. } => {
                let [n, h, w, c] = nhwc(x)?;
                if c != params.in_channels {
                    return Err(format!(
                        "input has {c} channels, conv expects {}",
                        params.in_channels
                    ));
                }
                let (oh, ow) = params.output_size(h, w).map_err(|e| e.to_string())?;
                vec![vec![n, oh, ow, params.out_channels]]
            }
            QOp::Linear { .. } => {
                let w = ins.get(1).ok_or("expects a weight")?;
                if w.len() != 2 || x.last() != Some(&w[1]) {
                    return Err(format!("input {x:?} does not match weight {w:?}"));
                }
                let mut o = x.to_vec();
                *o.last_mut().unwrap_or(&mut 0) = w[0];
                vec![o]
            }
            QOp::MaxPool2d(p) | QOp::AvgPool2d { pool: p, .. } => {
                let [n, h, w, c] = nhwc(x)?;
                let (oh, ow) = p.output_size(h, w).map_err(|e| e.to_string())?;
                vec![vec![n, oh, ow, c]]
            }
            QOp::AdaptiveAvgPool2d { size, .. } => {
                let [n, _, _, c] = nhwc(x)?;
                vec![vec![n, size[0], size[1], c]]
            }
            QOp::Concat { .. } => {
                let [n, h, w, _] = nhwc(x)?;
                let mut c = 0;
                for s in ins {
                    match nhwc(s)? {
                        [a, b, d, k] if (a, b, d) == (n, h, w) => c += k,
                        _ => return Err(format!("{s:?} does not match {x:?} off the channels")),
                    }
                }
                vec![vec![n, h, w, c]]
            }
            QOp::Split { sizes } => {
                let [n, h, w, c] = nhwc(x)?;
                if sizes.iter().sum::<usize>() != c {
                    return Err(format!("sizes {sizes:?} do not split {c} channels"));
                }
                sizes.iter().map(|&k| vec![n, h, w, k]).collect()
            }
            QOp::Flatten => {
                let [n, h, w, c] = nhwc(x)?;
                vec![vec![n, c * h * w]]
            }
            QOp::Relayout { .. } => vec![x.to_vec()],
        })
    }
}
