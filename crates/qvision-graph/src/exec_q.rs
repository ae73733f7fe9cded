//! Preparing and running the quantized operators ([`QOp`]) of a converted graph.

use crate::ir::{Graph, Node};
use crate::qop::{QOp, Qp};
use crate::GraphError;
use qvision_kernels::qnhwc::{PreparedQConv, QConvOutput};
use qvision_kernels::qops::{self, QBinary, Q};
use qvision_kernels::Conv2dParams;
use qvision_tensor::Tensor;

/// What a quantized node keeps between runs.
pub(crate) enum QPrepared {
    None,
    /// Conv or linear layer with packed weights.
    Conv(Box<PreparedQConv>),
    /// A byte table per input (`None`: copy as is).
    Tables(Vec<Option<Box<[u8; 256]>>>),
}

fn q(p: Qp) -> Q {
    Q::new(p.0, p.1)
}

pub(crate) fn prepare(g: &Graph, n: &Node, op: &QOp) -> Result<QPrepared, GraphError> {
    let err = |e: String| GraphError::node(&n.name, op.kind(), e);
    let conv = |params: Conv2dParams, input: Qp, output: Qp, act| {
        let w = g
            .tensor(n.inputs[1])?
            .as_i8()
            .map_err(|e| err(e.to_string()))?;
        let b = g
            .tensor(n.inputs[2])?
            .as_i32()
            .map_err(|e| err(e.to_string()))?;
        let sw = g
            .tensor(n.inputs[3])?
            .as_f32()
            .map_err(|e| err(e.to_string()))?;
        if !(0..=255).contains(&input.1) || !(0..=255).contains(&output.1) {
            return Err(err("zero points must lie in 0..=255".into()));
        }
        let out = QConvOutput {
            za: input.1 as u8,
            multiplier: sw.iter().map(|s| input.0 * s / output.0).collect(),
            zo: output.1 as u8,
            out_scale: output.0,
            act,
        };
        PreparedQConv::new(params, w, Some(b), out)
            .map(|c| QPrepared::Conv(Box::new(c)))
            .map_err(|e| GraphError::from_kernel(&n.name, op.kind(), e))
    };
    Ok(match op {
        QOp::Conv2d {
            params,
            input,
            output,
            act,
            ..
        } => conv(*params, *input, *output, *act)?,
        QOp::Linear {
            input, output, act, ..
        } => {
            let shape = g.tensor(n.inputs[1])?.shape().to_vec();
            let [out, inn] = <[usize; 2]>::try_from(shape.as_slice())
                .map_err(|_| err(format!("weight shape {shape:?} is not 2-D")))?;
            let params = Conv2dParams {
                in_channels: inn,
                out_channels: out,
                kernel: [1, 1],
                stride: [1, 1],
                padding: [0, 0],
                dilation: [1, 1],
                groups: 1,
            };
            conv(params, *input, *output, *act)?
        }
        QOp::Lut { table, .. } => {
            let t: [u8; 256] = table
                .as_slice()
                .try_into()
                .map_err(|_| err(format!("table has {} entries, want 256", table.len())))?;
            QPrepared::Tables(vec![Some(Box::new(t))])
        }
        QOp::Concat { inputs, output } => QPrepared::Tables(
            inputs
                .iter()
                .map(|&i| {
                    (i != *output).then(|| Box::new(qops::requant_table(q(i), q(*output), None)))
                })
                .collect(),
        ),
        _ => QPrepared::None,
    })
}

fn u8s(t: &Tensor) -> Result<&[u8], String> {
    t.as_u8().map_err(|e| e.to_string())
}

fn nhwc(t: &Tensor) -> Result<[usize; 4], String> {
    <[usize; 4]>::try_from(t.shape())
        .map_err(|_| format!("expects an NHWC u8 input, got shape {:?}", t.shape()))
}

fn out(shape: Vec<usize>, data: Vec<u8>) -> Result<Vec<Tensor>, String> {
    Ok(vec![
        Tensor::from_u8(shape, data).map_err(|e| e.to_string())?
    ])
}

/// Run one quantized node on its fetched inputs.
pub(crate) fn run(op: &QOp, prep: &QPrepared, ins: &[&Tensor]) -> Result<Vec<Tensor>, String> {
    let ke = |e: qvision_kernels::KernelError| e.to_string();
    let x = ins.first().ok_or("no input")?;
    match (op, prep) {
        (QOp::Quantize { q: p, nhwc: true }, _) => {
            let [n, c, h, w] = <[usize; 4]>::try_from(x.shape())
                .map_err(|_| format!("expects an NCHW input, got {:?}", x.shape()))?;
            let xs = x.as_f32().map_err(|e| e.to_string())?;
            out(
                vec![n, h, w, c],
                qops::quantize_to_nhwc(xs, n, c, h * w, q(*p)).map_err(ke)?,
            )
        }
        (QOp::QuantizeBlocked { q: p, channels }, _) => {
            let shape = op.infer_shapes(&[x.shape()])?.remove(0);
            let xs = x.as_f32().map_err(|e| e.to_string())?;
            let (n, h, w) = (shape[0], shape[1], shape[2]);
            let y = qops::quantize_blocked_to_nhwc(xs, n, *channels, h * w, q(*p)).map_err(ke)?;
            out(shape, y)
        }
        (QOp::Quantize { q: p, .. }, _) => {
            let xs = x.as_f32().map_err(|e| e.to_string())?;
            out(x.shape().to_vec(), qops::quantize(xs, q(*p)))
        }
        (QOp::Dequantize { q: p, nhwc: true }, _) => {
            let [n, h, w, c] = nhwc(x)?;
            let y = qops::dequantize_from_nhwc(u8s(x)?, n, c, h * w, q(*p)).map_err(ke)?;
            Ok(vec![
                Tensor::from_f32(vec![n, c, h, w], y).map_err(|e| e.to_string())?
            ])
        }
        (QOp::Dequantize { q: p, .. }, _) => {
            let y = qops::dequantize(u8s(x)?, q(*p));
            Ok(vec![
                Tensor::from_f32(x.shape().to_vec(), y).map_err(|e| e.to_string())?
            ])
        }
        (
            QOp::Conv2d {
                residual, output, ..
            },
            QPrepared::Conv(conv),
        ) => {
            let [n, h, w, c] = nhwc(x)?;
            let p = conv.params();
            if c != p.in_channels {
                return Err(format!(
                    "input has {c} channels, conv expects {}",
                    p.in_channels
                ));
            }
            let res = match residual {
                Some((s, z)) => {
                    let r = ins.get(4).ok_or("missing the residual input")?;
                    Some((u8s(r)?, *z, s / output.0))
                }
                None => None,
            };
            let (y, oh, ow) = conv.run(u8s(x)?, n, h, w, res).map_err(ke)?;
            out(vec![n, oh, ow, p.out_channels], y)
        }
        (QOp::Linear { f32_out, .. }, QPrepared::Conv(conv)) => {
            let p = conv.params();
            if x.shape().last() != Some(&p.in_channels) {
                return Err(format!(
                    "input shape {:?} does not end in {}",
                    x.shape(),
                    p.in_channels
                ));
            }
            let rows = x.numel() / p.in_channels;
            let mut shape = x.shape().to_vec();
            *shape.last_mut().unwrap_or(&mut 0) = p.out_channels;
            if *f32_out {
                let y = conv.run_rows_f32(u8s(x)?, rows).map_err(ke)?;
                return Ok(vec![Tensor::from_f32(shape, y).map_err(|e| e.to_string())?]);
            }
            let (y, _, _) = conv.run(u8s(x)?, rows, 1, 1, None).map_err(ke)?;
            out(shape, y)
        }
        (QOp::Add { .. } | QOp::Mul { .. }, _) => {
            let (kind, a, b, output, relu) = match *op {
                QOp::Add { a, b, output, relu } => (QBinary::Add, a, b, output, relu),
                QOp::Mul { a, b, output } => (QBinary::Mul, a, b, output, false),
                _ => unreachable!("matched above"),
            };
            let y = ins.get(1).ok_or("missing the second operand")?;
            let channels = *x.shape().last().unwrap_or(&0);
            let per_channel = x.ndim() == 4 && y.shape() == [x.shape()[0], 1, 1, channels];
            if y.shape() != x.shape() && !per_channel {
                return Err(format!(
                    "cannot combine shapes {:?} and {:?}",
                    x.shape(),
                    y.shape()
                ));
            }
            let r = qops::binary(
                kind,
                u8s(x)?,
                q(a),
                u8s(y)?,
                q(b),
                q(output),
                relu,
                channels,
            )
            .map_err(ke)?;
            out(x.shape().to_vec(), r)
        }
        (
            QOp::ChannelAffine {
                input,
                output,
                relu,
            },
            _,
        ) => {
            let f = |i: usize| -> Result<&[f32], String> {
                ins.get(i)
                    .ok_or("missing scale or shift")?
                    .as_f32()
                    .map_err(|e| e.to_string())
            };
            let y = qops::channel_affine(u8s(x)?, q(*input), f(1)?, f(2)?, q(*output), *relu)
                .map_err(ke)?;
            out(x.shape().to_vec(), y)
        }
        (QOp::Lut { .. }, QPrepared::Tables(t)) => {
            let table = t
                .first()
                .and_then(|t| t.as_deref())
                .ok_or("table not prepared")?;
            out(x.shape().to_vec(), qops::lut(u8s(x)?, table))
        }
        (QOp::MaxPool2d(p), _) => {
            let [n, h, w, c] = nhwc(x)?;
            let (y, oh, ow) = qops::max_pool(p, u8s(x)?, n, h, w, c).map_err(ke)?;
            out(vec![n, oh, ow, c], y)
        }
        (
            QOp::AvgPool2d {
                pool,
                count_include_pad,
                input,
                output,
            },
            _,
        ) => {
            let [n, h, w, c] = nhwc(x)?;
            let (y, oh, ow) = qops::avg_pool(
                pool,
                *count_include_pad,
                u8s(x)?,
                (n, h, w, c),
                q(*input),
                q(*output),
            )
            .map_err(ke)?;
            out(vec![n, oh, ow, c], y)
        }
        (
            QOp::AdaptiveAvgPool2d {
                size,
                input,
                output,
            },
            _,
        ) => {
            let [n, h, w, c] = nhwc(x)?;
            let y = qops::adaptive_avg_pool(
                u8s(x)?,
                (n, h, w, c),
                (size[0], size[1]),
                q(*input),
                q(*output),
            )
            .map_err(ke)?;
            out(vec![n, size[0], size[1], c], y)
        }
        (QOp::Concat { .. }, QPrepared::Tables(tables)) => {
            let [n, h, w, _] = nhwc(x)?;
            if tables.len() != ins.len() {
                return Err(format!("{} inputs, {} prepared", ins.len(), tables.len()));
            }
            let mut parts = Vec::with_capacity(ins.len());
            let mut c = 0;
            for (t, table) in ins.iter().zip(tables) {
                let [tn, th, tw, tc] = nhwc(t)?;
                if (tn, th, tw) != (n, h, w) {
                    return Err(format!(
                        "cannot concat {:?} with {:?}",
                        x.shape(),
                        t.shape()
                    ));
                }
                parts.push((u8s(t)?, tc, 0, tc, table.as_deref()));
                c += tc;
            }
            out(
                vec![n, h, w, c],
                qops::gather_channels(n * h * w, &parts).map_err(ke)?,
            )
        }
        (QOp::Split { sizes }, _) => {
            let [n, h, w, c] = nhwc(x)?;
            if sizes.iter().sum::<usize>() != c {
                return Err(format!("sizes {sizes:?} do not split {c} channels"));
            }
            let mut first = 0;
            let mut outs = vec![];
            for &k in sizes {
                let y = qops::gather_channels(n * h * w, &[(u8s(x)?, c, first, k, None)])
                    .map_err(ke)?;
                outs.push(Tensor::from_u8(vec![n, h, w, k], y).map_err(|e| e.to_string())?);
                first += k;
            }
            Ok(outs)
        }
        (QOp::ChannelShuffle { groups }, _) => {
            let [n, h, w, c] = nhwc(x)?;
            out(
                x.shape().to_vec(),
                qops::channel_shuffle(u8s(x)?, n * h * w, c, *groups).map_err(ke)?,
            )
        }
        (QOp::Flatten, _) => {
            let [n, h, w, c] = nhwc(x)?;
            let xs = u8s(x)?;
            if h * w == 1 {
                return out(vec![n, c], xs.to_vec());
            }
            let mut y = vec![0u8; xs.len()];
            for b in 0..n {
                for p in 0..h * w {
                    for ch in 0..c {
                        y[(b * c + ch) * h * w + p] = xs[(b * h * w + p) * c + ch];
                    }
                }
            }
            out(vec![n, c * h * w], y)
        }
        (QOp::Relayout { .. }, _) => out(x.shape().to_vec(), u8s(x)?.to_vec()),
        (QOp::LayerNorm { eps, input, output }, _) => {
            let wt = ins
                .get(1)
                .ok_or("missing weight")?
                .as_f32()
                .map_err(|e| e.to_string())?;
            let bias = ins
                .get(2)
                .ok_or("missing bias")?
                .as_f32()
                .map_err(|e| e.to_string())?;
            let len = *x.shape().last().ok_or("0-d input")?;
            if wt.len() != len {
                return Err(format!("weight has {} values, want {len}", wt.len()));
            }
            let y = qops::layer_norm(u8s(x)?, q(*input), wt, bias, *eps, q(*output)).map_err(ke)?;
            out(x.shape().to_vec(), y)
        }
        (op, _) => Err(format!("{} was not prepared", op.kind())),
    }
}
