//! Reverse-mode automatic differentiation over the graph IR.
//!
//! [`TrainGraph`] runs a [`Graph`] (unfused: Conv, BatchNorm and activations as separate
//! nodes, as the zoo builds it) in training mode — BatchNorm on batch statistics with running
//! statistics updated, Dropout active — and records a [`Tape`] of every value and what each op
//! saved. [`TrainGraph::backward`] walks the nodes in reverse and returns the gradient of every
//! trainable parameter (and, on request, of the inputs).
//!
//! With quantization-aware training ([`crate::qat`]) the same walk fake-quantizes the
//! activations that the int8 graph will hold, fake-quantizes conv and linear weights, and runs
//! each Conv+BatchNorm pair with the BatchNorm folded into the conv weights
//! (PyTorch's `ConvBn2d`).

use crate::ops::{self, accumulate, Buf};
use crate::qat::QatState;
use crate::rng::Rng;
use crate::TrainError;
use qvision_graph::{Graph, Node, Op, ValueId, ValueKind};
use qvision_tensor::{DType, Tensor};
use std::borrow::Cow;
use std::collections::HashMap;

/// What one node saved for its backward.
#[derive(Debug)]
enum Saved {
    Nothing,
    /// Weights actually used (fake-quantized) when they differ from the parameter.
    Weight(Vec<f32>),
    /// Conv with BatchNorm folded in: per-channel scale and the weights used.
    ConvBn {
        scale: Vec<f32>,
        w_used: Vec<f32>,
    },
    MaxIdx(Vec<u32>),
    Bn(ops::norm::BnSaved, bool),
    Ln(Vec<(f32, f32)>),
    Dropout(Vec<f32>),
}

/// Every value computed by a forward pass and what the backward needs.
#[derive(Debug)]
pub struct Tape {
    values: Vec<Option<Buf>>,
    saved: Vec<Saved>,
    /// Straight-through masks of fake-quantized activations.
    masks: HashMap<ValueId, Vec<bool>>,
    /// LSQ: per element, `d x_q / d scale` of learned-scale activations.
    lsq: HashMap<ValueId, Vec<f32>>,
    outputs: Vec<ValueId>,
}

impl Tape {
    /// The graph outputs.
    pub fn outputs(&self) -> Vec<&Buf> {
        self.outputs
            .iter()
            .filter_map(|o| self.values[o.0].as_ref())
            .collect()
    }

    /// A value computed in the forward pass.
    pub fn value(&self, v: ValueId) -> Option<&Buf> {
        self.values.get(v.0).and_then(Option::as_ref)
    }
}

/// Gradients by value.
#[derive(Debug, Default)]
pub struct Grads {
    pub by_value: HashMap<ValueId, Vec<f32>>,
    /// LSQ: gradient of each learned activation scale.
    pub scales: HashMap<ValueId, f32>,
}

impl Grads {
    pub fn get(&self, v: ValueId) -> Option<&[f32]> {
        self.by_value.get(&v).map(Vec::as_slice)
    }
}

/// A graph prepared for training.
pub struct TrainGraph {
    pub graph: Graph,
    /// Learnable parameters (not BatchNorm buffers), in declaration order.
    pub trainable: Vec<ValueId>,
    /// Set by `prepare_qat`.
    pub qat: Option<QatState>,
    /// BatchNorm uses its running statistics even in training (PyTorch's `freeze_bn_stats`).
    pub bn_frozen: bool,
    /// BatchNorm momentum for the running statistics.
    pub bn_momentum: f32,
    need: Vec<bool>,
    /// Input shapes already checked by shape inference.
    checked: Option<Vec<Vec<usize>>>,
}

fn is_buffer(name: &str) -> bool {
    name.ends_with("running_mean")
        || name.ends_with("running_var")
        || name.ends_with("num_batches_tracked")
}

impl TrainGraph {
    /// Check that every op can be trained and every parameter is loaded. `input_grads` also
    /// computes the gradient of the graph inputs (for gradient checks).
    pub fn new(graph: Graph, input_grads: bool) -> Result<Self, TrainError> {
        graph
            .validate()
            .map_err(|e| TrainError::Graph(e.to_string()))?;
        for n in &graph.nodes {
            check_trainable(n)?;
        }
        let mut trainable = vec![];
        for (id, v) in graph.params() {
            if is_buffer(&v.name) {
                continue;
            }
            let t = graph.tensors.get(&id).ok_or_else(|| {
                TrainError::Graph(format!(
                    "parameter '{}' has no value; load weights or initialise them first",
                    v.name
                ))
            })?;
            if t.dtype() == DType::F32 {
                trainable.push(id);
            }
        }
        let mut need = vec![false; graph.values.len()];
        for &p in &trainable {
            need[p.0] = true;
        }
        if input_grads {
            for &i in &graph.inputs {
                need[i.0] = true;
            }
        }
        for n in &graph.nodes {
            if n.inputs.iter().any(|i| need[i.0]) {
                for o in &n.outputs {
                    need[o.0] = true;
                }
            }
        }
        Ok(TrainGraph {
            graph,
            trainable,
            qat: None,
            bn_frozen: false,
            bn_momentum: 0.1,
            need,
            checked: None,
        })
    }

    /// Every parameter and buffer under its state-dict key (what `qvision train` saves).
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.graph
            .params()
            .filter_map(|(id, v)| {
                self.graph
                    .tensors
                    .get(&id)
                    .map(|t| (v.name.clone(), t.clone()))
            })
            .collect()
    }

    fn param(&self, v: ValueId) -> Result<&[f32], TrainError> {
        self.graph
            .tensors
            .get(&v)
            .and_then(|t| t.as_f32().ok())
            .ok_or_else(|| {
                TrainError::Graph(format!(
                    "'{}' is not an f32 parameter or constant",
                    self.graph.values[v.0].name
                ))
            })
    }

    fn param_mut(&mut self, v: ValueId) -> Result<&mut [f32], TrainError> {
        let name = self.graph.values[v.0].name.clone();
        self.graph
            .tensors
            .get_mut(&v)
            .and_then(|t| t.as_f32_mut().ok())
            .ok_or_else(|| TrainError::Graph(format!("'{name}' is not an f32 buffer")))
    }

    /// Run the graph. `train` selects training behaviour (batch statistics, dropout, observer
    /// updates); `seed` drives dropout.
    pub fn forward(
        &mut self,
        inputs: Vec<Buf>,
        train: bool,
        seed: u64,
    ) -> Result<Tape, TrainError> {
        let g_inputs = self.graph.inputs.clone();
        if inputs.len() != g_inputs.len() {
            return Err(TrainError::Graph(format!(
                "graph '{}' takes {} inputs, got {}",
                self.graph.name,
                g_inputs.len(),
                inputs.len()
            )));
        }
        // Shape inference first, so a batch the graph cannot take is an error naming the node
        // (once per distinct input shape).
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|b| b.shape.clone()).collect();
        if self.checked.as_ref() != Some(&shapes) {
            qvision_graph::exec::infer_shapes(&self.graph, &shapes)
                .map_err(|e| TrainError::Graph(e.to_string()))?;
            self.checked = Some(shapes);
        }
        let mut values: Vec<Option<Buf>> = vec![None; self.graph.values.len()];
        for (id, mut b) in g_inputs.iter().zip(inputs) {
            // a quantized graph input (no gradient flows into the data, so no mask is kept)
            if let Some(q) = self.qat.as_mut() {
                q.fake_quant_activation(*id, &mut b, train);
            }
            values[id.0] = Some(b);
        }
        let mut saved = Vec::with_capacity(self.graph.nodes.len());
        let mut masks = HashMap::new();
        let mut lsq = HashMap::new();
        for ni in 0..self.graph.nodes.len() {
            let node = self.graph.nodes[ni].clone();
            let t0 = std::time::Instant::now();
            let (outs, s) = self
                .forward_node(ni, &node, &values, train, seed)
                .map_err(|e| e.at(&node))?;
            crate::profile::record("fwd", node.op.kind(), t0);
            saved.push(s);
            for (o, mut b) in node.outputs.iter().zip(outs) {
                if let Some(q) = self.qat.as_mut() {
                    if let Some((mask, factor)) = q.fake_quant_activation(*o, &mut b, train) {
                        masks.insert(*o, mask);
                        if let Some(f) = factor {
                            lsq.insert(*o, f);
                        }
                    }
                }
                values[o.0] = Some(b);
            }
        }
        Ok(Tape {
            values,
            saved,
            masks,
            lsq,
            outputs: self.graph.outputs.clone(),
        })
    }

    fn input<'a>(
        &'a self,
        values: &'a [Option<Buf>],
        v: ValueId,
    ) -> Result<BufRef<'a>, TrainError> {
        if let Some(b) = &values[v.0] {
            return Ok(BufRef::Value(b));
        }
        match self.graph.values[v.0].kind {
            ValueKind::Param { .. } | ValueKind::Const => {
                let t = self.graph.tensors.get(&v).ok_or_else(|| {
                    TrainError::Graph(format!("'{}' has no value", self.graph.values[v.0].name))
                })?;
                Ok(BufRef::Tensor(t))
            }
            _ => Err(TrainError::Graph(format!(
                "'{}' was not computed",
                self.graph.values[v.0].name
            ))),
        }
    }

    fn forward_node(
        &mut self,
        ni: usize,
        node: &Node,
        values: &[Option<Buf>],
        train: bool,
        seed: u64,
    ) -> Result<(Vec<Buf>, Saved), TrainError> {
        let x = |i: usize| -> Result<Cow<'_, Buf>, TrainError> {
            self.input(values, node.inputs[i])?.to_cow()
        };
        let opt = |i: usize| node.inputs.get(i).copied();
        Ok(match &node.op {
            Op::Conv2d { params, .. } => {
                let xb = x(0)?;
                let w = self.param(node.inputs[1])?;
                let b = match opt(2) {
                    Some(b) => Some(self.param(b)?),
                    None => None,
                };
                let qat = self.qat.as_ref();
                if let Some(&bn) = qat.and_then(|q| q.conv_bn.get(&ni)) {
                    let scale = self.bn_scale(bn)?;
                    let cout = params.out_channels;
                    let per = w.len() / cout;
                    let mut ws: Vec<f32> = w
                        .iter()
                        .enumerate()
                        .map(|(i, v)| v * scale[i / per])
                        .collect();
                    if let Some(q) =
                        qat.filter(|q| q.fake_quant_enabled && q.weight_fq.contains(&ni))
                    {
                        ws = crate::fake_quant::fake_quant_weight(&ws, cout, &q.qconfig);
                    }
                    let mut y = ops::conv::forward(&xb, &ws, None, params);
                    let ohw = y.len() / (y.shape[0] * cout);
                    for (k, plane) in y.data.chunks_mut(ohw.max(1)).enumerate() {
                        let c = k % cout;
                        let (inv, add) = (1.0 / scale[c], b.map_or(0.0, |b| b[c]));
                        plane.iter_mut().for_each(|v| *v = *v * inv + add);
                    }
                    (vec![y], Saved::ConvBn { scale, w_used: ws })
                } else if let Some(q) =
                    qat.filter(|q| q.fake_quant_enabled && q.weight_fq.contains(&ni))
                {
                    let wq =
                        crate::fake_quant::fake_quant_weight(w, params.out_channels, &q.qconfig);
                    (
                        vec![ops::conv::forward(&xb, &wq, b, params)],
                        Saved::Weight(wq),
                    )
                } else {
                    (vec![ops::conv::forward(&xb, w, b, params)], Saved::Nothing)
                }
            }
            Op::Linear { .. } => {
                let xb = x(0)?;
                let w = self.param(node.inputs[1])?;
                let out_f = self.graph.tensors[&node.inputs[1]].shape()[0];
                let b = match opt(2) {
                    Some(b) => Some(self.param(b)?),
                    None => None,
                };
                if let Some(q) = self
                    .qat
                    .as_ref()
                    .filter(|q| q.fake_quant_enabled && q.weight_fq.contains(&ni))
                {
                    let wq = crate::fake_quant::fake_quant_weight(w, out_f, &q.qconfig);
                    (
                        vec![ops::linear::forward(&xb, &wq, b, out_f)],
                        Saved::Weight(wq),
                    )
                } else {
                    (vec![ops::linear::forward(&xb, w, b, out_f)], Saved::Nothing)
                }
            }
            Op::BatchNorm2d { eps } => {
                let xb = x(0)?;
                let gamma = self.param(node.inputs[1])?.to_vec();
                let beta = self.param(node.inputs[2])?.to_vec();
                if train && !self.bn_frozen {
                    let m = self.bn_momentum;
                    let mut rm = self.param(node.inputs[3])?.to_vec();
                    let mut rv = self.param(node.inputs[4])?.to_vec();
                    let (y, s) =
                        ops::norm::train_forward(&xb, &gamma, &beta, &mut rm, &mut rv, *eps, m);
                    self.param_mut(node.inputs[3])?.copy_from_slice(&rm);
                    self.param_mut(node.inputs[4])?.copy_from_slice(&rv);
                    let nbt = self
                        .graph
                        .param_id(&format!("{}.num_batches_tracked", node.name));
                    if let Some(Ok(v)) = nbt
                        .and_then(|id| self.graph.tensors.get_mut(&id))
                        .map(|t| t.as_i64_mut())
                    {
                        v.iter_mut().for_each(|c| *c += 1);
                    }
                    (vec![y], Saved::Bn(s, true))
                } else {
                    let mean = self.param(node.inputs[3])?.to_vec();
                    let invstd: Vec<f32> = self
                        .param(node.inputs[4])?
                        .iter()
                        .map(|v| 1.0 / (v + eps).sqrt())
                        .collect();
                    let y = ops::norm::affine(&xb, &mean, &invstd, &gamma, &beta);
                    (
                        vec![y],
                        Saved::Bn(ops::norm::BnSaved { mean, invstd }, false),
                    )
                }
            }
            Op::Act(a) => {
                let xb = x(0)?;
                let y = ops::act::forward(*a, &xb.data);
                (vec![Buf::new(xb.shape.clone(), y)], Saved::Nothing)
            }
            Op::MaxPool2d(p) => {
                let (y, idx) = ops::pool::max_forward(x(0)?.as_ref(), p);
                (vec![y], Saved::MaxIdx(idx))
            }
            Op::AvgPool2d {
                pool,
                count_include_pad,
            } => (
                vec![
                    ops::pool::avg_forward(x(0)?.as_ref(), pool, *count_include_pad)
                        .map_err(TrainError::Graph)?,
                ],
                Saved::Nothing,
            ),
            Op::AdaptiveAvgPool2d { output } => (
                vec![ops::pool::adaptive_forward(x(0)?.as_ref(), *output)
                    .map_err(TrainError::Graph)?],
                Saved::Nothing,
            ),
            Op::Binary(op) => (
                vec![ops::binary::forward(*op, x(0)?.as_ref(), x(1)?.as_ref())
                    .map_err(TrainError::Graph)?],
                Saved::Nothing,
            ),
            Op::Concat { axis } => {
                let xs: Vec<Cow<'_, Buf>> =
                    (0..node.inputs.len()).map(x).collect::<Result<_, _>>()?;
                let refs: Vec<&Buf> = xs.iter().map(|c| c.as_ref()).collect();
                (vec![ops::shape::concat(&refs, *axis)?], Saved::Nothing)
            }
            Op::Split { axis, sizes } => (
                ops::shape::split(x(0)?.as_ref(), *axis, sizes)?,
                Saved::Nothing,
            ),
            Op::Flatten { .. } | Op::Reshape { .. } => {
                let xb = x(0)?;
                let shape = node
                    .op
                    .infer_shapes(&[&xb.shape])
                    .map_err(TrainError::Graph)?
                    .remove(0);
                (vec![Buf::new(shape, xb.into_owned().data)], Saved::Nothing)
            }
            Op::Permute { perm } => (
                vec![ops::shape::permute(x(0)?.as_ref(), perm)?],
                Saved::Nothing,
            ),
            Op::LayerNorm { eps } => {
                let xb = x(0)?;
                let (y, st) = ops::norm::layer_norm_forward(
                    &xb,
                    self.param(node.inputs[1])?,
                    self.param(node.inputs[2])?,
                    *eps,
                );
                (vec![y], Saved::Ln(st))
            }
            Op::Softmax => (
                vec![ops::norm::softmax_forward(x(0)?.as_ref())],
                Saved::Nothing,
            ),
            Op::Dropout { p } => {
                let mut xb = x(0)?.into_owned();
                if train && *p > 0.0 {
                    let mut rng = Rng::derive(seed, 0xD0, ni as u64);
                    let keep = 1.0 - p;
                    let mask: Vec<f32> = (0..xb.len())
                        .map(|_| {
                            if rng.uniform() < keep {
                                1.0 / keep
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    xb.data.iter_mut().zip(&mask).for_each(|(v, m)| *v *= m);
                    (vec![xb], Saved::Dropout(mask))
                } else {
                    (vec![xb], Saved::Nothing)
                }
            }
            Op::ChannelShuffle { groups } => (
                vec![ops::shape::channel_shuffle(x(0)?.as_ref(), *groups, false)?],
                Saved::Nothing,
            ),
            other => {
                return Err(TrainError::Unsupported(other.kind().to_string()));
            }
        })
    }

    /// `gamma / sqrt(running_var + eps)` of the BatchNorm node `bn` (the ConvBn fold factor).
    fn bn_scale(&self, bn: usize) -> Result<Vec<f32>, TrainError> {
        let n = &self.graph.nodes[bn];
        let Op::BatchNorm2d { eps } = n.op else {
            return Err(TrainError::Graph(format!(
                "'{}' is not a BatchNorm",
                n.name
            )));
        };
        let gamma = self.param(n.inputs[1])?;
        let rv = self.param(n.inputs[4])?;
        Ok(gamma
            .iter()
            .zip(rv)
            .map(|(g, v)| {
                let s = g / (v + eps).sqrt();
                if s.abs() < 1e-12 {
                    1e-12f32.copysign(s)
                } else {
                    s
                }
            })
            .collect())
    }

    /// Gradients of every trainable parameter (and input, if asked for at construction) given
    /// the gradients of the graph outputs.
    pub fn backward(&self, tape: &Tape, grad_outputs: Vec<Vec<f32>>) -> Result<Grads, TrainError> {
        let mut grads: Vec<Option<Vec<f32>>> = vec![None; self.graph.values.len()];
        let mut scale_grads = HashMap::new();
        // LSQ's gradient scale uses the number of quantization steps.
        let qrange = self.qat.as_ref().map_or(255.0, |q| {
            let (lo, hi) = q.qconfig.activation_dtype.range(q.qconfig.reduce_range);
            (hi - lo) as f32
        });
        for (o, g) in self.graph.outputs.iter().zip(grad_outputs) {
            add_grad(&mut grads, *o, g);
        }
        for ni in (0..self.graph.nodes.len()).rev() {
            let node = &self.graph.nodes[ni];
            if !node.inputs.iter().any(|i| self.need[i.0]) {
                continue;
            }
            let mut douts: Vec<Option<Vec<f32>>> =
                node.outputs.iter().map(|o| grads[o.0].take()).collect();
            if douts.iter().all(Option::is_none) {
                continue;
            }
            for (o, d) in node.outputs.iter().zip(douts.iter_mut()) {
                if let (Some(d), Some(f)) = (d.as_ref(), tape.lsq.get(o)) {
                    let g: f32 = d.iter().zip(f).map(|(a, b)| a * b).sum();
                    scale_grads.insert(*o, g / (d.len() as f32 * qrange).sqrt());
                }
                if let (Some(d), Some(mask)) = (d.as_mut(), tape.masks.get(o)) {
                    d.iter_mut().zip(mask).for_each(|(g, &m)| {
                        if !m {
                            *g = 0.0
                        }
                    });
                }
            }
            let t0 = std::time::Instant::now();
            let (ins, extra) = self
                .backward_node(ni, node, tape, douts)
                .map_err(|e| e.at(node))?;
            crate::profile::record("bwd", node.op.kind(), t0);
            for (i, g) in ins {
                if self.need[node.inputs[i].0] {
                    add_grad(&mut grads, node.inputs[i], g);
                }
            }
            if let Some((v, g)) = extra.filter(|(v, _)| self.need[v.0]) {
                add_grad(&mut grads, v, g);
            }
        }
        let mut out = Grads {
            scales: scale_grads,
            ..Default::default()
        };
        for (i, g) in grads.into_iter().enumerate() {
            if let Some(g) = g {
                let keep =
                    self.trainable.contains(&ValueId(i)) || self.graph.inputs.contains(&ValueId(i));
                if keep {
                    out.by_value.insert(ValueId(i), g);
                }
            }
        }
        Ok(out)
    }

    /// Gradients of the node's inputs, as `(input index, gradient)`.
    fn backward_node(
        &self,
        ni: usize,
        node: &Node,
        tape: &Tape,
        mut douts: Vec<Option<Vec<f32>>>,
    ) -> Result<NodeGrads, TrainError> {
        let val = |i: usize| -> Result<Cow<'_, Buf>, TrainError> {
            self.input(&tape.values, node.inputs[i])?.to_cow()
        };
        let need = |i: usize| node.inputs.get(i).is_some_and(|v| self.need[v.0]);
        let out_shape = |k: usize| -> Vec<usize> {
            tape.values[node.outputs[k].0]
                .as_ref()
                .map(|b| b.shape.clone())
                .unwrap_or_default()
        };
        let dy = |douts: &mut Vec<Option<Vec<f32>>>, k: usize| -> Vec<f32> {
            douts[k]
                .take()
                .unwrap_or_else(|| vec![0.0; out_shape(k).iter().product()])
        };
        let mut r = vec![];
        match (&node.op, &tape.saved[ni]) {
            (Op::Conv2d { params, .. }, saved) => {
                let xb = val(0)?;
                let mut g = dy(&mut douts, 0);
                let w = self.param(node.inputs[1])?;
                if node.inputs.len() > 2 && need(2) {
                    let ohw = g.len() / (xb.shape[0] * params.out_channels);
                    let mut db = vec![0.0; params.out_channels];
                    for (k, plane) in g.chunks(ohw.max(1)).enumerate() {
                        db[k % params.out_channels] += plane.iter().sum::<f32>();
                    }
                    r.push((2, db));
                }
                match saved {
                    Saved::ConvBn { scale, w_used } => {
                        let cout = params.out_channels;
                        let ohw = g.len() / (xb.shape[0] * cout);
                        // y = raw / scale + b, so d(scale) = -Σ dy·raw/scale² = -Σ dy·(y-b)/scale
                        // (taken before dy is rescaled).
                        let y = tape.values[node.outputs[0].0]
                            .as_ref()
                            .ok_or_else(|| TrainError::Graph("conv output missing".into()))?;
                        let bias = match node.inputs.get(2) {
                            Some(&b) => Some(self.param(b)?),
                            None => None,
                        };
                        let mut dscale = vec![0.0f32; cout];
                        for (k, (gp, yp)) in g
                            .chunks_mut(ohw.max(1))
                            .zip(y.data.chunks(ohw.max(1)))
                            .enumerate()
                        {
                            let c = k % cout;
                            let b = bias.map_or(0.0, |b| b[c]);
                            let dot: f32 = gp.iter().zip(yp).map(|(a, v)| a * (v - b)).sum();
                            dscale[c] -= dot / scale[c];
                            let inv = 1.0 / scale[c];
                            gp.iter_mut().for_each(|v| *v *= inv);
                        }
                        let (dx, dws, _) =
                            ops::conv::backward(&xb, w_used, params, &g, need(0), false);
                        let per = w.len() / cout;
                        let mut dw = vec![0.0; w.len()];
                        for i in 0..w.len() {
                            dw[i] = dws[i] * scale[i / per];
                            dscale[i / per] += dws[i] * w[i];
                        }
                        r.push((1, dw));
                        if let Some(dx) = dx {
                            r.push((0, dx));
                        }
                        // scale = gamma / sqrt(running_var + eps): the gradient reaches gamma.
                        let bn = self.qat.as_ref().and_then(|q| q.conv_bn.get(&ni)).copied();
                        if let Some(bn) = bn {
                            let bnn = &self.graph.nodes[bn];
                            if let Op::BatchNorm2d { eps } = bnn.op {
                                let rv = self.param(bnn.inputs[4])?;
                                let dgamma: Vec<f32> = dscale
                                    .iter()
                                    .zip(rv)
                                    .map(|(d, v)| d / (v + eps).sqrt())
                                    .collect();
                                return Ok((r, Some((bnn.inputs[1], dgamma))));
                            }
                        }
                    }
                    saved => {
                        let w_used = match saved {
                            Saved::Weight(wq) => wq.as_slice(),
                            _ => w,
                        };
                        let (dx, dw, _) =
                            ops::conv::backward(&xb, w_used, params, &g, need(0), false);
                        r.push((1, dw));
                        if let Some(dx) = dx {
                            r.push((0, dx));
                        }
                    }
                }
            }
            (Op::Linear { .. }, saved) => {
                let xb = val(0)?;
                let g = dy(&mut douts, 0);
                let w = match saved {
                    Saved::Weight(wq) => wq.as_slice(),
                    _ => self.param(node.inputs[1])?,
                };
                let out_f = self.graph.tensors[&node.inputs[1]].shape()[0];
                let (dx, dw, db) = ops::linear::backward(&xb, w, &g, out_f);
                r.extend([(0, dx), (1, dw)]);
                if node.inputs.len() > 2 {
                    r.push((2, db));
                }
            }
            (Op::BatchNorm2d { .. }, Saved::Bn(s, batch)) => {
                let xb = val(0)?;
                let g = dy(&mut douts, 0);
                let gamma = self.param(node.inputs[1])?;
                let (dx, dg, db) = ops::norm::backward(&xb, s, gamma, &g, *batch);
                r.extend([(0, dx), (1, dg), (2, db)]);
            }
            (Op::Act(a), _) => {
                let xb = val(0)?;
                r.push((0, ops::act::backward(*a, &xb.data, &dy(&mut douts, 0))));
            }
            (Op::MaxPool2d(_), Saved::MaxIdx(idx)) => {
                let xb = val(0)?;
                r.push((
                    0,
                    ops::pool::max_backward(xb.len(), idx, &dy(&mut douts, 0)),
                ));
            }
            (
                Op::AvgPool2d {
                    pool,
                    count_include_pad,
                },
                _,
            ) => {
                let xb = val(0)?;
                r.push((
                    0,
                    ops::pool::avg_backward(
                        &xb.shape,
                        pool,
                        *count_include_pad,
                        &dy(&mut douts, 0),
                    ),
                ));
            }
            (Op::AdaptiveAvgPool2d { output }, _) => {
                let xb = val(0)?;
                r.push((
                    0,
                    ops::pool::adaptive_backward(&xb.shape, *output, &dy(&mut douts, 0)),
                ));
            }
            (Op::Binary(op), _) => {
                let (a, b) = (val(0)?, val(1)?);
                let (da, db) = ops::binary::backward(*op, &a, &b, &dy(&mut douts, 0));
                r.extend([(0, da), (1, db)]);
            }
            (Op::Concat { axis }, _) => {
                let sizes: Vec<usize> = (0..node.inputs.len())
                    .map(|i| val(i).map(|b| b.shape[*axis]))
                    .collect::<Result<_, _>>()?;
                let g = Buf::new(out_shape(0), dy(&mut douts, 0));
                for (i, part) in ops::shape::split(&g, *axis, &sizes)?
                    .into_iter()
                    .enumerate()
                {
                    r.push((i, part.data));
                }
            }
            (Op::Split { axis, .. }, _) => {
                let parts: Vec<Buf> = (0..node.outputs.len())
                    .map(|k| Buf::new(out_shape(k), dy(&mut douts, k)))
                    .collect();
                let refs: Vec<&Buf> = parts.iter().collect();
                r.push((0, ops::shape::concat(&refs, *axis)?.data));
            }
            (Op::Flatten { .. } | Op::Reshape { .. }, _) => r.push((0, dy(&mut douts, 0))),
            (Op::Permute { perm }, _) => {
                let g = Buf::new(out_shape(0), dy(&mut douts, 0));
                r.push((
                    0,
                    ops::shape::permute(&g, &ops::shape::inverse_perm(perm))?.data,
                ));
            }
            (Op::LayerNorm { .. }, Saved::Ln(st)) => {
                let xb = val(0)?;
                let (dx, dg, db) = ops::norm::layer_norm_backward(
                    &xb,
                    st,
                    self.param(node.inputs[1])?,
                    &dy(&mut douts, 0),
                );
                r.extend([(0, dx), (1, dg), (2, db)]);
            }
            (Op::Softmax, _) => {
                let y = tape.values[node.outputs[0].0]
                    .as_ref()
                    .ok_or_else(|| TrainError::Graph("softmax output missing".into()))?;
                r.push((0, ops::norm::softmax_backward(y, &dy(&mut douts, 0))));
            }
            (Op::Dropout { .. }, saved) => {
                let mut g = dy(&mut douts, 0);
                if let Saved::Dropout(mask) = saved {
                    g.iter_mut().zip(mask).for_each(|(v, m)| *v *= m);
                }
                r.push((0, g));
            }
            (Op::ChannelShuffle { groups }, _) => {
                let g = Buf::new(out_shape(0), dy(&mut douts, 0));
                r.push((0, ops::shape::channel_shuffle(&g, *groups, true)?.data));
            }
            (op, _) => return Err(TrainError::Unsupported(op.kind().to_string())),
        }
        Ok((r, None))
    }
}

/// Gradients of a node's inputs as `(input index, gradient)`, plus one for a value that is not
/// an input (a folded BatchNorm's gamma, reached through a ConvBn's fold factor).
type NodeGrads = (Vec<(usize, Vec<f32>)>, Option<(ValueId, Vec<f32>)>);

fn add_grad(grads: &mut [Option<Vec<f32>>], v: ValueId, g: Vec<f32>) {
    match &mut grads[v.0] {
        Some(acc) => accumulate(acc, &g),
        slot => *slot = Some(g),
    }
}

/// An op input: a computed value or a parameter tensor.
enum BufRef<'a> {
    Value(&'a Buf),
    Tensor(&'a Tensor),
}

impl<'a> BufRef<'a> {
    fn to_cow(&self) -> Result<Cow<'a, Buf>, TrainError> {
        match self {
            BufRef::Value(b) => Ok(Cow::Borrowed(*b)),
            BufRef::Tensor(t) => Ok(Cow::Owned(Buf::new(
                t.shape().to_vec(),
                t.as_f32()
                    .map_err(|e| TrainError::Graph(e.to_string()))?
                    .to_vec(),
            ))),
        }
    }
}

fn check_trainable(n: &Node) -> Result<(), TrainError> {
    let fused = match &n.op {
        Op::Conv2d { act, residual, .. } => act.is_some() || *residual,
        Op::Linear { act } => act.is_some(),
        Op::BatchNorm2d { .. }
        | Op::Act(_)
        | Op::MaxPool2d(_)
        | Op::AvgPool2d { .. }
        | Op::AdaptiveAvgPool2d { .. }
        | Op::Binary(_)
        | Op::Concat { .. }
        | Op::Split { .. }
        | Op::Flatten { .. }
        | Op::Reshape { .. }
        | Op::Permute { .. }
        | Op::LayerNorm { .. }
        | Op::Softmax
        | Op::Dropout { .. }
        | Op::ChannelShuffle { .. } => false,
        other => {
            return Err(TrainError::Unsupported(format!(
                "{} (node '{}'): training runs on fp32 graphs",
                other.kind(),
                n.name
            )))
        }
    };
    if fused {
        return Err(TrainError::Graph(format!(
            "node '{}' has a fused activation or residual: train the unfused graph (build without `quantize`, before `optimize_for_inference`)",
            n.name
        )));
    }
    Ok(())
}
