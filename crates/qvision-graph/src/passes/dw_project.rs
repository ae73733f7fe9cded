//! Fuse a blocked depthwise conv into the 1x1 conv that alone reads it: one
//! [`Op::DwProjectConv`]. Every MobileNetV2 inverted residual ends `dw -> ReLU6 -> project`;
//! at 112x112 and 56x56 the depthwise output (1.6-1.8 MB) does not fit a core's L2, and the
//! fused op never writes it out. Run after [`super::to_blocked_layout`].

use super::{is_pointwise, producers, rebuild, single_reader};
use crate::ir::Graph;
use crate::op::Op;
use std::collections::{HashMap, HashSet};

/// The graph with every fusable depthwise -> 1x1 pair as one node.
pub fn fuse_dw_project(g: &Graph) -> Graph {
    let single = single_reader(g);
    let producer = producers(g);
    let mut replace = HashMap::new();
    let mut skip = HashSet::new();
    for (i, n) in g.nodes.iter().enumerate() {
        let Op::ConvBlocked {
            params,
            act,
            residual,
        } = n.op
        else {
            continue;
        };
        // a dense 1x1 over whole blocked input (fewer than 16 channels read NCHW)
        let one_by_one = is_pointwise(&params) && params.in_channels >= 16;
        let x = n.inputs[0];
        let Some(&di) = producer.get(&x) else {
            continue;
        };
        let d = &g.nodes[di];
        let Op::ConvBlocked {
            params: dw,
            act: dw_act,
            residual: false,
        } = d.op
        else {
            continue;
        };
        let depthwise = dw.groups == dw.in_channels
            && dw.out_channels == dw.in_channels
            && dw.out_channels == params.in_channels;
        if !one_by_one || !depthwise || !single(x) {
            continue;
        }
        let mut inputs = d.inputs.clone();
        inputs.extend_from_slice(&n.inputs[1..]);
        let op = Op::DwProjectConv {
            dw,
            dw_act,
            dw_bias: d.inputs.len() == 3,
            params,
            act,
            bias: n.inputs.len() == 3 + residual as usize,
            residual,
        };
        skip.insert(di);
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

    /// A small MobileNetV2: stem, `dw -> project` (t = 1), an expanding block with a stride-2
    /// depthwise conv, a residual block; then a depthwise conv whose output is also read
    /// elsewhere and one followed by a 3x3 conv (neither fused).
    fn graph(h: usize, w: usize) -> Graph {
        let mut b = GraphBuilder::new("mnv2-ish");
        let x = b.input("input", &[2, 3, h, w]);
        let cbr = |b: &mut GraphBuilder, name: &str, x, c: Conv, cout, act: bool| {
            let y = b.conv2d(&format!("{name}.conv"), x, c.bias(false));
            let y = b.batch_norm(&format!("{name}.bn"), y, cout);
            if act {
                b.act(&format!("{name}.relu6"), y, Activation::Relu6)
            } else {
                y
            }
        };
        let x = cbr(
            &mut b,
            "stem",
            x,
            Conv::new(3, 32, 3).stride(2).pad(1),
            32,
            true,
        );
        let y = cbr(
            &mut b,
            "b1.dw",
            x,
            Conv::new(32, 32, 3).pad(1).groups(32),
            32,
            true,
        );
        let x = cbr(&mut b, "b1.pw", y, Conv::new(32, 16, 1), 16, false);
        let y = cbr(&mut b, "b2.ex", x, Conv::new(16, 96, 1), 96, true);
        let y = cbr(
            &mut b,
            "b2.dw",
            y,
            Conv::new(96, 96, 3).stride(2).pad(1).groups(96),
            96,
            true,
        );
        let x = cbr(&mut b, "b2.pw", y, Conv::new(96, 24, 1), 24, false);
        let y = cbr(&mut b, "b3.ex", x, Conv::new(24, 144, 1), 144, true);
        let y = cbr(
            &mut b,
            "b3.dw",
            y,
            Conv::new(144, 144, 5).pad(2).groups(144),
            144,
            true,
        );
        let y = cbr(&mut b, "b3.pw", y, Conv::new(144, 24, 1), 24, false);
        let x = b.add("b3.add", x, y);
        let y = cbr(
            &mut b,
            "side.dw",
            x,
            Conv::new(24, 24, 3).pad(1).groups(24),
            24,
            true,
        );
        let z = cbr(&mut b, "side.pw", y, Conv::new(24, 40, 1), 40, false);
        let t = cbr(
            &mut b,
            "tail.dw",
            x,
            Conv::new(24, 24, 3).pad(1).groups(24),
            24,
            false,
        );
        let t = cbr(&mut b, "tail.conv", t, Conv::new(24, 8, 3).pad(1), 8, false);
        b.finish(&[z, y, t])
    }

    #[test]
    fn fused_graph_runs_like_the_original() {
        // 40x36: every fused pair takes the staged path; 12x10: the small maps run the two
        // convs one after the other inside the fused op
        for (h, w) in [(40, 36), (12, 10)] {
            let mut g = graph(h, w);
            weights::init_formula(&mut g);
            let x = Tensor::from_f32(
                vec![2, 3, h, w],
                qvision_kernels::reference::pseudo_random(2 * 3 * h * w, 3),
            )
            .unwrap();
            let want = crate::testutil::run_unoptimized(&g, &x);
            let opts = SessionOptions {
                blocked: Some(true),
                ..Default::default()
            };
            let s = Session::new(&g, opts).unwrap();
            let fused: Vec<&str> = s
                .graph()
                .nodes
                .iter()
                .filter(|n| n.op.kind() == "DwProjectConv")
                .map(|n| n.name.as_str())
                .collect();
            // the residual block's add is fused into its 1x1 conv first
            assert_eq!(fused, ["b1.pw.conv", "b2.pw.conv", "b3.pw.conv"]);
            let got = s.run(vec![x.clone()]).unwrap();
            crate::testutil::assert_close(&got, &want, 1e-4);
        }
    }

    #[test]
    fn malformed_fused_nodes_are_refused() {
        let mut g = graph(40, 36);
        weights::init_formula(&mut g);
        let opts = SessionOptions {
            blocked: Some(true),
            ..Default::default()
        };
        let fused = Session::new(&g, opts).unwrap().graph().clone();
        // drop the residual input of the one with a residual: validation names the node
        let mut bad = fused.clone();
        let n = bad
            .nodes
            .iter_mut()
            .find(|n| matches!(n.op, Op::DwProjectConv { residual: true, .. }))
            .unwrap();
        n.inputs.pop();
        n.inputs.pop();
        let err = Session::new(&bad, SessionOptions::default()).err().unwrap();
        assert!(err.to_string().contains("b3.pw.conv"), "{err}");
    }
}
