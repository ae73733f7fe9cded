//! `convert`: turn a calibrated fp32 graph into an int8 graph (PyTorch's `convert`).
//!
//! Every convolution whose input and output were observed becomes a `QConv2d` on u8 activations
//! (per-channel s8 weights, i32 bias, fused ReLU/ReLU6 and residual add). Everything else stays
//! fp32; `Quantize` / `Dequantize` appear only where the precision changes, so chains of convs
//! stay in int8. The report lists the fp32 islands.
//!
//! Graph inputs are not observed, so a stem conv reading the image stays fp32: quantizing the
//! normalised image cost MobileNetV2 a top-1 on the foolbox images and the int8 7x7 stem was
//! slower than the blocked fp32 one.

use crate::qparams::QuantParams;
use crate::quantize::{quantize_bias, quantize_weights_per_channel, quantize_weights_per_tensor};
use crate::QuantError;
use qvision_graph::{Activation, Graph, Op, Value, ValueId, ValueKind};
use qvision_tensor::{DType, Data, Tensor};
use std::collections::{BTreeMap, HashMap};

/// What `convert` did.
#[derive(Debug, Default, Clone)]
pub struct ConvertReport {
    /// Nodes now running in int8.
    pub int8: Vec<String>,
    /// Nodes left in fp32 (name, op kind), the "fp32 islands".
    pub fp32: Vec<(String, String)>,
}

#[derive(Clone, Copy)]
enum Repr {
    F32(ValueId),
    U8(ValueId, QuantParams),
}

/// Convert an optimized graph (as calibrated) with activation qparams keyed by value name;
/// weights follow `qconfig.weight_scheme` (per-channel for x86, per-tensor for arm).
pub fn convert(
    g: &Graph,
    act: &BTreeMap<String, QuantParams>,
    qconfig: &crate::qconfig::QConfig,
) -> Result<(Graph, ConvertReport), QuantError> {
    let mut out = Graph {
        name: g.name.clone(),
        values: g.values.clone(),
        nodes: Vec::with_capacity(g.nodes.len()),
        inputs: g.inputs.clone(),
        outputs: vec![],
        tensors: g.tensors.clone(),
    };
    let mut report = ConvertReport::default();
    let mut repr: HashMap<ValueId, Repr> = HashMap::new();
    let mut to_u8: HashMap<ValueId, ValueId> = HashMap::new();
    let mut to_f32: HashMap<ValueId, ValueId> = HashMap::new();

    fn value(out: &mut Graph, name: String, dtype: DType) -> ValueId {
        out.values.push(Value {
            name,
            kind: ValueKind::Const,
            dtype,
            shape: None,
        });
        ValueId(out.values.len() - 1)
    }
    fn constant(out: &mut Graph, name: String, t: Tensor) -> ValueId {
        let id = value(out, name, t.dtype());
        out.values[id.0].shape = Some(t.shape().to_vec());
        out.tensors.insert(id, t);
        id
    }
    fn push(out: &mut Graph, name: String, op: Op, inputs: Vec<ValueId>, output: ValueId) {
        out.push_node(name, op, inputs, vec![output]);
    }
    let get =
        |repr: &HashMap<ValueId, Repr>, v: ValueId| repr.get(&v).copied().unwrap_or(Repr::F32(v));
    let f32_view = |out: &mut Graph,
                    repr: &HashMap<ValueId, Repr>,
                    to_f32: &mut HashMap<ValueId, ValueId>,
                    v: ValueId| {
        match get(repr, v) {
            Repr::F32(id) => id,
            Repr::U8(id, q) => *to_f32.entry(id).or_insert_with(|| {
                let name = format!("{}.dequant", out.values[v.0].name);
                let o = value(out, name.clone(), DType::F32);
                push(
                    out,
                    name,
                    Op::Dequantize {
                        scale: q.scale,
                        zero_point: q.zero_point,
                    },
                    vec![id],
                    o,
                );
                o
            }),
        }
    };
    let u8_view = |out: &mut Graph,
                   repr: &HashMap<ValueId, Repr>,
                   to_u8: &mut HashMap<ValueId, ValueId>,
                   v: ValueId,
                   q: QuantParams| match get(repr, v) {
        Repr::U8(id, _) => id,
        Repr::F32(id) => *to_u8.entry(id).or_insert_with(|| {
            let name = format!("{}.quant", out.values[v.0].name);
            let o = value(out, name.clone(), DType::U8);
            push(
                out,
                name,
                Op::Quantize {
                    scale: q.scale,
                    zero_point: q.zero_point,
                },
                vec![id],
                o,
            );
            o
        }),
    };
    let qp_of = |v: ValueId, repr: &HashMap<ValueId, Repr>| match get(repr, v) {
        Repr::U8(_, q) => Some(q),
        Repr::F32(_) => act.get(&g.values[v.0].name).copied(),
    };

    for node in &g.nodes {
        if let Op::Conv2d {
            params,
            act: a,
            residual,
        } = &node.op
        {
            let relu = matches!(a, Some(Activation::Relu) | Some(Activation::Relu6));
            let x = node.inputs[0];
            let y = node.outputs[0];
            let res_in = residual.then(|| node.inputs[node.inputs.len() - 1]);
            let qx = qp_of(x, &repr);
            let qy = act.get(&g.values[y.0].name).copied();
            let qr = res_in.map(|r| qp_of(r, &repr));
            if let (true, Some(qx), Some(qy), None | Some(Some(_))) =
                (a.is_none() || relu, qx, qy, qr)
            {
                let wt = g
                    .tensor(node.inputs[1])
                    .map_err(|e| QuantError::Shape(e.to_string()))?;
                let w = wt.as_f32().map_err(|e| QuantError::Shape(e.to_string()))?;
                let (wq, sw) = if qconfig.weight_scheme.is_per_channel() {
                    quantize_weights_per_channel(w, params.out_channels)?
                } else {
                    quantize_weights_per_tensor(w, params.out_channels)?
                };
                let n_w = node.inputs.len() - usize::from(*residual);
                let b: Vec<f32> = if n_w == 3 {
                    g.tensor(node.inputs[2])
                        .map_err(|e| QuantError::Shape(e.to_string()))?
                        .as_f32()
                        .map_err(|e| QuantError::Shape(e.to_string()))?
                        .to_vec()
                } else {
                    vec![0.0; params.out_channels]
                };
                let bq = quantize_bias(&b, qx.scale, &sw);
                let xin = u8_view(&mut out, &repr, &mut to_u8, x, qx);
                let wid = constant(
                    &mut out,
                    format!("{}.weight(s8)", node.name),
                    Tensor::new(wt.shape().to_vec(), Data::I8(wq))
                        .map_err(|e| QuantError::Shape(e.to_string()))?,
                );
                let bid = constant(
                    &mut out,
                    format!("{}.bias(i32)", node.name),
                    Tensor::new(vec![params.out_channels], Data::I32(bq))
                        .map_err(|e| QuantError::Shape(e.to_string()))?,
                );
                let sid = constant(
                    &mut out,
                    format!("{}.weight_scale", node.name),
                    Tensor::from_f32(vec![params.out_channels], sw)
                        .map_err(|e| QuantError::Shape(e.to_string()))?,
                );
                let mut ins = vec![xin, wid, bid, sid];
                let mut rq = None;
                if let (Some(r), Some(Some(q))) = (res_in, qr) {
                    ins.push(u8_view(&mut out, &repr, &mut to_u8, r, q));
                    rq = Some((q.scale, q.zero_point));
                }
                let o = value(&mut out, format!("{}(u8)", g.values[y.0].name), DType::U8);
                let op = Op::QConv2d {
                    params: *params,
                    input: (qx.scale, qx.zero_point),
                    output: (qy.scale, qy.zero_point),
                    residual: rq,
                    relu,
                };
                push(&mut out, node.name.clone(), op, ins, o);
                repr.insert(y, Repr::U8(o, qy));
                report.int8.push(node.name.clone());
                continue;
            }
        }
        let ins: Vec<ValueId> = node
            .inputs
            .iter()
            .map(|&v| f32_view(&mut out, &repr, &mut to_f32, v))
            .collect();
        out.push_node(
            node.name.clone(),
            node.op.clone(),
            ins,
            node.outputs.clone(),
        );
        report
            .fp32
            .push((node.name.clone(), node.op.kind().to_string()));
    }
    out.outputs = g
        .outputs
        .iter()
        .map(|&o| f32_view(&mut out, &repr, &mut to_f32, o))
        .collect();
    out.retain_used_tensors();
    Ok((out, report))
}
