//! Quantization-aware training, the PyTorch way: [`prepare_qat`] attaches fake quantization to
//! a [`TrainGraph`], training proceeds as usual (observers and BatchNorm statistics can be frozen
//! after a set epoch), and [`convert`] produces the same int8 graph format as post-training
//! quantization, so `predict`, `eval`, `bench` and ONNX export take QAT models unchanged.
//!
//! Where the fake quantization goes follows what [`qvision_quant::convert`] will quantize: the
//! graph is fused exactly as `prepare` fuses it (Conv+BN+activation(+add), Linear+activation),
//! and every value the fused graph computes gets an activation fake-quant at the point where the
//! unfused graph finishes computing it, and so does the graph input where an int8 conv reads it
//! (a stem deep enough for `convert` to quantize: `qvision_quant::convert::stem_stays_fp32`).
//! Conv and linear weights are fake-quantized as `convert` quantizes them. Each Conv followed by
//! BatchNorm trains as PyTorch's `ConvBn2d`: the BatchNorm scale is folded into the weights
//! before fake quantization, and divided out again before the BatchNorm.

use crate::autograd::TrainGraph;
use crate::fake_quant::ActFakeQuant;
use crate::ops::Buf;
use crate::TrainError;
use qvision_graph::passes::{optimize_for_inference, optimize_for_inference_with_aliases};
use qvision_graph::{Graph, Op, ValueId, ValueKind};
use qvision_quant::convert::ConvertReport;
use qvision_quant::{QConfig, QConfigMapping, QuantParams};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Fake-quant state of a graph under QAT.
#[derive(Clone, Debug)]
pub struct QatState {
    pub qconfig: QConfig,
    pub mapping: QConfigMapping,
    /// Conv node index -> the BatchNorm node folded into it.
    pub(crate) conv_bn: HashMap<usize, usize>,
    /// Conv/linear node indices whose weights are fake-quantized.
    pub(crate) weight_fq: HashSet<usize>,
    /// Fake-quantized activations: value -> (name of the fused value it stands for, state).
    pub(crate) act: BTreeMap<ValueId, (String, ActFakeQuant)>,
    /// Observers update their ranges (PyTorch's `enable_observer` / `disable_observer`).
    pub observers_enabled: bool,
    /// Fake quantization is applied (PyTorch's `enable_fake_quant`).
    pub fake_quant_enabled: bool,
    /// Activation scales are learned (LSQ) instead of observed: see [`enable_lsq`].
    pub lsq: bool,
    shapes: BTreeMap<String, Vec<usize>>,
}

impl QatState {
    /// Observe (in training, unless frozen) and fake-quantize `b` if `v` carries a fake-quant.
    pub(crate) fn fake_quant_activation(
        &mut self,
        v: ValueId,
        b: &mut Buf,
        train: bool,
    ) -> Option<(Vec<bool>, Option<Vec<f32>>)> {
        let (name, fq) = self.act.get_mut(&v)?;
        if train && self.observers_enabled && fq.learned.is_none() {
            fq.observe(&b.data);
        }
        if !self.shapes.contains_key(name.as_str()) {
            self.shapes.insert(name.clone(), b.shape.clone());
        }
        if !self.fake_quant_enabled || !fq.seen {
            return None;
        }
        if self.lsq && train {
            // LSQ starts from the observed range, then learns the scale.
            let q = fq.qparams(&self.qconfig);
            fq.learned.get_or_insert((q.scale, q.zero_point));
            let (qmin, qmax) = self
                .qconfig
                .activation_dtype
                .range(self.qconfig.reduce_range);
            let (mask, factor) = crate::fake_quant::fake_quantize_lsq(
                &mut b.data,
                fq.qparams(&self.qconfig),
                qmin,
                qmax,
            );
            return Some((mask, Some(factor)));
        }
        Some((fq.apply(&mut b.data, &self.qconfig), None))
    }

    /// One optimizer step on the learned scale of activation `v` (LSQ).
    pub(crate) fn step_scale(
        &mut self,
        v: ValueId,
        grad: f32,
        opt: &mut crate::optim::Optimizer,
        lr: f32,
    ) {
        if let Some((name, fq)) = self.act.get_mut(&v) {
            if let Some((s, _)) = fq.learned.as_mut() {
                let mut p = [*s];
                opt.step(&format!("fake_quant.{name}.scale"), &mut p, &[grad], lr);
                *s = p[0].max(1e-8);
            }
        }
    }

    /// Activation quantization parameters by fused value name (what `convert` reads).
    pub fn activation_qparams(&self) -> BTreeMap<String, QuantParams> {
        self.act
            .values()
            .filter(|(_, fq)| fq.seen)
            .map(|(name, fq)| (name.clone(), fq.qparams(&self.qconfig)))
            .collect()
    }

    /// Observer states by fused value name (for checkpoints).
    pub fn observers(&self) -> BTreeMap<String, ActFakeQuant> {
        self.act
            .values()
            .map(|(n, f)| (n.clone(), f.clone()))
            .collect()
    }

    /// Restore observer states saved by [`Self::observers`].
    pub fn set_observers(&mut self, saved: &BTreeMap<String, ActFakeQuant>) {
        for (name, fq) in self.act.values_mut() {
            if let Some(s) = saved.get(name.as_str()) {
                *fq = s.clone();
            }
        }
    }

    /// How many activations and weights are fake-quantized, and how many Conv+BN pairs fold.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.act.len(), self.weight_fq.len(), self.conv_bn.len())
    }
}

/// PyTorch's `prepare_qat`: attach fake quantization (per `mapping`) to a training graph.
pub fn prepare_qat(
    tg: &mut TrainGraph,
    mapping: impl Into<QConfigMapping>,
) -> Result<(), TrainError> {
    let mapping = mapping.into();
    let g = &tg.graph;
    let (fused, alias) =
        optimize_for_inference_with_aliases(g).map_err(|e| TrainError::Graph(e.to_string()))?;
    let producer = producers(g);
    // Fused value -> the last original value that computes it.
    let mut last: HashMap<ValueId, ValueId> = HashMap::new();
    for (vi, v) in g.values.iter().enumerate() {
        if !matches!(v.kind, ValueKind::NodeOutput { .. }) {
            continue;
        }
        let id = ValueId(vi);
        let rep = alias.get(&id).copied().unwrap_or(id);
        let e = last.entry(rep).or_insert(id);
        if producer.get(&id) > producer.get(e) {
            *e = id;
        }
    }
    let mut act = BTreeMap::new();
    for n in &fused.nodes {
        if mapping.qconfig_for(&n.name, n.op.kind()).is_none()
            || qvision_quant::convert::keeps_input_qparams(&fused, n)
        {
            continue;
        }
        for o in &n.outputs {
            if fused.outputs.contains(o) {
                continue;
            }
            if let Some(&v) = last.get(o) {
                act.insert(v, (fused.values[o.0].name.clone(), ActFakeQuant::default()));
            }
        }
    }
    // The graph input, where an int8 conv or linear layer reads it (convert quantizes it there,
    // as PyTorch's QuantStub does).
    for &i in &g.inputs {
        let int8_reader = fused.nodes.iter().any(|n| {
            matches!(n.op, Op::Conv2d { .. } | Op::Linear { .. })
                && n.inputs.first() == Some(&i)
                && !qvision_quant::convert::stem_stays_fp32(n)
                && mapping.qconfig_for(&n.name, n.op.kind()).is_some()
        });
        if int8_reader {
            act.insert(i, (g.values[i.0].name.clone(), ActFakeQuant::default()));
        }
    }
    let uses = g.use_counts();
    let mut conv_bn = HashMap::new();
    let mut weight_fq = HashSet::new();
    for (i, n) in g.nodes.iter().enumerate() {
        match n.op {
            Op::Conv2d { .. } | Op::Linear { .. } => {
                let x = n.inputs[0];
                let stem_fp32 = g.inputs.contains(&alias.get(&x).copied().unwrap_or(x))
                    && qvision_quant::convert::stem_stays_fp32(n);
                if !stem_fp32 && mapping.qconfig_for(&n.name, n.op.kind()).is_some() {
                    weight_fq.insert(i);
                }
                if matches!(n.op, Op::Conv2d { .. }) && uses[n.outputs[0].0] == 1 {
                    let bn = g.nodes.iter().position(|m| {
                        matches!(m.op, Op::BatchNorm2d { .. }) && m.inputs[0] == n.outputs[0]
                    });
                    if let Some(bn) = bn {
                        conv_bn.insert(i, bn);
                    }
                }
            }
            _ => {}
        }
    }
    tg.qat = Some(QatState {
        qconfig: mapping.global,
        mapping,
        conv_bn,
        weight_fq,
        act,
        observers_enabled: true,
        fake_quant_enabled: true,
        lsq: false,
        shapes: BTreeMap::new(),
    });
    Ok(())
}

fn producers(g: &Graph) -> HashMap<ValueId, usize> {
    g.nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.outputs.iter().map(move |o| (*o, i)))
        .collect()
}

/// Learn the activation scales (LSQ, Esser et al. 2020) instead of observing them: each
/// fake-quant starts from its first observed range, then its scale is trained with the
/// weights (gradient scaled by `1/sqrt(n·(qmax-qmin))`); zero points stay fixed.
pub fn enable_lsq(tg: &mut TrainGraph) {
    if let Some(q) = tg.qat.as_mut() {
        q.lsq = true;
    }
}

/// PyTorch's `freeze_bn_stats`: BatchNorm uses (and stops updating) its running statistics.
pub fn freeze_bn_stats(tg: &mut TrainGraph) {
    tg.bn_frozen = true;
}

/// PyTorch's `disable_observer`: activation ranges stop moving.
pub fn freeze_observers(tg: &mut TrainGraph) {
    if let Some(q) = tg.qat.as_mut() {
        q.observers_enabled = false;
    }
}

/// PyTorch's `convert` after QAT: fold BatchNorm with the trained statistics, take activation
/// ranges from the fake-quant observers and weights as trained, and build the int8 graph.
pub fn convert(tg: &TrainGraph) -> Result<(Graph, ConvertReport), TrainError> {
    let q = tg.qat.as_ref().ok_or_else(|| {
        TrainError::Graph("convert after QAT needs a graph prepared with prepare_qat".into())
    })?;
    if q.act.values().all(|(_, f)| !f.seen) {
        return Err(TrainError::Graph(
            "no activation was observed: run at least one training step before convert".into(),
        ));
    }
    let prepared =
        optimize_for_inference(&tg.graph).map_err(|e| TrainError::Graph(e.to_string()))?;
    qvision_quant::convert::convert_with(&prepared, &q.activation_qparams(), &q.shapes, &q.mapping)
        .map_err(|e| TrainError::Graph(e.to_string()))
}
