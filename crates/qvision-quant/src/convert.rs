//! `convert`: turn a calibrated fp32 graph into an int8 graph (PyTorch's `convert`).
//!
//! Convolutions (dense, grouped, depthwise, any stride) and linear layers become int8 GEMMs
//! with s8 weights (per channel or per tensor, as the node's qconfig says), i32 biases and a
//! fused epilogue (activation, residual add). Around them, adds and multiplies requantize,
//! activations become byte tables, pools, concat, split, channel shuffle, flatten and
//! LayerNorm run on u8 too. Rank-4 u8 activations are NHWC. `Quantize` / `Dequantize` appear
//! only where the precision changes; whatever has no int8 kernel stays fp32 between them, and
//! the report lists these fp32 islands.
//!
//! The graph input is observed like any activation (PyTorch's `QuantStub`, with the full
//! min/max range), so a stem conv reading the image converts to int8 behind one quantize of the
//! image where that pays: from an im2col depth of [`INT8_STEM_MIN_DEPTH`] (ResNet's 7x7 stem;
//! `--skip` keeps it fp32). Shallower stems (MobileNet's 3x3 over 3 channels) stay fp32: int8 is
//! no faster there, and on the official MobileNetV2 its int8 stem flipped one borderline foolbox
//! photo (same output SQNR). Pass-through ops (max pool,
//! flatten, split, shuffle) convert only when their input is already u8, so a quantize lands
//! after them where that is cheaper.

use crate::calibrate::Calibrator;
use crate::qconfig::{QConfig, QConfigMapping};
use crate::qparams::QuantParams;
use crate::quantize::{quantize_bias, quantize_weights_per_channel, quantize_weights_per_tensor};
use crate::QuantError;
use qvision_graph::{Graph, Node, Op, QOp, Value, ValueId, ValueKind};
use qvision_kernels::elementwise::BinaryOp;
use qvision_kernels::qops::{requant_table, Q};
use qvision_tensor::{DType, Data, Tensor};
use std::collections::{BTreeMap, HashMap};

/// What `convert` did.
#[derive(Debug, Default, Clone)]
pub struct ConvertReport {
    /// Nodes now running in int8: (name, op kind).
    pub int8: Vec<(String, String)>,
    /// Nodes left in fp32 (name, op kind), the "fp32 islands".
    pub fp32: Vec<(String, String)>,
    /// Every value now held in u8: where to find it and how to read it back.
    pub values: Vec<QuantizedValue>,
}

/// A value of the fp32 graph that the int8 graph holds in u8.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedValue {
    /// Name in the fp32 (prepared) graph.
    pub name: String,
    /// Name of the u8 value in the int8 graph.
    pub u8_name: String,
    /// The node that computes it.
    pub node: String,
    pub scale: f32,
    pub zero_point: i32,
    /// Held as NHWC (a rank-4 activation) rather than in its logical layout.
    pub nhwc: bool,
}

impl ConvertReport {
    /// Int8 nodes of one op kind (e.g. `Conv2d`).
    pub fn int8_count(&self, kind: &str) -> usize {
        self.int8.iter().filter(|(_, k)| k == kind).count()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Layout {
    Nhwc,
    Plain,
}

#[derive(Clone, Copy)]
enum Repr {
    F32(ValueId),
    U8(ValueId, QuantParams, Layout),
}

fn qp(q: QuantParams) -> (f32, i32) {
    (q.scale, q.zero_point)
}

fn shape_err(e: impl ToString) -> QuantError {
    QuantError::Shape(e.to_string())
}

struct Ctx<'a> {
    g: &'a Graph,
    act: &'a BTreeMap<String, QuantParams>,
    shapes: &'a BTreeMap<String, Vec<usize>>,
    out: Graph,
    repr: HashMap<ValueId, Repr>,
    to_u8: HashMap<(ValueId, Layout), ValueId>,
    to_f32: HashMap<ValueId, ValueId>,
    values: Vec<QuantizedValue>,
    /// Values whose ReLU reader was fused into the node that computes them.
    relu_done: std::collections::HashSet<ValueId>,
}

impl Ctx<'_> {
    /// The output of the single node that reads `v`.
    fn reader_output(&self, v: ValueId) -> Option<ValueId> {
        let mut it = self.g.nodes.iter().filter(|n| n.inputs.contains(&v));
        match (it.next(), it.next()) {
            (Some(n), None) => n.outputs.first().copied(),
            _ => None,
        }
    }

    fn value(&mut self, name: String, dtype: DType) -> ValueId {
        self.out.values.push(Value {
            name,
            kind: ValueKind::Const,
            dtype,
            shape: None,
        });
        ValueId(self.out.values.len() - 1)
    }

    fn constant(&mut self, name: String, t: Tensor) -> ValueId {
        let id = self.value(name, t.dtype());
        self.out.values[id.0].shape = Some(t.shape().to_vec());
        self.out.tensors.insert(id, t);
        id
    }

    fn get(&self, v: ValueId) -> Repr {
        self.repr.get(&v).copied().unwrap_or(Repr::F32(v))
    }

    fn name(&self, v: ValueId) -> &str {
        &self.g.values[v.0].name
    }

    fn observed(&self, v: ValueId) -> Option<QuantParams> {
        self.act.get(self.name(v)).copied()
    }

    fn shape(&self, v: ValueId) -> Option<&[usize]> {
        self.shapes.get(self.name(v)).map(Vec::as_slice)
    }

    /// The value's quantization: as it is held in u8, or as observed.
    fn qparams(&self, v: ValueId) -> Option<QuantParams> {
        match self.get(v) {
            Repr::U8(_, q, _) => Some(q),
            Repr::F32(_) => self.observed(v),
        }
    }

    fn u8_layout(&self, v: ValueId) -> Option<Layout> {
        match self.get(v) {
            Repr::U8(_, _, l) => Some(l),
            Repr::F32(_) => None,
        }
    }

    fn is_activation(&self, v: ValueId) -> bool {
        matches!(
            self.g.values[v.0].kind,
            ValueKind::NodeOutput { .. } | ValueKind::Input
        )
    }

    fn f32_view(&mut self, v: ValueId) -> ValueId {
        match self.get(v) {
            Repr::F32(id) => id,
            Repr::U8(id, q, l) => {
                if let Some(&f) = self.to_f32.get(&id) {
                    return f;
                }
                let name = format!("{}.dequant", self.name(v));
                let o = self.value(name.clone(), DType::F32);
                let op = QOp::Dequantize {
                    q: qp(q),
                    nhwc: l == Layout::Nhwc,
                };
                self.out.push_node(name, Op::Q(op), vec![id], vec![o]);
                self.to_f32.insert(id, o);
                o
            }
        }
    }

    /// The value as u8 in `layout`, quantizing (once) where needed.
    fn u8_view(&mut self, v: ValueId, layout: Layout) -> Option<(ValueId, QuantParams)> {
        let q = match self.get(v) {
            Repr::U8(id, q, l) if l == layout => return Some((id, q)),
            Repr::U8(_, q, _) => q,
            Repr::F32(_) => self.observed(v)?,
        };
        let f = self.f32_view(v);
        if let Some(&id) = self.to_u8.get(&(f, layout)) {
            return Some((id, q));
        }
        let name = format!("{}.quant", self.name(v));
        let o = self.value(name.clone(), DType::U8);
        let op = QOp::Quantize {
            q: qp(q),
            nhwc: layout == Layout::Nhwc,
        };
        self.out.push_node(name, Op::Q(op), vec![f], vec![o]);
        self.to_u8.insert((f, layout), o);
        Some((o, q))
    }

    fn emit(&mut self, node: &Node, op: QOp, ins: Vec<ValueId>, outs: &[(QuantParams, Layout)]) {
        let ids: Vec<ValueId> = node
            .outputs
            .iter()
            .map(|&y| self.value(format!("{}(u8)", self.name(y)), DType::U8))
            .collect();
        self.out
            .push_node(node.name.clone(), Op::Q(op), ins, ids.clone());
        for ((&y, id), &(q, l)) in node.outputs.iter().zip(ids).zip(outs) {
            self.repr.insert(y, Repr::U8(id, q, l));
            self.values.push(QuantizedValue {
                name: self.name(y).to_string(),
                u8_name: self.out.values[id.0].name.clone(),
                node: node.name.clone(),
                scale: q.scale,
                zero_point: q.zero_point,
                nhwc: l == Layout::Nhwc,
            });
        }
    }

    fn f32_tensor(&self, v: ValueId) -> Result<&[f32], QuantError> {
        self.g
            .tensor(v)
            .map_err(shape_err)?
            .as_f32()
            .map_err(shape_err)
    }

    /// s8 weights, i32 bias (in `s_in * s_w`) and the weight scales as graph constants.
    fn weights(
        &mut self,
        node: &Node,
        channels: usize,
        has_bias: bool,
        s_in: f32,
        qc: &QConfig,
    ) -> Result<[ValueId; 3], QuantError> {
        let wt = self.g.tensor(node.inputs[1]).map_err(shape_err)?;
        let w = wt.as_f32().map_err(shape_err)?;
        let (wq, sw) = if qc.weight_scheme.is_per_channel() {
            quantize_weights_per_channel(w, channels)?
        } else {
            quantize_weights_per_tensor(w, channels)?
        };
        let b: Vec<f32> = if has_bias {
            self.f32_tensor(node.inputs[2])?.to_vec()
        } else {
            vec![0.0; channels]
        };
        if b.len() != channels {
            return Err(shape_err(format!(
                "{}: bias has {} values for {channels} channels",
                node.name,
                b.len()
            )));
        }
        let bq = quantize_bias(&b, s_in, &sw);
        let shape = wt.shape().to_vec();
        Ok([
            self.constant(
                format!("{}.weight(s8)", node.name),
                Tensor::new(shape, Data::I8(wq)).map_err(shape_err)?,
            ),
            self.constant(
                format!("{}.bias(i32)", node.name),
                Tensor::new(vec![channels], Data::I32(bq)).map_err(shape_err)?,
            ),
            self.constant(
                format!("{}.weight_scale", node.name),
                Tensor::from_f32(vec![channels], sw).map_err(shape_err)?,
            ),
        ])
    }

    /// Emit `node` in int8 if it can be; `false` leaves it to the fp32 fallback.
    fn try_int8(&mut self, node: &Node, qc: &QConfig) -> Result<bool, QuantError> {
        use Layout::*;
        let x = node.inputs[0];
        let y = node.outputs[0];
        let u8_in = self.u8_layout(x);
        match &node.op {
            Op::Conv2d {
                params,
                act,
                residual,
            } => {
                if self.g.inputs.contains(&x) && stem_stays_fp32(node) {
                    return Ok(false);
                }
                let n_w = node.inputs.len() - usize::from(*residual);
                let r = residual.then(|| node.inputs[n_w]);
                let (Some(qx), Some(qy)) = (self.qparams(x), self.observed(y)) else {
                    return Ok(false);
                };
                if let Some(r) = r {
                    if self.qparams(r).is_none() || self.shape(r) != self.shape(y) {
                        return Ok(false);
                    }
                }
                let [w, b, s] = self.weights(node, params.out_channels, n_w == 3, qx.scale, qc)?;
                let (xin, qx) = self.u8_view(x, Nhwc).expect("qparams known");
                let mut ins = vec![xin, w, b, s];
                let mut rq = None;
                if let Some(r) = r {
                    let (rid, q) = self.u8_view(r, Nhwc).expect("qparams known");
                    ins.push(rid);
                    rq = Some(qp(q));
                }
                let op = QOp::Conv2d {
                    params: *params,
                    input: qp(qx),
                    output: qp(qy),
                    residual: rq,
                    act: *act,
                };
                self.emit(node, op, ins, &[(qy, Nhwc)]);
            }
            Op::Linear { act } => {
                let (Some(qx), Some(qy)) = (self.qparams(x), self.observed(y)) else {
                    return Ok(false);
                };
                let out_f = self
                    .g
                    .tensor(node.inputs[1])
                    .map_err(shape_err)?
                    .shape()
                    .first()
                    .copied()
                    .unwrap_or(0);
                let [w, b, s] = self.weights(node, out_f, node.inputs.len() == 3, qx.scale, qc)?;
                let (xin, qx) = self.u8_view(x, Plain).expect("qparams known");
                // a graph output nothing else reads is written in f32: no output rounding
                let f32_out = self.g.outputs.contains(&y)
                    && !self.g.nodes.iter().any(|n| n.inputs.contains(&y));
                let op = QOp::Linear {
                    input: qp(qx),
                    output: qp(qy),
                    act: *act,
                    f32_out,
                };
                if f32_out {
                    let o = self.value(format!("{}(f32)", self.name(y)), DType::F32);
                    self.out
                        .push_node(node.name.clone(), Op::Q(op), vec![xin, w, b, s], vec![o]);
                    self.repr.insert(y, Repr::F32(o));
                } else {
                    self.emit(node, op, vec![xin, w, b, s], &[(qy, Plain)]);
                }
            }
            Op::Act(qvision_graph::Activation::Relu) if self.relu_done.contains(&x) => {
                // already applied by the BatchNorm before it
                let r = self.get(x);
                self.repr.insert(y, r);
            }
            Op::BatchNorm2d { eps } if u8_in == Some(Nhwc) => {
                // an unfolded BN (DenseNet's pre-activation): a per-channel affine map, with the
                // ReLU after it when that is its only reader
                let relu_after = only_reader_is_relu(self.g, y);
                let out_v = if relu_after {
                    self.reader_output(y)
                } else {
                    Some(y)
                };
                let Some(qy) = out_v.and_then(|v| self.observed(v)) else {
                    return Ok(false);
                };
                let p: Vec<&[f32]> = node.inputs[1..5]
                    .iter()
                    .map(|&i| self.f32_tensor(i))
                    .collect::<Result<_, _>>()?;
                let (scale, shift) =
                    qvision_kernels::norm::batch_norm_affine(p[0], p[1], p[2], p[3], *eps);
                let c = scale.len();
                let sid = self.constant(
                    format!("{}.scale", node.name),
                    Tensor::from_f32(vec![c], scale).map_err(shape_err)?,
                );
                let bid = self.constant(
                    format!("{}.shift", node.name),
                    Tensor::from_f32(vec![c], shift).map_err(shape_err)?,
                );
                let (xin, qx) = self.u8_view(x, Nhwc).expect("u8");
                let op = QOp::ChannelAffine {
                    input: qp(qx),
                    output: qp(qy),
                    relu: relu_after,
                };
                self.emit(node, op, vec![xin, sid, bid], &[(qy, Nhwc)]);
                if relu_after {
                    self.relu_done.insert(y);
                }
            }
            Op::Act(a) => {
                let (Some(l), Some(qx), Some(qy)) = (u8_in, self.qparams(x), self.observed(y))
                else {
                    return Ok(false);
                };
                let t = requant_table(
                    Q::new(qx.scale, qx.zero_point),
                    Q::new(qy.scale, qy.zero_point),
                    Some(*a),
                );
                let (xin, _) = self.u8_view(x, l).expect("u8");
                let op = QOp::Lut {
                    table: t.to_vec(),
                    act: Some(*a),
                    input: Some(qp(qx)),
                    output: Some(qp(qy)),
                };
                self.emit(node, op, vec![xin], &[(qy, l)]);
            }
            Op::MaxPool2d(p) if u8_in == Some(Nhwc) => {
                let (xin, qx) = self.u8_view(x, Nhwc).expect("u8");
                self.emit(node, QOp::MaxPool2d(*p), vec![xin], &[(qx, Nhwc)]);
            }
            Op::AvgPool2d {
                pool,
                count_include_pad,
            } if u8_in == Some(Nhwc) => {
                let Some(qy) = self.observed(y) else {
                    return Ok(false);
                };
                let (xin, qx) = self.u8_view(x, Nhwc).expect("u8");
                let op = QOp::AvgPool2d {
                    pool: *pool,
                    count_include_pad: *count_include_pad,
                    input: qp(qx),
                    output: qp(qy),
                };
                self.emit(node, op, vec![xin], &[(qy, Nhwc)]);
            }
            Op::AdaptiveAvgPool2d { output } if u8_in == Some(Nhwc) => {
                let Some(qy) = self.observed(y) else {
                    return Ok(false);
                };
                let (xin, qx) = self.u8_view(x, Nhwc).expect("u8");
                let op = QOp::AdaptiveAvgPool2d {
                    size: *output,
                    input: qp(qx),
                    output: qp(qy),
                };
                self.emit(node, op, vec![xin], &[(qy, Nhwc)]);
            }
            Op::Binary(op @ (BinaryOp::Add | BinaryOp::Mul)) => {
                let (mut a, mut b) = (node.inputs[0], node.inputs[1]);
                if !self.is_activation(a) || !self.is_activation(b) {
                    return Ok(false);
                }
                if u8_in.is_none() && self.u8_layout(b).is_none() {
                    return Ok(false);
                }
                let (Some(sa), Some(sb), Some(qy)) =
                    (self.shape(a), self.shape(b), self.observed(y))
                else {
                    return Ok(false);
                };
                let (sa, sb) = (sa.to_vec(), sb.to_vec());
                let per_channel = |big: &[usize], small: &[usize]| {
                    big.len() == 4 && small == [big[0], big[1], 1, 1]
                };
                if sa != sb {
                    if *op != BinaryOp::Mul {
                        return Ok(false);
                    }
                    if per_channel(&sb, &sa) {
                        std::mem::swap(&mut a, &mut b);
                    } else if !per_channel(&sa, &sb) {
                        return Ok(false);
                    }
                }
                if self.qparams(a).is_none() || self.qparams(b).is_none() {
                    return Ok(false);
                }
                let layout = if sa.len() == 4 {
                    Nhwc
                } else {
                    self.u8_layout(a).or(self.u8_layout(b)).unwrap_or(Plain)
                };
                let (ia, qa) = self.u8_view(a, layout).expect("qparams known");
                let (ib, qb) = self.u8_view(b, layout).expect("qparams known");
                let op = if *op == BinaryOp::Add {
                    QOp::Add {
                        a: qp(qa),
                        b: qp(qb),
                        output: qp(qy),
                        relu: false,
                    }
                } else {
                    QOp::Mul {
                        a: qp(qa),
                        b: qp(qb),
                        output: qp(qy),
                    }
                };
                self.emit(node, op, vec![ia, ib], &[(qy, layout)]);
            }
            Op::Concat { axis: 1 } => {
                let ins = &node.inputs;
                if !ins.iter().any(|&v| self.u8_layout(v).is_some())
                    || ins.iter().any(|&v| {
                        self.qparams(v).is_none() || self.shape(v).is_none_or(|s| s.len() != 4)
                    })
                {
                    return Ok(false);
                }
                let Some(qy) = self.observed(y) else {
                    return Ok(false);
                };
                let (ids, qs): (Vec<ValueId>, Vec<(f32, i32)>) = ins
                    .iter()
                    .map(|&v| {
                        let (id, q) = self.u8_view(v, Nhwc).expect("qparams known");
                        (id, qp(q))
                    })
                    .unzip();
                let op = QOp::Concat {
                    inputs: qs,
                    output: qp(qy),
                };
                self.emit(node, op, ids, &[(qy, Nhwc)]);
            }
            Op::Split { axis: 1, sizes } if u8_in == Some(Nhwc) => {
                let (xin, qx) = self.u8_view(x, Nhwc).expect("u8");
                let outs = vec![(qx, Nhwc); node.outputs.len()];
                self.emit(
                    node,
                    QOp::Split {
                        sizes: sizes.clone(),
                    },
                    vec![xin],
                    &outs,
                );
            }
            Op::ChannelShuffle { groups } if u8_in == Some(Nhwc) => {
                let (xin, qx) = self.u8_view(x, Nhwc).expect("u8");
                self.emit(
                    node,
                    QOp::ChannelShuffle { groups: *groups },
                    vec![xin],
                    &[(qx, Nhwc)],
                );
            }
            Op::Flatten { start: 1 } if u8_in == Some(Nhwc) => {
                let (xin, qx) = self.u8_view(x, Nhwc).expect("u8");
                self.emit(node, QOp::Flatten, vec![xin], &[(qx, Plain)]);
            }
            Op::Permute { perm } if perm == &[0, 2, 3, 1] && u8_in == Some(Nhwc) => {
                let (xin, qx) = self.u8_view(x, Nhwc).expect("u8");
                self.emit(
                    node,
                    QOp::Relayout { to_nhwc: false },
                    vec![xin],
                    &[(qx, Plain)],
                );
            }
            Op::Permute { perm }
                if perm == &[0, 3, 1, 2]
                    && u8_in == Some(Plain)
                    && self.shape(x).is_some_and(|s| s.len() == 4) =>
            {
                let (xin, qx) = self.u8_view(x, Plain).expect("u8");
                self.emit(
                    node,
                    QOp::Relayout { to_nhwc: true },
                    vec![xin],
                    &[(qx, Nhwc)],
                );
            }
            Op::LayerNorm { eps } if u8_in == Some(Plain) => {
                let Some(qy) = self.observed(y) else {
                    return Ok(false);
                };
                let (xin, qx) = self.u8_view(x, Plain).expect("u8");
                let op = QOp::LayerNorm {
                    eps: *eps,
                    input: qp(qx),
                    output: qp(qy),
                };
                let ins = vec![xin, node.inputs[1], node.inputs[2]];
                self.emit(node, op, ins, &[(qy, Plain)]);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Is `v` read by exactly one node, a ReLU, and not a graph output? An unfolded BatchNorm with
/// such an output converts together with its ReLU into one per-channel affine.
fn only_reader_is_relu(g: &Graph, v: ValueId) -> bool {
    let mut readers = g.nodes.iter().filter(|n| n.inputs.contains(&v));
    matches!(
        (readers.next(), readers.next()),
        (Some(n), None) if n.op == Op::Act(qvision_graph::Activation::Relu)
    ) && !g.outputs.contains(&v)
}

/// Does `convert` give this node's output its input's quantization rather than its own?
/// Max pooling and the data-movement ops keep the input's u8 values and qparams (or, where
/// they stay fp32, have no qparams of their own), and an
/// unfolded BatchNorm read only by a ReLU never materialises (the pair is one affine whose
/// output is the ReLU's). Quantization-aware training places no fake-quant there.
pub fn keeps_input_qparams(g: &Graph, n: &Node) -> bool {
    match &n.op {
        Op::MaxPool2d(_)
        | Op::Split { .. }
        | Op::ChannelShuffle { .. }
        | Op::Flatten { .. }
        | Op::Reshape { .. }
        | Op::Permute { .. }
        | Op::Dropout { .. } => true,
        Op::BatchNorm2d { .. } => only_reader_is_relu(g, n.outputs[0]),
        _ => false,
    }
}

/// Im2col depth (taps x input channels) from which a conv reading the graph input runs in
/// int8: below it (MobileNet's 3x3 stem: 27) the int8 GEMM is no faster than the fp32 kernel
/// here, so the stem stays fp32 and nothing is risked; ResNet's 7x7 stem (147) converts.
pub const INT8_STEM_MIN_DEPTH: usize = 64;

/// Whether `n`, a node that reads the graph input, stays fp32 (see [`INT8_STEM_MIN_DEPTH`]).
pub fn stem_stays_fp32(n: &Node) -> bool {
    match &n.op {
        Op::Conv2d { params, .. } => {
            params.kernel[0] * params.kernel[1] * params.in_channels / params.groups.max(1)
                < INT8_STEM_MIN_DEPTH
        }
        _ => false,
    }
}

/// Convert a calibrated graph: activation qparams and shapes come from the calibrator, weights
/// follow each node's qconfig in `mapping` (a node mapped to `None` stays fp32).
pub fn convert(
    g: &Graph,
    cal: &Calibrator,
    mapping: &QConfigMapping,
) -> Result<(Graph, ConvertReport), QuantError> {
    convert_with(g, &cal.qparams(), cal.shapes(), mapping)
}

/// [`convert`] from explicit activation qparams and shapes, keyed by value name.
pub fn convert_with(
    g: &Graph,
    act: &BTreeMap<String, QuantParams>,
    shapes: &BTreeMap<String, Vec<usize>>,
    mapping: &QConfigMapping,
) -> Result<(Graph, ConvertReport), QuantError> {
    let mut cx = Ctx {
        g,
        act,
        shapes,
        out: Graph {
            name: g.name.clone(),
            values: g.values.clone(),
            nodes: Vec::with_capacity(g.nodes.len()),
            inputs: g.inputs.clone(),
            outputs: vec![],
            tensors: g.tensors.clone(),
        },
        repr: HashMap::new(),
        to_u8: HashMap::new(),
        to_f32: HashMap::new(),
        values: vec![],
        relu_done: Default::default(),
    };
    let mut report = ConvertReport::default();
    for node in &g.nodes {
        let kind = node.op.kind().to_string();
        if let Some(qc) = mapping.qconfig_for(&node.name, &kind) {
            if cx.try_int8(node, &qc)? {
                report.int8.push((node.name.clone(), kind));
                continue;
            }
        }
        let ins: Vec<ValueId> = node.inputs.iter().map(|&v| cx.f32_view(v)).collect();
        cx.out.push_node(
            node.name.clone(),
            node.op.clone(),
            ins,
            node.outputs.clone(),
        );
        report.fp32.push((node.name.clone(), kind));
    }
    let outs: Vec<ValueId> = g.outputs.iter().map(|&o| cx.f32_view(o)).collect();
    report.values = std::mem::take(&mut cx.values);
    let mut out = cx.out;
    out.outputs = outs;
    out.retain_used_tensors();
    Ok((out, report))
}
