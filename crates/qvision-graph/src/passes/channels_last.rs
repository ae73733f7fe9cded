//! Sink channels-last permutes (`Permute[0, 2, 3, 1]`) through the ops that have a
//! channels-first equivalent, so a ConvNeXt block (`permute -> LayerNorm -> Linear -> GELU ->
//! Linear -> permute back`) runs as `LayerNorm2d -> 1x1 conv -> GELU -> 1x1 conv` on NCHW (and
//! then blocked) data, with no transposes.
//!
//! A permute's output is kept *pending*: each reader that has a channels-first form (LayerNorm
//! over the last axis, Linear, an activation) is rewritten to read the NCHW value and its own
//! output becomes pending in turn; the inverse permute (`[0, 3, 1, 2]`) of a pending value is
//! that NCHW value. Any other reader, or a graph output, gets the permute emitted just before
//! it. The rewrite is exact: the same sums over the same channels.

use crate::ir::{Graph, Value, ValueId, ValueKind};
use crate::op::Op;
use qvision_kernels::conv::Conv2dParams;
use qvision_tensor::Tensor;
use std::collections::HashMap;

const TO_NHWC: [usize; 4] = [0, 2, 3, 1];
const TO_NCHW: [usize; 4] = [0, 3, 1, 2];

/// The graph with channels-last permutes sunk as far as they go; unused permutes vanish.
pub fn sink_channels_last(g: &Graph) -> Graph {
    let mut out = Graph {
        name: g.name.clone(),
        values: g.values.clone(),
        nodes: Vec::with_capacity(g.nodes.len()),
        inputs: g.inputs.clone(),
        outputs: vec![],
        tensors: g.tensors.clone(),
    };
    let mut s = Sink {
        pending: HashMap::new(),
        alias: HashMap::new(),
    };
    for node in &g.nodes {
        let inputs: Vec<ValueId> = node.inputs.iter().map(|&v| s.resolve(v)).collect();
        let o = node.outputs[0];
        let first = s.pending.get(&inputs[0]).map(|p| p.nchw);
        match (&node.op, first) {
            (Op::Permute { perm }, None) if perm[..] == TO_NHWC => {
                s.pending.insert(
                    o,
                    Pending {
                        nchw: inputs[0],
                        name: node.name.clone(),
                    },
                );
                continue;
            }
            (Op::Permute { perm }, Some(u)) if perm[..] == TO_NCHW => {
                s.alias.insert(o, u);
                continue;
            }
            (Op::LayerNorm { eps }, Some(u)) if !s.is_pending(&inputs[1..]) => {
                let y = nchw_value(&mut out, o);
                let ins = vec![u, inputs[1], inputs[2]];
                out.push_node(
                    node.name.clone(),
                    Op::LayerNorm2d { eps: *eps },
                    ins,
                    vec![y],
                );
                s.defer(o, y, &node.name);
                continue;
            }
            (Op::Act(a), Some(u)) => {
                let y = nchw_value(&mut out, o);
                out.push_node(node.name.clone(), Op::Act(*a), vec![u], vec![y]);
                s.defer(o, y, &node.name);
                continue;
            }
            (Op::Linear { act }, Some(u)) if !s.is_pending(&inputs[1..]) => {
                if let Some((params, w)) = as_conv(g, inputs[1]) {
                    let name = format!("{}.weight(1x1)", node.name);
                    let wid = super::push_const(&mut out.values, &name, &w);
                    out.tensors.insert(wid, w);
                    let mut ins = vec![u, wid];
                    ins.extend(inputs.get(2).copied());
                    let y = nchw_value(&mut out, o);
                    let op = Op::Conv2d {
                        params,
                        act: *act,
                        residual: false,
                    };
                    out.push_node(node.name.clone(), op, ins, vec![y]);
                    s.defer(o, y, &node.name);
                    continue;
                }
            }
            _ => {}
        }
        let ins = inputs.iter().map(|&v| s.emit(&mut out, v)).collect();
        out.push_node(
            node.name.clone(),
            node.op.clone(),
            ins,
            node.outputs.clone(),
        );
    }
    out.outputs = g
        .outputs
        .iter()
        .map(|&v| {
            let v = s.resolve(v);
            s.emit(&mut out, v)
        })
        .collect();
    out.retain_used_tensors();
    out
}

/// A value that is `Permute[0, 2, 3, 1]` of `nchw`, not yet computed.
struct Pending {
    nchw: ValueId,
    /// Name for the permute node, if it has to be emitted.
    name: String,
}

struct Sink {
    pending: HashMap<ValueId, Pending>,
    /// Values equal to another (an inverse permute of a pending value).
    alias: HashMap<ValueId, ValueId>,
}

impl Sink {
    fn resolve(&self, mut v: ValueId) -> ValueId {
        while let Some(&a) = self.alias.get(&v) {
            v = a;
        }
        v
    }

    fn is_pending(&self, vs: &[ValueId]) -> bool {
        vs.iter().any(|v| self.pending.contains_key(v))
    }

    /// `v` (an original value) is the channels-last view of the new NCHW value `nchw`.
    fn defer(&mut self, v: ValueId, nchw: ValueId, name: &str) {
        let name = format!("{name}.to_nhwc");
        self.pending.insert(v, Pending { nchw, name });
    }

    /// `v` as a computed value: a pending one gets its permute emitted (once).
    fn emit(&mut self, out: &mut Graph, v: ValueId) -> ValueId {
        if let Some(p) = self.pending.remove(&v) {
            let perm = TO_NHWC.to_vec();
            out.push_node(p.name, Op::Permute { perm }, vec![p.nchw], vec![v]);
        }
        v
    }
}

/// A new value for the NCHW form of channels-last value `v`.
fn nchw_value(out: &mut Graph, v: ValueId) -> ValueId {
    let orig = &out.values[v.0];
    let shape = orig.shape.as_ref().and_then(|s| match s[..] {
        [n, h, w, c] => Some(vec![n, c, h, w]),
        _ => None,
    });
    let value = Value {
        name: format!("{}.nchw", orig.name),
        kind: ValueKind::Const,
        dtype: orig.dtype,
        shape,
    };
    out.values.push(value);
    ValueId(out.values.len() - 1)
}

/// A linear layer's constant `[out, in]` weight as a 1x1 conv's `[out, in, 1, 1]`.
fn as_conv(g: &Graph, w: ValueId) -> Option<(Conv2dParams, Tensor)> {
    let t = g.tensors.get(&w)?;
    let [o, i] = <[usize; 2]>::try_from(t.shape()).ok()?;
    let params = Conv2dParams {
        in_channels: i,
        out_channels: o,
        kernel: [1, 1],
        stride: [1, 1],
        padding: [0, 0],
        dilation: [1, 1],
        groups: 1,
    };
    let data = t.as_f32().ok()?.to_vec();
    Some((params, Tensor::from_f32(vec![o, i, 1, 1], data).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::Conv;
    use crate::{weights, GraphBuilder, Session, SessionOptions};
    use qvision_kernels::Activation;

    /// A ConvNeXt block, a LayerNorm2d, and a channels-last value that is also a graph output
    /// and feeds an op with no channels-first form (flatten).
    fn graph() -> Graph {
        let mut b = GraphBuilder::new("cn");
        let x = b.input("input", &[2, 24, 5, 6]);
        let y = b.conv2d("dw", x, Conv::new(24, 24, 7).pad(3).groups(24));
        let y = b.permute("p1", y, &TO_NHWC);
        let y = b.layer_norm("ln", y, 24, 1e-6);
        let y = b.linear("fc1", y, 24, 96, true);
        let y = b.act("gelu", y, Activation::Gelu);
        let y = b.linear("fc2", y, 96, 24, true);
        let y = b.permute("p2", y, &TO_NCHW);
        let s = b.param("layer_scale", &[24, 1, 1]);
        let y = b.mul("mul", y, s);
        let y = b.add("add", y, x);
        let z = b.permute("ln2d.to_nhwc", y, &TO_NHWC);
        let z = b.layer_norm("ln2d", z, 24, 1e-6);
        let z = b.permute("ln2d.to_nchw", z, &TO_NCHW);
        let z = b.conv2d("down", z, Conv::new(24, 32, 2).stride(2));
        let t = b.permute("t", z, &TO_NHWC);
        let t = b.act("relu", t, Activation::Relu);
        let u = b.flatten("flatten", t, 1);
        b.finish(&[t, u])
    }

    #[test]
    fn sunk_graph_runs_like_the_original() {
        let mut g = graph();
        weights::init_formula(&mut g);
        let sunk = sink_channels_last(&g);
        let kinds: Vec<&str> = sunk.nodes.iter().map(|n| n.op.kind()).collect();
        // one permute left: the one feeding the flatten and the first output
        assert_eq!(
            kinds.iter().filter(|k| **k == "Permute").count(),
            1,
            "{kinds:?}"
        );
        assert_eq!(kinds.iter().filter(|k| **k == "LayerNorm2d").count(), 2);
        assert!(!kinds.contains(&"Linear") && !kinds.contains(&"LayerNorm"));
        let x = Tensor::from_f32(
            vec![2, 24, 5, 6],
            qvision_kernels::reference::pseudo_random(2 * 24 * 30, 9),
        )
        .unwrap();
        let want = crate::testutil::run_unoptimized(&g, &x);
        for blocked in [false, true] {
            let opts = SessionOptions {
                blocked: Some(blocked),
                ..Default::default()
            };
            let s = Session::new(&g, opts).unwrap();
            let kinds: Vec<&str> = s.graph().nodes.iter().map(|n| n.op.kind()).collect();
            // the layer scale and the residual add are folded into the second 1x1 conv
            assert!(
                !kinds.contains(&"Mul") && !kinds.contains(&"Add"),
                "{kinds:?}"
            );
            let got = s.run(vec![x.clone()]).unwrap();
            crate::testutil::assert_close(&got, &want, 1e-4);
        }
    }
}
