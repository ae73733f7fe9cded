//! Fuse `Concat(axis 1) -> BatchNorm2d -> activation` (each value read once) into one
//! [`Op::ConcatNorm`]: DenseNet normalises the concatenation of all earlier features before
//! every layer, and the fused op writes the normalised concatenation in one pass instead of a
//! copy, a BatchNorm pass and an activation pass. Run after
//! [`super::optimize_for_inference`] (BatchNorms that fold into a conv are gone by then).

use super::{is_pointwise, producers, rebuild, single_reader};
use crate::ir::{Graph, ValueId};
use crate::op::Op;
use std::collections::{HashMap, HashSet};

/// The graph with every fusable concat-norm(-act) chain as one node.
pub fn fuse_concat_norm(g: &Graph) -> Graph {
    let single = single_reader(g);
    let producer = producers(g);
    let mut reader: HashMap<ValueId, usize> = HashMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        for &v in &n.inputs {
            reader.insert(v, i);
        }
    }
    // node index -> the fused node that replaces it; fused-away nodes are skipped
    let mut replace = HashMap::new();
    let mut skip = HashSet::new();
    for (i, n) in g.nodes.iter().enumerate() {
        let Op::BatchNorm2d { eps } = n.op else {
            continue;
        };
        let x = n.inputs[0];
        let Some(&ci) = producer.get(&x) else {
            continue;
        };
        if !single(x) || !matches!(g.nodes[ci].op, Op::Concat { axis: 1 }) {
            continue;
        }
        let y = n.outputs[0];
        let act = reader
            .get(&y)
            .filter(|_| single(y))
            .and_then(|&ai| match g.nodes[ai].op {
                Op::Act(a) => Some((ai, a)),
                _ => None,
            });
        let mut inputs = g.nodes[ci].inputs.clone();
        inputs.extend_from_slice(&n.inputs[1..]);
        let (at, output, act) = match act {
            Some((ai, a)) => (ai, g.nodes[ai].outputs[0], Some(a)),
            None => (i, y, None),
        };
        skip.extend([ci, i]);
        skip.remove(&at);
        let node = (n.name.clone(), Op::ConcatNorm { eps, act }, inputs, output);
        replace.insert(at, node);
    }
    rebuild(g, replace, &skip)
}

/// Fuse a blocked 1x1 `ConvBlocked` (stride 1, unpadded, one group, no residual) into
/// the `ConcatNorm` it alone reads: one [`Op::ConcatNormConv`]. Run after
/// [`super::to_blocked_layout`].
pub fn fuse_concat_norm_conv(g: &Graph) -> Graph {
    let single = single_reader(g);
    let producer = producers(g);
    let mut replace = HashMap::new();
    let mut skip = HashSet::new();
    for (i, n) in g.nodes.iter().enumerate() {
        let Op::ConvBlocked {
            params,
            act,
            residual: false,
        } = n.op
        else {
            continue;
        };
        let x = n.inputs[0];
        let one_by_one = is_pointwise(&params);
        let Some(&ci) = producer.get(&x) else {
            continue;
        };
        let Op::ConcatNorm { eps, act: norm_act } = g.nodes[ci].op else {
            continue;
        };
        if !one_by_one || !single(x) {
            continue;
        }
        let mut inputs = g.nodes[ci].inputs.clone();
        inputs.extend_from_slice(&n.inputs[1..]);
        let op = Op::ConcatNormConv {
            eps,
            norm_act,
            params,
            act,
            bias: n.inputs.len() == 3,
        };
        skip.insert(ci);
        replace.insert(i, (n.name.clone(), op, inputs, n.outputs[0]));
    }
    rebuild(g, replace, &skip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::Conv;
    use crate::{weights, GraphBuilder, Session, SessionOptions};
    use qvision_kernels::Activation;
    use qvision_tensor::Tensor;

    /// Two dense layers (concat -> BN -> ReLU -> 3x3 conv), a transition (concat -> BN -> ReLU
    /// -> 1x1 conv without bias), and a concatenation also read elsewhere (not fused).
    fn graph(c0: usize) -> Graph {
        let mut b = GraphBuilder::new("dense");
        let x = b.input("input", &[2, 3, 13, 12]);
        let x = b.conv2d("stem", x, Conv::new(3, c0, 3).pad(1));
        let mut feats = vec![x];
        let mut c = c0;
        for i in 0..2 {
            let cat = b.concat(&format!("l{i}.cat"), &feats, 1);
            let y = b.batch_norm(&format!("l{i}.norm"), cat, c);
            let y = b.act(&format!("l{i}.relu"), y, Activation::Relu);
            let y = b.conv2d(&format!("l{i}.conv"), y, Conv::new(c, 32, 3).pad(1));
            feats.push(y);
            c += 32;
        }
        let cat = b.concat("tail.cat", &feats, 1);
        let y = b.batch_norm("tail.norm", cat, c);
        let y = b.act("tail.relu", y, Activation::Relu);
        let y = b.conv2d("tail.conv", y, Conv::new(c, 24, 1).bias(false));
        let side = b.concat("side.cat", &feats[1..], 1);
        let z = b.batch_norm("side.norm", side, 64);
        let z = b.add("side.add", z, side);
        b.finish(&[y, z])
    }

    #[test]
    fn fused_graph_runs_like_the_original() {
        for c0 in [16, 20] {
            let mut g = graph(c0);
            weights::init_formula(&mut g);
            let opt = crate::passes::optimize_for_inference(&g).unwrap();
            let fused = fuse_concat_norm(&opt);
            let kinds: Vec<&str> = fused.nodes.iter().map(|n| n.op.kind()).collect();
            assert_eq!(
                kinds.iter().filter(|k| **k == "ConcatNorm").count(),
                3,
                "{kinds:?}"
            );
            assert_eq!(
                kinds.iter().filter(|k| **k == "Concat").count(),
                1,
                "{kinds:?}"
            );
            assert!(!kinds.contains(&"ReLU"), "{kinds:?}");
            let x = Tensor::from_f32(
                vec![2, 3, 13, 12],
                qvision_kernels::reference::pseudo_random(2 * 3 * 156, 3),
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
                // blocked parts (whole blocks): the tail's 1x1 conv reads the concatenation
                // tile by tile
                let staged = blocked && c0 % 16 == 0;
                assert_eq!(kinds.contains(&"ConcatNormConv"), staged, "{kinds:?}");
                let got = s.run(vec![x.clone()]).unwrap();
                crate::testutil::assert_close(&got, &want, 1e-4);
            }
        }
    }
}
