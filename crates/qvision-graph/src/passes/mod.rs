//! Graph rewrites. Each takes a graph and returns a new one; the input is left untouched.
//!
//! [`optimize_for_inference`] folds BatchNorm into the conv before it, fuses activations into
//! conv/linear epilogues and drops inference no-ops (Dropout). The quantization passes (fuse,
//! prepare, convert) will live beside these.

mod channels_last;
mod concat_norm;
mod dw_project;
pub use channels_last::sink_channels_last;
pub use concat_norm::{fuse_concat_norm, fuse_concat_norm_conv};
pub use dw_project::fuse_dw_project;

use crate::ir::{Graph, Node, NodeId, ValueId, ValueKind};
use crate::op::Op;
use crate::GraphError;
use qvision_kernels::elementwise::BinaryOp;
use qvision_kernels::norm::batch_norm_affine;
use qvision_tensor::{DType, Tensor};
use std::collections::{HashMap, HashSet};

/// Fold BN, fuse activations, drop Dropout; unused tensors are dropped from the result.
pub fn optimize_for_inference(g: &Graph) -> Result<Graph, GraphError> {
    optimize_for_inference_with_aliases(g).map(|(out, _)| out)
}

/// [`optimize_for_inference`], also returning where each fused-away value went: a BatchNorm,
/// activation, Dropout or residual-add output maps to the value of the fused node that now
/// computes it (quantization-aware training places its fake-quant with this map).
pub fn optimize_for_inference_with_aliases(
    g: &Graph,
) -> Result<(Graph, HashMap<ValueId, ValueId>), GraphError> {
    let mut uses = g.use_counts();
    let mut out = Graph {
        name: g.name.clone(),
        values: g.values.clone(),
        nodes: vec![],
        inputs: g.inputs.clone(),
        outputs: vec![],
        tensors: HashMap::new(),
    };
    // Rewritten nodes; a fused-away or moved node leaves a hole.
    let mut nodes: Vec<Option<Node>> = Vec::with_capacity(g.nodes.len());
    let mut alias: HashMap<ValueId, ValueId> = HashMap::new();
    let mut producer: HashMap<ValueId, usize> = HashMap::new();
    let mut new_tensors: HashMap<ValueId, Tensor> = HashMap::new();
    // Replace `from` by `to` everywhere: `to` loses the reader being removed and gains `from`'s.
    let redirect =
        |alias: &mut HashMap<ValueId, ValueId>, uses: &mut [usize], from: ValueId, to: ValueId| {
            alias.insert(from, to);
            uses[to.0] = uses[to.0] - 1 + uses[from.0];
        };
    let resolve = |alias: &HashMap<ValueId, ValueId>, mut v: ValueId| {
        while let Some(&a) = alias.get(&v) {
            v = a;
        }
        v
    };
    for node in &g.nodes {
        let inputs: Vec<ValueId> = node.inputs.iter().map(|&i| resolve(&alias, i)).collect();
        let single_use_producer = |v: ValueId| producer.get(&v).copied().filter(|_| uses[v.0] == 1);
        let plain_conv = |n: &Option<Node>| {
            matches!(
                n,
                Some(Node {
                    op: Op::Conv2d {
                        act: None,
                        residual: false,
                        ..
                    },
                    ..
                })
            )
        };
        match &node.op {
            Op::Dropout { .. } => {
                redirect(&mut alias, &mut uses, node.outputs[0], inputs[0]);
                continue;
            }
            Op::BatchNorm2d { eps } => {
                if let Some(p) = single_use_producer(inputs[0]) {
                    let folded = nodes[p]
                        .as_ref()
                        .and_then(|c| fold_bn(g, &new_tensors, c, &inputs, *eps));
                    if let Some((w, b)) = folded {
                        let conv = nodes[p].as_mut().expect("producer exists");
                        let wid = push_const(
                            &mut out.values,
                            &format!("{}.weight(bn-folded)", conv.name),
                            &w,
                        );
                        let bid = push_const(
                            &mut out.values,
                            &format!("{}.bias(bn-folded)", conv.name),
                            &b,
                        );
                        conv.inputs.truncate(1);
                        conv.inputs.extend([wid, bid]);
                        new_tensors.insert(wid, w);
                        new_tensors.insert(bid, b);
                        redirect(&mut alias, &mut uses, node.outputs[0], inputs[0]);
                        continue;
                    }
                }
            }
            Op::Act(a) => {
                if let Some(Some(n)) = single_use_producer(inputs[0]).map(|p| nodes[p].as_mut()) {
                    match &mut n.op {
                        Op::Conv2d { act, .. } | Op::Linear { act } if act.is_none() => {
                            *act = Some(*a);
                            redirect(&mut alias, &mut uses, node.outputs[0], inputs[0]);
                            continue;
                        }
                        _ => {}
                    }
                }
            }
            Op::Binary(BinaryOp::Mul) => {
                // ConvNeXt's layer scale: linear -> permute(0, 3, 1, 2) -> mul by a [C, 1, 1]
                // constant becomes a linear with scaled rows; conv -> mul by a per-channel
                // constant, a conv with scaled filters.
                let scaled = fold_layer_scale(g, &new_tensors, &nodes, &producer, &uses, &inputs)
                    .or_else(|| {
                        fold_channel_scale(g, &new_tensors, &nodes, &producer, &uses, &inputs)
                    });
                if let Some(Scaled {
                    node: ni,
                    via,
                    w,
                    b,
                }) = scaled
                {
                    let n = nodes[ni].as_mut().expect("producer exists");
                    let wid =
                        push_const(&mut out.values, &format!("{}.weight(scaled)", n.name), &w);
                    let bid = push_const(&mut out.values, &format!("{}.bias(scaled)", n.name), &b);
                    n.inputs.truncate(1);
                    n.inputs.extend([wid, bid]);
                    new_tensors.insert(wid, w);
                    new_tensors.insert(bid, b);
                    redirect(&mut alias, &mut uses, node.outputs[0], via);
                    continue;
                }
            }
            Op::Binary(BinaryOp::Add) => {
                // conv(x) + r -> conv with a residual epilogue, moved here so r is ready.
                let fusable = [(0, 1), (1, 0)].into_iter().find_map(|(c, r)| {
                    single_use_producer(inputs[c])
                        .filter(|&p| plain_conv(&nodes[p]))
                        .map(|p| (p, c, r))
                });
                if let Some((p, c, r)) = fusable {
                    let mut conv = nodes[p].take().expect("producer exists");
                    conv.inputs.push(inputs[r]);
                    if let Op::Conv2d { residual, .. } = &mut conv.op {
                        *residual = true;
                    }
                    producer.insert(inputs[c], nodes.len());
                    nodes.push(Some(conv));
                    redirect(&mut alias, &mut uses, node.outputs[0], inputs[c]);
                    continue;
                }
            }
            _ => {}
        }
        for o in &node.outputs {
            producer.insert(*o, nodes.len());
        }
        nodes.push(Some(Node {
            name: node.name.clone(),
            op: node.op.clone(),
            inputs,
            outputs: node.outputs.clone(),
        }));
    }
    out.nodes = nodes.into_iter().flatten().collect();
    out.outputs = g.outputs.iter().map(|&o| resolve(&alias, o)).collect();
    for (i, n) in out.nodes.iter().enumerate() {
        for (index, o) in n.outputs.iter().enumerate() {
            out.values[o.0].kind = ValueKind::NodeOutput {
                node: NodeId(i),
                index,
            };
        }
    }
    let used: HashSet<ValueId> = out
        .nodes
        .iter()
        .flat_map(|n| n.inputs.iter().copied())
        .chain(out.outputs.iter().copied())
        .collect();
    for id in used {
        if let Some(t) = new_tensors
            .remove(&id)
            .or_else(|| g.tensors.get(&id).cloned())
        {
            out.tensors.insert(id, t);
        }
    }
    let resolved = alias.keys().map(|&k| (k, resolve(&alias, k))).collect();
    Ok((out, resolved))
}

pub(super) fn push_const(values: &mut Vec<crate::ir::Value>, name: &str, t: &Tensor) -> ValueId {
    values.push(crate::ir::Value {
        name: name.to_string(),
        kind: ValueKind::Const,
        dtype: DType::F32,
        shape: Some(t.shape().to_vec()),
    });
    ValueId(values.len() - 1)
}

/// For `mul(permute(linear(x)), gamma)` (gamma `[C, 1, 1]` constant, single uses): the linear
/// layer with gamma folded into its weight and bias.
fn fold_layer_scale(
    g: &Graph,
    fresh: &HashMap<ValueId, Tensor>,
    nodes: &[Option<Node>],
    producer: &HashMap<ValueId, usize>,
    uses: &[usize],
    inputs: &[ValueId],
) -> Option<Scaled> {
    let get = |id: ValueId| fresh.get(&id).or_else(|| g.tensors.get(&id));
    let single = |v: ValueId| producer.get(&v).copied().filter(|_| uses[v.0] == 1);
    let gamma = get(inputs[1])?;
    let perm = nodes[single(inputs[0])?].as_ref()?;
    if !matches!(&perm.op, Op::Permute { perm } if perm == &[0, 3, 1, 2]) {
        return None;
    }
    let li = single(perm.inputs[0])?;
    let lin = nodes[li].as_ref()?;
    if !matches!(lin.op, Op::Linear { act: None }) {
        return None;
    }
    let w = get(lin.inputs[1])?;
    let [out, _] = <[usize; 2]>::try_from(w.shape()).ok()?;
    if gamma.shape() != [out, 1, 1] {
        return None;
    }
    let b = match lin.inputs.get(2) {
        Some(&b) => Some(get(b)?),
        None => None,
    };
    let (w, b) = scale_rows(w, b, gamma.as_f32().ok()?)?;
    Some(Scaled {
        node: li,
        via: inputs[0],
        w,
        b,
    })
}

/// A node whose weight rows and bias were scaled per output channel, the value that now stands
/// for the `Mul`'s output, and the new tensors.
struct Scaled {
    node: usize,
    via: ValueId,
    w: Tensor,
    b: Tensor,
}

/// `w` (`[out, ...]`) and `b` (zeros if absent) with row `o` multiplied by `gamma[o]`.
fn scale_rows(w: &Tensor, b: Option<&Tensor>, gamma: &[f32]) -> Option<(Tensor, Tensor)> {
    let out = gamma.len();
    let wv = w.as_f32().ok()?;
    let per = wv.len() / out.max(1);
    let nw: Vec<f32> = wv
        .iter()
        .enumerate()
        .map(|(i, v)| v * gamma[i / per])
        .collect();
    let b: Vec<f32> = match b {
        Some(b) => b.as_f32().ok()?.to_vec(),
        None => vec![0.0; out],
    };
    if b.len() != out {
        return None;
    }
    let nb: Vec<f32> = b.iter().zip(gamma).map(|(v, s)| v * s).collect();
    Some((
        Tensor::from_f32(w.shape().to_vec(), nw).ok()?,
        Tensor::from_f32(vec![out], nb).ok()?,
    ))
}

/// For `mul(conv(x), gamma)` or `mul(gamma, conv(x))` (a plain conv used once, gamma a constant
/// `[C, 1, 1]` or `[1, C, 1, 1]`): the conv with its filters and bias scaled per output
/// channel.
fn fold_channel_scale(
    g: &Graph,
    fresh: &HashMap<ValueId, Tensor>,
    nodes: &[Option<Node>],
    producer: &HashMap<ValueId, usize>,
    uses: &[usize],
    inputs: &[ValueId],
) -> Option<Scaled> {
    let get = |id: ValueId| fresh.get(&id).or_else(|| g.tensors.get(&id));
    let single = |v: ValueId| producer.get(&v).copied().filter(|_| uses[v.0] == 1);
    let (c, ci, gamma) = [(0, 1), (1, 0)]
        .into_iter()
        .find_map(|(c, k)| Some((c, single(inputs[c])?, get(inputs[k])?)))?;
    let conv = nodes[ci].as_ref()?;
    let Op::Conv2d {
        params,
        act: None,
        residual: false,
    } = &conv.op
    else {
        return None;
    };
    let cout = params.out_channels;
    if !(gamma.shape() == [cout, 1, 1] || gamma.shape() == [1, cout, 1, 1]) {
        return None;
    }
    let w = get(conv.inputs[1])?;
    let b = match conv.inputs.get(2) {
        Some(&b) => Some(get(b)?),
        None => None,
    };
    let (w, b) = scale_rows(w, b, gamma.as_f32().ok()?)?;
    Some(Scaled {
        node: ci,
        via: inputs[c],
        w,
        b,
    })
}

/// New conv weight and bias with the BN after it folded in, if all tensors are present.
fn fold_bn(
    g: &Graph,
    fresh: &HashMap<ValueId, Tensor>,
    conv: &Node,
    bn_inputs: &[ValueId],
    eps: f32,
) -> Option<(Tensor, Tensor)> {
    let Op::Conv2d {
        params,
        act: None,
        residual: false,
    } = &conv.op
    else {
        return None;
    };
    let get = |id: ValueId| {
        fresh
            .get(&id)
            .or_else(|| g.tensors.get(&id))
            .and_then(|t| t.as_f32().ok())
    };
    let w = get(conv.inputs[1])?;
    let cout = params.out_channels;
    let stats: Vec<&[f32]> = bn_inputs[1..5]
        .iter()
        .map(|&i| get(i))
        .collect::<Option<_>>()?;
    if stats.iter().any(|s| s.len() != cout) {
        return None;
    }
    let (scale, shift) = batch_norm_affine(stats[0], stats[1], stats[2], stats[3], eps);
    let per = w.len() / cout;
    let nw: Vec<f32> = w
        .iter()
        .enumerate()
        .map(|(i, v)| v * scale[i / per])
        .collect();
    let old_b: Vec<f32> = match conv.inputs.get(2) {
        Some(&b) => get(b)?.to_vec(),
        None => vec![0.0; cout],
    };
    let nb: Vec<f32> = (0..cout).map(|c| old_b[c] * scale[c] + shift[c]).collect();
    let ws = g.values[conv.inputs[1].0]
        .shape
        .clone()
        .unwrap_or_else(|| vec![w.len()]);
    Some((
        Tensor::from_f32(ws, nw).ok()?,
        Tensor::from_f32(vec![cout], nb).ok()?,
    ))
}

/// The concatenated inputs of a `Concat` or `ConcatNorm` (the latter ends in four BN tensors).
fn concat_parts(n: &Node) -> usize {
    match n.op {
        Op::ConcatNorm { .. } => n.inputs.len().saturating_sub(4),
        _ => n.inputs.len(),
    }
}

/// How a value of the input graph is available in the rewritten one.
#[derive(Clone, Copy)]
enum Repr {
    Nchw(ValueId),
    /// Blocked value and its channel count.
    Blocked(ValueId, usize),
}

/// Rewrite for the blocked `NCHW16c` layout: convs with a blocked kernel (one group with at
/// least 16 input channels, or depthwise) and the pools, activations, adds and per-channel
/// multiplies around them run blocked; `ToBlocked` / `FromBlocked` are inserted only where the
/// layout changes. Everything else runs in NCHW as before. Run after
/// [`optimize_for_inference`].
pub fn to_blocked_layout(g: &Graph) -> Graph {
    use qvision_kernels::blocked::conv::BlockedConv;
    let mut out = Graph {
        name: g.name.clone(),
        values: g.values.clone(),
        nodes: Vec::with_capacity(g.nodes.len()),
        inputs: g.inputs.clone(),
        outputs: vec![],
        tensors: g.tensors.clone(),
    };
    let mut repr: HashMap<ValueId, Repr> = HashMap::new();
    let mut to_b: HashMap<ValueId, ValueId> = HashMap::new();
    let mut to_n: HashMap<ValueId, ValueId> = HashMap::new();
    let get =
        |repr: &HashMap<ValueId, Repr>, v: ValueId| repr.get(&v).copied().unwrap_or(Repr::Nchw(v));

    fn new_value(out: &mut Graph, name: String) -> ValueId {
        out.values.push(crate::ir::Value {
            name,
            kind: ValueKind::Const,
            dtype: DType::F32,
            shape: None,
        });
        ValueId(out.values.len() - 1)
    }
    fn push(out: &mut Graph, name: String, op: Op, inputs: Vec<ValueId>, output: ValueId) {
        out.push_node(name, op, inputs, vec![output]);
    }
    // NCHW view of an original value (FromBlocked inserted once).
    let nchw = |out: &mut Graph,
                repr: &HashMap<ValueId, Repr>,
                to_n: &mut HashMap<ValueId, ValueId>,
                v: ValueId| match get(repr, v) {
        Repr::Nchw(id) => id,
        Repr::Blocked(b, c) => *to_n.entry(b).or_insert_with(|| {
            let name = format!("{}.nchw", out.values[v.0].name);
            let o = new_value(out, name.clone());
            push(out, name, Op::FromBlocked { channels: c }, vec![b], o);
            o
        }),
    };
    // Blocked view of an original value with `c` channels (ToBlocked inserted once).
    let blocked = |out: &mut Graph,
                   repr: &HashMap<ValueId, Repr>,
                   to_b: &mut HashMap<ValueId, ValueId>,
                   v: ValueId| match get(repr, v) {
        Repr::Blocked(b, _) => b,
        Repr::Nchw(id) => *to_b.entry(id).or_insert_with(|| {
            let name = format!("{}.blocked", out.values[id.0].name);
            let o = new_value(out, name.clone());
            push(out, name, Op::ToBlocked, vec![id], o);
            o
        }),
    };
    let is_blocked =
        |repr: &HashMap<ValueId, Repr>, v: ValueId| matches!(get(repr, v), Repr::Blocked(..));
    let channels = |repr: &HashMap<ValueId, Repr>, v: ValueId| match get(repr, v) {
        Repr::Blocked(_, c) => c,
        Repr::Nchw(_) => 0,
    };

    for node in &g.nodes {
        let o0 = node.outputs[0];
        let rename = |out: &mut Graph| {
            let name = format!("{}.b", out.values[o0.0].name);
            new_value(out, name)
        };
        match &node.op {
            Op::Conv2d {
                params,
                act,
                residual,
            } if BlockedConv::supports(params) => {
                // fewer than 16 input channels (a stem): the kernel reads NCHW directly
                let x = if params.groups == 1 && params.in_channels < 16 {
                    nchw(&mut out, &repr, &mut to_n, node.inputs[0])
                } else {
                    blocked(&mut out, &repr, &mut to_b, node.inputs[0])
                };
                let mut ins = vec![x];
                let n_w = node.inputs.len() - usize::from(*residual);
                ins.extend_from_slice(&node.inputs[1..n_w]);
                if *residual {
                    ins.push(blocked(&mut out, &repr, &mut to_b, node.inputs[n_w]));
                }
                let o = rename(&mut out);
                let op = Op::ConvBlocked {
                    params: *params,
                    act: *act,
                    residual: *residual,
                };
                push(&mut out, node.name.clone(), op, ins, o);
                repr.insert(o0, Repr::Blocked(o, params.out_channels));
            }
            Op::Act(_)
            | Op::MaxPool2d(_)
            | Op::AvgPool2d { .. }
            | Op::AdaptiveAvgPool2d { .. }
            | Op::BatchNorm2d { .. }
            | Op::LayerNorm2d { .. }
                if is_blocked(&repr, node.inputs[0]) =>
            {
                let c = channels(&repr, node.inputs[0]);
                let mut ins = vec![blocked(&mut out, &repr, &mut to_b, node.inputs[0])];
                ins.extend_from_slice(&node.inputs[1..]);
                let o = rename(&mut out);
                push(&mut out, node.name.clone(), node.op.clone(), ins, o);
                repr.insert(o0, Repr::Blocked(o, c));
            }
            Op::Binary(_)
                if is_blocked(&repr, node.inputs[0])
                    && is_blocked(&repr, node.inputs[1])
                    && channels(&repr, node.inputs[0]) == channels(&repr, node.inputs[1]) =>
            {
                let c = channels(&repr, node.inputs[0]);
                let a = blocked(&mut out, &repr, &mut to_b, node.inputs[0]);
                let b = blocked(&mut out, &repr, &mut to_b, node.inputs[1]);
                let o = rename(&mut out);
                push(&mut out, node.name.clone(), node.op.clone(), vec![a, b], o);
                repr.insert(o0, Repr::Blocked(o, c));
            }
            Op::Q(crate::qop::QOp::Quantize { q, nhwc: true })
                if is_blocked(&repr, node.inputs[0]) =>
            {
                let op = crate::qop::QOp::QuantizeBlocked {
                    q: *q,
                    channels: channels(&repr, node.inputs[0]),
                };
                let x = blocked(&mut out, &repr, &mut to_b, node.inputs[0]);
                out.push_node(node.name.clone(), Op::Q(op), vec![x], node.outputs.clone());
            }
            Op::Concat { axis: 1 } | Op::ConcatNorm { .. }
                if node.inputs[..concat_parts(node)]
                    .iter()
                    .all(|&v| is_blocked(&repr, v) && channels(&repr, v) % 16 == 0) =>
            {
                let k = concat_parts(node);
                let c = node.inputs[..k].iter().map(|&v| channels(&repr, v)).sum();
                let mut ins: Vec<ValueId> = node.inputs[..k]
                    .iter()
                    .map(|&v| blocked(&mut out, &repr, &mut to_b, v))
                    .collect();
                ins.extend_from_slice(&node.inputs[k..]);
                let o = rename(&mut out);
                push(&mut out, node.name.clone(), node.op.clone(), ins, o);
                repr.insert(o0, Repr::Blocked(o, c));
            }
            _ => {
                let ins: Vec<ValueId> = node
                    .inputs
                    .iter()
                    .map(|&v| nchw(&mut out, &repr, &mut to_n, v))
                    .collect();
                out.push_node(
                    node.name.clone(),
                    node.op.clone(),
                    ins,
                    node.outputs.clone(),
                );
            }
        }
    }
    out.outputs = g
        .outputs
        .iter()
        .map(|&o| nchw(&mut out, &repr, &mut to_n, o))
        .collect();
    out
}
// Helpers of the fusion passes (`concat_norm`, `dw_project`).

/// A 1x1, stride-1, unpadded conv of one group: a per-pixel matrix product.
fn is_pointwise(p: &qvision_kernels::conv::Conv2dParams) -> bool {
    p.kernel == [1, 1] && p.stride == [1, 1] && p.padding == [0, 0] && p.groups == 1
}

/// Whether a value is read by exactly one node and is not a graph output.
fn single_reader(g: &Graph) -> impl Fn(ValueId) -> bool {
    let uses = g.use_counts();
    let outputs: HashSet<ValueId> = g.outputs.iter().copied().collect();
    move |v| uses[v.0] == 1 && !outputs.contains(&v)
}

/// The node that computes each value.
fn producers(g: &Graph) -> HashMap<ValueId, usize> {
    let mut producer = HashMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        for &o in &n.outputs {
            producer.insert(o, i);
        }
    }
    producer
}

/// `g` with node `i` replaced by `replace[i]` (name, op, inputs, output) and `skip`ped nodes
/// dropped.
fn rebuild(
    g: &Graph,
    mut replace: HashMap<usize, (String, Op, Vec<ValueId>, ValueId)>,
    skip: &HashSet<usize>,
) -> Graph {
    let mut out = Graph {
        name: g.name.clone(),
        values: g.values.clone(),
        nodes: Vec::with_capacity(g.nodes.len()),
        inputs: g.inputs.clone(),
        outputs: g.outputs.clone(),
        tensors: g.tensors.clone(),
    };
    for (i, n) in g.nodes.iter().enumerate() {
        if let Some((name, op, inputs, output)) = replace.remove(&i) {
            out.push_node(name, op, inputs, vec![output]);
        } else if !skip.contains(&i) {
            out.push_node(
                n.name.clone(),
                n.op.clone(),
                n.inputs.clone(),
                n.outputs.clone(),
            );
        }
    }
    out
}
