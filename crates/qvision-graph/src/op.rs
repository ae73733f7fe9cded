//! The op set, with typed attributes, shape inference and MAC counts.

use qvision_kernels::conv::Conv2dParams;
use qvision_kernels::elementwise::{broadcast_shape, BinaryOp};
use qvision_kernels::pool::Pool2dParams;
use qvision_kernels::Activation;

/// An operation and its attributes. Input order is given per variant.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Op {
    /// `[x, weight, bias?, residual?]`, NCHW. `act` is a fused activation and `residual` a fused
    /// residual add (`act(conv(x) + bias + residual)`), both set by [`crate::passes`].
    Conv2d {
        params: Conv2dParams,
        act: Option<Activation>,
        residual: bool,
    },
    /// Inference BatchNorm2d: `[x, weight, bias, running_mean, running_var]`.
    BatchNorm2d {
        eps: f32,
    },
    /// `[x, weight (out x in), bias?]` over the last axis.
    Linear {
        act: Option<Activation>,
    },
    /// `[x]`.
    Act(Activation),
    MaxPool2d(Pool2dParams),
    AvgPool2d {
        pool: Pool2dParams,
        count_include_pad: bool,
    },
    AdaptiveAvgPool2d {
        output: [usize; 2],
    },
    /// `[a, b]` with NumPy broadcasting.
    Binary(BinaryOp),
    /// `[x...]` along `axis`.
    Concat {
        axis: usize,
    },
    /// `[x1, .., xk, weight, bias, running_mean, running_var]`: concatenation along the channels
    /// (axis 1, NCHW or blocked), inference BatchNorm and an activation in one pass
    /// (DenseNet's `relu(norm(cat(features)))`). Made by [`crate::passes::fuse_concat_norm`].
    ConcatNorm {
        eps: f32,
        act: Option<Activation>,
    },
    /// `[x1, .., xk, weight, bias, running_mean, running_var, conv_weight, conv_bias?]` (the conv
    /// bias when `bias`), blocked:
    /// a 1x1 `ConvBlocked` over a `ConcatNorm` it alone reads. The normalised concatenation is
    /// staged per pixel tile and never written out. Made by
    /// [`crate::passes::fuse_concat_norm_conv`] after the blocked-layout pass.
    ConcatNormConv {
        eps: f32,
        norm_act: Option<Activation>,
        params: Conv2dParams,
        act: Option<Activation>,
        bias: bool,
    },
    /// `[x]` into `sizes.len()` outputs along `axis`.
    Split {
        axis: usize,
        sizes: Vec<usize>,
    },
    /// `[x]`: merge dims `start..` into one.
    Flatten {
        start: usize,
    },
    /// `[x]`: new shape; `0` keeps the input dim, `-1` is inferred (ONNX rules).
    Reshape {
        shape: Vec<i64>,
    },
    /// `[x]`: output dim `i` is input dim `perm[i]`.
    Permute {
        perm: Vec<usize>,
    },
    /// `[x, weight, bias]`, normalising the last axis.
    LayerNorm {
        eps: f32,
    },
    /// `[x, weight, bias]`, NCHW (or blocked): LayerNorm over the channels of each pixel
    /// (torchvision's `LayerNorm2d`). Made by [`crate::passes::sink_channels_last`] from a
    /// LayerNorm between channels-last permutes.
    LayerNorm2d {
        eps: f32,
    },
    /// `[x]`, over the last axis.
    Softmax,
    /// `[x]`: identity at inference.
    Dropout {
        p: f32,
    },
    /// `[x]` NCHW: ShuffleNet's channel shuffle.
    ChannelShuffle {
        groups: usize,
    },
    /// `[x]` NCHW to the blocked layout `[n, ceil(c/16), h, w, 16]` (zero-padded channels).
    /// Inserted by [`crate::passes::to_blocked_layout`].
    ToBlocked,
    /// `[x]` blocked back to NCHW with `channels` channels.
    FromBlocked {
        channels: usize,
    },
    /// A quantized operator (u8 activations).
    Q(crate::qop::QOp),
    /// Conv2d on blocked input and output: `[x, weight, bias?, residual?]` as for `Conv2d`.
    ConvBlocked {
        params: Conv2dParams,
        act: Option<Activation>,
        residual: bool,
    },
    /// `[x, dw_weight, dw_bias?, weight, bias?, residual?]`, blocked: a depthwise conv (`dw`,
    /// then `dw_act`) and the 1x1 conv that alone reads it (`params`; the residual is added
    /// before `act`), MobileNetV2's `project(relu6(dw(x)))`. The depthwise output is staged
    /// per few rows and never written out. Made by [`crate::passes::fuse_dw_project`] after the
    /// blocked-layout pass.
    DwProjectConv {
        dw: Conv2dParams,
        dw_act: Option<Activation>,
        dw_bias: bool,
        params: Conv2dParams,
        act: Option<Activation>,
        bias: bool,
        residual: bool,
    },
}

impl Op {
    /// A short op-type name (for errors, reports and the ONNX mapping).
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Conv2d { .. } => "Conv2d",
            Op::BatchNorm2d { .. } => "BatchNorm2d",
            Op::Linear { .. } => "Linear",
            Op::Act(a) => match a {
                Activation::Relu => "ReLU",
                Activation::Relu6 => "ReLU6",
                Activation::Hardswish => "Hardswish",
                Activation::Hardsigmoid => "Hardsigmoid",
                Activation::Sigmoid => "Sigmoid",
                Activation::Silu => "SiLU",
                Activation::Gelu => "GELU",
            },
            Op::MaxPool2d(_) => "MaxPool2d",
            Op::AvgPool2d { .. } => "AvgPool2d",
            Op::AdaptiveAvgPool2d { .. } => "AdaptiveAvgPool2d",
            Op::Binary(b) => match b {
                BinaryOp::Add => "Add",
                BinaryOp::Mul => "Mul",
                BinaryOp::Sub => "Sub",
                BinaryOp::Div => "Div",
            },
            Op::Concat { .. } => "Concat",
            Op::ConcatNorm { .. } => "ConcatNorm",
            Op::ConcatNormConv { .. } => "ConcatNormConv",
            Op::Split { .. } => "Split",
            Op::Flatten { .. } => "Flatten",
            Op::Reshape { .. } => "Reshape",
            Op::Permute { .. } => "Permute",
            Op::LayerNorm { .. } => "LayerNorm",
            Op::LayerNorm2d { .. } => "LayerNorm2d",
            Op::Softmax => "Softmax",
            Op::Dropout { .. } => "Dropout",
            Op::ChannelShuffle { .. } => "ChannelShuffle",
            Op::ToBlocked => "ToBlocked",
            Op::FromBlocked { .. } => "FromBlocked",
            Op::ConvBlocked { .. } => "ConvBlocked",
            Op::DwProjectConv { .. } => "DwProjectConv",
            Op::Q(q) => q.kind(),
        }
    }

    /// The fewest inputs and the number of outputs a node of this op needs (what every kernel
    /// and pass may index without checking; [`crate::Graph::validate`] enforces it). Int8 ops
    /// check their own arity when they are prepared.
    pub fn arity(&self) -> (usize, usize) {
        match self {
            Op::Conv2d { residual, .. } | Op::ConvBlocked { residual, .. } => {
                (2 + *residual as usize, 1)
            }
            Op::BatchNorm2d { .. } => (5, 1),
            Op::Linear { .. } | Op::Binary(_) => (2, 1),
            Op::LayerNorm { .. } | Op::LayerNorm2d { .. } => (3, 1),
            Op::ConcatNorm { .. } => (5, 1),
            Op::ConcatNormConv { bias, .. } => (6 + *bias as usize, 1),
            Op::DwProjectConv {
                dw_bias,
                bias,
                residual,
                ..
            } => (
                3 + *dw_bias as usize + *bias as usize + *residual as usize,
                1,
            ),
            Op::Split { sizes, .. } => (1, sizes.len()),
            _ => (1, 1),
        }
    }

    /// Output shapes for the given input shapes.
    pub fn infer_shapes(&self, ins: &[&[usize]]) -> Result<Vec<Vec<usize>>, String> {
        let want = |n: usize| -> Result<(), String> {
            if ins.len() < n {
                Err(format!("expects {n} inputs, got {}", ins.len()))
            } else {
                Ok(())
            }
        };
        let nchw = |s: &[usize]| -> Result<[usize; 4], String> {
            <[usize; 4]>::try_from(s).map_err(|_| format!("expects an NCHW input, got shape {s:?}"))
        };
        Ok(match self {
            Op::Conv2d { params, .. } => {
                want(2)?;
                let [n, c, h, w] = nchw(ins[0])?;
                if c != params.in_channels {
                    return Err(format!(
                        "input has {c} channels, conv expects {}",
                        params.in_channels
                    ));
                }
                let (oh, ow) = params.output_size(h, w).map_err(|e| e.to_string())?;
                vec![vec![n, params.out_channels, oh, ow]]
            }
            Op::BatchNorm2d { .. } => {
                want(5)?;
                let s = ins[0];
                if s.len() < 2 || ins[1] != [s[1]] {
                    return Err(format!(
                        "input {s:?} does not match {} channels",
                        ins[1].first().copied().unwrap_or(0)
                    ));
                }
                vec![s.to_vec()]
            }
            Op::Linear { .. } => {
                want(2)?;
                let s = ins[0];
                let w = ins[1];
                if w.len() != 2 || s.last() != Some(&w[1]) {
                    return Err(format!("input {s:?} does not match weight {w:?}"));
                }
                let mut o = s.to_vec();
                *o.last_mut().unwrap_or(&mut 0) = w[0];
                vec![o]
            }
            Op::ChannelShuffle { groups } => {
                want(1)?;
                let [_, c, _, _] = nchw(ins[0])?;
                if *groups == 0 || c % groups != 0 {
                    return Err(format!("{c} channels do not split into {groups} groups"));
                }
                vec![ins[0].to_vec()]
            }
            Op::Act(_) | Op::Softmax | Op::Dropout { .. } => {
                want(1)?;
                vec![ins[0].to_vec()]
            }
            Op::LayerNorm { .. } => {
                want(3)?;
                if ins[0].last() != ins[1].first() || ins[1].len() != 1 {
                    return Err(format!(
                        "input {:?} does not match normalised shape {:?}",
                        ins[0], ins[1]
                    ));
                }
                vec![ins[0].to_vec()]
            }
            Op::LayerNorm2d { .. } => {
                want(3)?;
                let s = ins[0];
                let c = ins[1].first().copied().unwrap_or(0);
                let ok = match s {
                    [_, cc, _, _] => *cc == c,
                    [_, cb, _, _, 16] => *cb == c.div_ceil(16),
                    _ => false,
                };
                if !ok || ins[1].len() != 1 || ins[2] != ins[1] {
                    return Err(format!(
                        "input {s:?} does not match {c} normalised channels"
                    ));
                }
                vec![s.to_vec()]
            }
            Op::MaxPool2d(p) | Op::AvgPool2d { pool: p, .. } => {
                want(1)?;
                let s = ins[0];
                if s.len() == 5 {
                    let (oh, ow) = p.output_size(s[2], s[3]).map_err(|e| e.to_string())?;
                    return Ok(vec![vec![s[0], s[1], oh, ow, s[4]]]);
                }
                let [n, c, h, w] = nchw(s)?;
                let (oh, ow) = p.output_size(h, w).map_err(|e| e.to_string())?;
                vec![vec![n, c, oh, ow]]
            }
            Op::AdaptiveAvgPool2d { output } => {
                want(1)?;
                let s = ins[0];
                if s.len() == 5 {
                    return Ok(vec![vec![s[0], s[1], output[0], output[1], s[4]]]);
                }
                let [n, c, _, _] = nchw(s)?;
                vec![vec![n, c, output[0], output[1]]]
            }
            Op::Q(q) => q.infer_shapes(ins)?,
            Op::ToBlocked => {
                want(1)?;
                let [n, c, h, w] = nchw(ins[0])?;
                vec![vec![n, c.div_ceil(16), h, w, 16]]
            }
            Op::FromBlocked { channels } => {
                want(1)?;
                match ins[0] {
                    [n, cb, h, w, 16] if cb * 16 >= *channels && *channels + 16 > cb * 16 => {
                        vec![vec![*n, *channels, *h, *w]]
                    }
                    s => {
                        return Err(format!(
                            "{s:?} is not a blocked tensor of {channels} channels"
                        ))
                    }
                }
            }
            Op::ConvBlocked { params, .. } => {
                want(2)?;
                match ins[0] {
                    [n, c, h, w]
                        if *c == params.in_channels
                            && params.in_channels < 16
                            && params.groups == 1 =>
                    {
                        let (oh, ow) = params.output_size(*h, *w).map_err(|e| e.to_string())?;
                        vec![vec![*n, params.out_channels.div_ceil(16), oh, ow, 16]]
                    }
                    [n, cb, h, w, 16] if *cb == params.in_channels.div_ceil(16) => {
                        let (oh, ow) = params.output_size(*h, *w).map_err(|e| e.to_string())?;
                        vec![vec![*n, params.out_channels.div_ceil(16), oh, ow, 16]]
                    }
                    s => {
                        return Err(format!(
                            "{s:?} is not a blocked input of {} channels",
                            params.in_channels
                        ))
                    }
                }
            }
            Op::Binary(_) => {
                want(2)?;
                vec![broadcast_shape(ins[0], ins[1]).map_err(|e| e.to_string())?]
            }
            Op::Concat { axis } => {
                want(1)?;
                let mut s = ins[0].to_vec();
                if *axis >= s.len() {
                    return Err(format!("axis {axis} out of range for {s:?}"));
                }
                s[*axis] = 0;
                for i in ins {
                    if i.len() != s.len()
                        || i.iter()
                            .zip(&s)
                            .enumerate()
                            .any(|(d, (a, b))| d != *axis && a != b)
                    {
                        return Err(format!(
                            "shape {i:?} does not match {:?} off axis {axis}",
                            ins[0]
                        ));
                    }
                    s[*axis] += i[*axis];
                }
                vec![s]
            }
            Op::ConcatNorm { .. } => {
                want(5)?;
                let k = ins.len() - 4;
                let s = Op::Concat { axis: 1 }.infer_shapes(&ins[..k])?.remove(0);
                let c = ins[k].first().copied().unwrap_or(0);
                let ok = match s[..] {
                    [_, cc, _, _] => cc == c,
                    [_, cb, _, _, 16] => cb == c.div_ceil(16),
                    _ => false,
                };
                if !ok || ins[k..].iter().any(|p| *p != [c]) {
                    return Err(format!(
                        "concatenation {s:?} does not match {c} normalised channels"
                    ));
                }
                vec![s]
            }
            Op::ConcatNormConv {
                eps,
                norm_act,
                params,
                bias,
                ..
            } => {
                want(6 + *bias as usize)?;
                let k = ins.len() - 1 - *bias as usize;
                let norm = Op::ConcatNorm {
                    eps: *eps,
                    act: *norm_act,
                };
                let s = norm.infer_shapes(&ins[..k])?.remove(0);
                let conv = Op::ConvBlocked {
                    params: *params,
                    act: None,
                    residual: false,
                };
                let mut conv_ins: Vec<&[usize]> = vec![&s];
                conv_ins.extend_from_slice(&ins[k..]);
                conv.infer_shapes(&conv_ins)?
            }
            Op::DwProjectConv {
                dw,
                params,
                dw_bias,
                ..
            } => {
                want(self.arity().0)?;
                let conv = |params: Conv2dParams| Op::ConvBlocked {
                    params,
                    act: None,
                    residual: false,
                };
                let k = 2 + *dw_bias as usize;
                let mid = conv(*dw).infer_shapes(&ins[..k])?.remove(0);
                let mut pw_ins: Vec<&[usize]> = vec![&mid];
                pw_ins.extend_from_slice(&ins[k..]);
                conv(*params).infer_shapes(&pw_ins)?
            }
            Op::Split { axis, sizes } => {
                want(1)?;
                let s = ins[0];
                if *axis >= s.len() || sizes.iter().sum::<usize>() != s[*axis] {
                    return Err(format!("sizes {sizes:?} do not split axis {axis} of {s:?}"));
                }
                sizes
                    .iter()
                    .map(|&k| {
                        let mut o = s.to_vec();
                        o[*axis] = k;
                        o
                    })
                    .collect()
            }
            Op::Flatten { start } => {
                want(1)?;
                let s = ins[0];
                if *start > s.len() {
                    return Err(format!("start dim {start} out of range for {s:?}"));
                }
                let mut o = s[..*start].to_vec();
                o.push(s[*start..].iter().product());
                vec![o]
            }
            Op::Reshape { shape } => {
                want(1)?;
                vec![reshape_target(ins[0], shape)?]
            }
            Op::Permute { perm } => {
                want(1)?;
                let s = ins[0];
                if perm.len() != s.len() || perm.iter().any(|&p| p >= s.len()) {
                    return Err(format!("{perm:?} does not permute {s:?}"));
                }
                vec![perm.iter().map(|&p| s[p]).collect()]
            }
        })
    }

    /// Multiply-accumulates for one run with these input and output shapes.
    pub fn macs(&self, ins: &[&[usize]], outs: &[Vec<usize>]) -> u64 {
        match self {
            Op::DwProjectConv { dw, params, .. } => {
                let [n, _, oh, ow, _] =
                    <[usize; 5]>::try_from(outs[0].as_slice()).unwrap_or([0; 5]);
                let per_px = dw.out_channels * dw.kernel[0] * dw.kernel[1]
                    + params.out_channels * params.in_channels;
                (n * oh * ow * per_px) as u64
            }
            Op::ConvBlocked { params, .. } | Op::ConcatNormConv { params, .. } => {
                let [n, _, oh, ow, _] =
                    <[usize; 5]>::try_from(outs[0].as_slice()).unwrap_or([0; 5]);
                (n * params.out_channels
                    * oh
                    * ow
                    * (params.in_channels / params.groups)
                    * params.kernel[0]
                    * params.kernel[1]) as u64
            }
            Op::Conv2d { params, .. } | Op::Q(crate::qop::QOp::Conv2d { params, .. }) => {
                let out: usize = outs[0].iter().product();
                (out * (params.in_channels / params.groups) * params.kernel[0] * params.kernel[1])
                    as u64
            }
            Op::Linear { .. } | Op::Q(crate::qop::QOp::Linear { .. }) => {
                let out: usize = outs[0].iter().product();
                (out * ins[1][1]) as u64
            }
            _ => 0,
        }
    }
}

/// Resolve an ONNX-style reshape target (`0` copies, one `-1` is inferred).
pub fn reshape_target(input: &[usize], shape: &[i64]) -> Result<Vec<usize>, String> {
    let total: usize = input.iter().product();
    let mut out = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &d) in shape.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 => out.push(
                *input
                    .get(i)
                    .ok_or_else(|| format!("dim {i} of {input:?} does not exist"))?,
            ),
            d if d > 0 => out.push(d as usize),
            _ => return Err(format!("invalid reshape target {shape:?}")),
        }
    }
    let known: usize = out.iter().product();
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!("cannot reshape {input:?} to {shape:?}"));
        }
        out[i] = total / known;
    }
    if out.iter().product::<usize>() != total {
        return Err(format!("cannot reshape {input:?} to {shape:?}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_rules() {
        assert_eq!(reshape_target(&[2, 3, 4], &[0, -1]).unwrap(), vec![2, 12]);
        assert!(reshape_target(&[2, 3, 4], &[5, -1]).is_err());
        assert!(reshape_target(&[2, 3], &[-1, -1]).is_err());
    }

    #[test]
    fn conv_shape_and_macs() {
        let p = Conv2dParams {
            in_channels: 3,
            out_channels: 64,
            kernel: [7, 7],
            stride: [2, 2],
            padding: [3, 3],
            dilation: [1, 1],
            groups: 1,
        };
        let op = Op::Conv2d {
            params: p,
            act: None,
            residual: false,
        };
        let outs = op
            .infer_shapes(&[&[1, 3, 224, 224], &[64, 3, 7, 7]])
            .unwrap();
        assert_eq!(outs[0], vec![1, 64, 112, 112]);
        assert_eq!(op.macs(&[&[1, 3, 224, 224]], &outs), 118_013_952);
        assert!(op
            .infer_shapes(&[&[1, 4, 224, 224], &[64, 3, 7, 7]])
            .is_err());
    }
}
