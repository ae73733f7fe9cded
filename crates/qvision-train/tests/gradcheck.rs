//! Finite-difference gradient checks: for each op the zoo trains, the analytic gradients of
//! `L = Σ out ⊙ R` (R fixed and random) with respect to the input and every parameter agree
//! with central differences of the forward pass.

use qvision_graph::builder::{pool, Conv};
use qvision_graph::{Activation, Graph, GraphBuilder, Op, ValueId};
use qvision_kernels::elementwise::BinaryOp;
use qvision_tensor::{DType, Tensor};
use qvision_train::ops::Buf;
use qvision_train::rng::Rng;
use qvision_train::TrainGraph;

/// Fill every parameter with values in ±0.5 (variances positive, gammas near one).
fn randomize(g: &mut Graph, seed: u64) {
    let params: Vec<_> = g.params().map(|(id, v)| (id, v.clone())).collect();
    let mut rng = Rng::new(seed);
    for (id, v) in params {
        let shape = v.shape.clone().unwrap_or_default();
        let n: usize = shape.iter().product();
        if v.dtype == DType::I64 {
            g.tensors
                .insert(id, Tensor::from_i64(shape, vec![0; n]).unwrap());
            continue;
        }
        let data: Vec<f32> = (0..n)
            .map(|_| {
                let u = rng.range(-0.5, 0.5);
                if v.name.ends_with("running_var") {
                    0.5 + u.abs()
                } else if v.name.ends_with("weight") && shape.len() == 1 {
                    1.0 + u
                } else {
                    u
                }
            })
            .collect();
        g.tensors.insert(id, Tensor::from_f32(shape, data).unwrap());
    }
}

struct Check {
    eps: f32,
    frozen_bn: bool,
}

impl Default for Check {
    fn default() -> Self {
        Check {
            eps: 1e-2,
            frozen_bn: false,
        }
    }
}

fn loss(tg: &mut TrainGraph, x: &Buf, r: &[Vec<f32>]) -> f64 {
    let tape = tg.forward(vec![x.clone()], true, 7).unwrap();
    tape.outputs()
        .iter()
        .zip(r)
        .map(|(o, r)| {
            o.data
                .iter()
                .zip(r)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum::<f64>()
        })
        .sum()
}

/// Compare analytic and numeric gradients of the input and of every trainable parameter on up
/// to 24 coordinates each.
fn gradcheck(mut g: Graph, input: &[usize], c: Check) {
    randomize(&mut g, 11);
    let mut tg = TrainGraph::new(g, true).unwrap();
    tg.bn_frozen = c.frozen_bn;
    let mut rng = Rng::new(3);
    let n: usize = input.iter().product();
    let x = Buf::new(
        input.to_vec(),
        (0..n).map(|_| rng.range(-1.0, 1.0)).collect(),
    );
    let tape = tg.forward(vec![x.clone()], true, 7).unwrap();
    let r: Vec<Vec<f32>> = tape
        .outputs()
        .iter()
        .map(|o| (0..o.len()).map(|_| rng.range(-1.0, 1.0)).collect())
        .collect();
    let grads = tg.backward(&tape, r.clone()).unwrap();
    drop(tape);
    let input_id = tg.graph.inputs[0];
    let mut targets: Vec<ValueId> = vec![input_id];
    targets.extend(tg.trainable.iter().copied());
    let mut checked = 0;
    for v in targets {
        let name = tg.graph.values[v.0].name.clone();
        let an = grads
            .get(v)
            .unwrap_or_else(|| panic!("no gradient for '{name}'"))
            .to_vec();
        let len = an.len();
        let picks: Vec<usize> = if len <= 24 {
            (0..len).collect()
        } else {
            (0..24).map(|_| rng.below(len)).collect()
        };
        for i in picks {
            let (lp, lm) = if v == input_id {
                let mut xp = x.clone();
                xp.data[i] += c.eps;
                let mut xm = x.clone();
                xm.data[i] -= c.eps;
                (loss(&mut tg, &xp, &r), loss(&mut tg, &xm, &r))
            } else {
                let orig = tg.graph.tensors[&v].as_f32().unwrap()[i];
                tg.graph.tensors.get_mut(&v).unwrap().as_f32_mut().unwrap()[i] = orig + c.eps;
                let lp = loss(&mut tg, &x, &r);
                tg.graph.tensors.get_mut(&v).unwrap().as_f32_mut().unwrap()[i] = orig - c.eps;
                let lm = loss(&mut tg, &x, &r);
                tg.graph.tensors.get_mut(&v).unwrap().as_f32_mut().unwrap()[i] = orig;
                (lp, lm)
            };
            let num = (lp - lm) / (2.0 * c.eps as f64);
            let a = an[i] as f64;
            let tol = 2e-3 + 1e-2 * a.abs().max(num.abs());
            assert!(
                (a - num).abs() <= tol,
                "'{name}'[{i}]: analytic {a:.6} vs numeric {num:.6}"
            );
            checked += 1;
        }
    }
    assert!(checked > 0);
}

fn graph(f: impl FnOnce(&mut GraphBuilder, ValueId) -> Vec<ValueId>, input: &[usize]) -> Graph {
    let mut b = GraphBuilder::new("t");
    let x = b.input("input", input);
    let outs = f(&mut b, x);
    b.finish(&outs)
}

#[test]
fn conv_dense_strided_dilated_grouped_depthwise() {
    for (conv, shape) in [
        (Conv::new(3, 4, 3).pad(1), [2, 3, 6, 6]),
        (
            Conv::new(3, 5, 3).stride(2).pad(2).dilation(2).bias(false),
            [2, 3, 7, 7],
        ),
        (Conv::new(4, 6, 3).pad(1).groups(2), [2, 4, 5, 5]),
        (Conv::new(4, 4, 3).stride(2).pad(1).groups(4), [2, 4, 6, 6]),
        (
            Conv::new(4, 4, 5).pad(2).groups(4).bias(false),
            [1, 4, 5, 5],
        ),
        (Conv::new(4, 3, 1), [2, 4, 3, 3]),
        (Conv::new(2, 3, 1).kernel2(1, 3).pad2(0, 1), [2, 2, 4, 4]),
    ] {
        gradcheck(
            graph(|b, x| vec![b.conv2d("conv", x, conv)], &shape),
            &shape,
            Check::default(),
        );
    }
}

#[test]
fn batch_norm_train_and_frozen() {
    let s = [3, 4, 3, 3];
    for frozen_bn in [false, true] {
        gradcheck(
            graph(|b, x| vec![b.batch_norm("bn", x, 4)], &s),
            &s,
            Check {
                frozen_bn,
                ..Default::default()
            },
        );
    }
}

#[test]
fn linear_on_2d_and_channels_last() {
    gradcheck(
        graph(|b, x| vec![b.linear("fc", x, 5, 3, true)], &[4, 5]),
        &[4, 5],
        Check::default(),
    );
    gradcheck(
        graph(|b, x| vec![b.linear("fc", x, 4, 6, false)], &[2, 3, 3, 4]),
        &[2, 3, 3, 4],
        Check::default(),
    );
}

#[test]
fn activations() {
    for a in [
        Activation::Relu,
        Activation::Relu6,
        Activation::Hardswish,
        Activation::Hardsigmoid,
        Activation::Sigmoid,
        Activation::Silu,
        Activation::Gelu,
    ] {
        // Inputs spread over the interesting ranges (±4 reaches the hard-swish and ReLU6 edges).
        let s = [2, 3, 4, 4];
        let g = graph(
            |b, x| {
                let k = b.constant("k", Tensor::from_f32(vec![1], vec![4.0]).unwrap());
                let y = b.mul("scale", x, k);
                vec![b.act("act", y, a)]
            },
            &s,
        );
        gradcheck(
            g,
            &s,
            Check {
                eps: 1e-3,
                ..Default::default()
            },
        );
    }
}

#[test]
fn pools() {
    let s = [2, 3, 7, 7];
    gradcheck(
        graph(|b, x| vec![b.max_pool("mp", x, pool(3, 2, 1, false))], &s),
        &s,
        Check {
            eps: 1e-3,
            ..Default::default()
        },
    );
    gradcheck(
        graph(|b, x| vec![b.max_pool("mp", x, pool(2, 2, 0, true))], &s),
        &s,
        Check {
            eps: 1e-3,
            ..Default::default()
        },
    );
    gradcheck(
        graph(
            |b, x| vec![b.avg_pool("ap", x, pool(3, 2, 1, true), false)],
            &s,
        ),
        &s,
        Check::default(),
    );
    gradcheck(
        graph(
            |b, x| vec![b.avg_pool("ap", x, pool(3, 2, 1, false), true)],
            &s,
        ),
        &s,
        Check::default(),
    );
    gradcheck(
        graph(|b, x| vec![b.adaptive_avg_pool("gap", x, 3, 2)], &s),
        &s,
        Check::default(),
    );
    gradcheck(
        graph(|b, x| vec![b.adaptive_avg_pool("gap", x, 1, 1)], &s),
        &s,
        Check::default(),
    );
}

#[test]
fn binary_with_broadcasting() {
    let s = [2, 3, 4, 4];
    for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
        let g = graph(
            |b, x| {
                // per-channel operand from a pooled branch (SE-style), and a same-shape operand
                let p = b.adaptive_avg_pool("gap", x, 1, 1);
                let k = b.constant("two", Tensor::from_f32(vec![1], vec![2.0]).unwrap());
                let p = b.node1("shift", Op::Binary(BinaryOp::Add), &[p, k]);
                let y = b.node1("bin", Op::Binary(op), &[x, p]);
                let z = b.conv2d("conv", x, Conv::new(3, 3, 1));
                let z = b.node1("shift2", Op::Binary(BinaryOp::Add), &[z, k]);
                vec![b.node1("bin2", Op::Binary(op), &[y, z])]
            },
            &s,
        );
        gradcheck(g, &s, Check::default());
    }
}

#[test]
fn data_movement_ops() {
    let s = [2, 4, 3, 3];
    let g = graph(
        |b, x| {
            let parts = b.split("split", x, 1, &[1, 3]);
            let y = b.conv2d("conv", parts[1], Conv::new(3, 3, 1));
            let y = b.concat("cat", &[y, parts[0]], 1);
            let y = b.channel_shuffle("shuffle", y, 2);
            let y = b.permute("perm", y, &[0, 2, 3, 1]);
            let y = b.reshape("reshape", y, &[2, -1]);
            let f = b.flatten("flat", x, 1);
            vec![y, f]
        },
        &s,
    );
    gradcheck(g, &s, Check::default());
}

#[test]
fn layer_norm_softmax_dropout() {
    let s = [2, 3, 5];
    let g = graph(
        |b, x| {
            let y = b.layer_norm("ln", x, 5, 1e-6);
            let y = b.dropout("drop", y, 0.3);
            vec![b.node1("softmax", Op::Softmax, &[y])]
        },
        &s,
    );
    gradcheck(g, &s, Check::default());
}

#[test]
fn small_resnet_end_to_end() {
    let mut g = qvision_train::models::small_resnet(1, 10, 4, [12, 12]);
    g.name = "t".into();
    // Finite differences of a deep ReLU net cross kinks; the composition is checked with the
    // ReLUs swapped for SiLU (each ReLU backward is checked on its own above).
    for n in &mut g.nodes {
        if n.op == Op::Act(Activation::Relu) {
            n.op = Op::Act(Activation::Silu);
        }
    }
    gradcheck(g, &[2, 1, 12, 12], Check::default());
}

#[test]
fn cross_entropy_gradient() {
    let mut rng = Rng::new(5);
    let logits = Buf::new(vec![3, 4], (0..12).map(|_| rng.range(-2.0, 2.0)).collect());
    let labels = [1usize, 3, 0];
    for smoothing in [0.0f32, 0.1] {
        let (_, g, _) = qvision_train::loss::cross_entropy(&logits, &labels, smoothing);
        for (i, &gi) in g.iter().enumerate() {
            let mut p = logits.clone();
            p.data[i] += 1e-2;
            let mut m = logits.clone();
            m.data[i] -= 1e-2;
            let num = (qvision_train::loss::cross_entropy(&p, &labels, smoothing).0
                - qvision_train::loss::cross_entropy(&m, &labels, smoothing).0)
                / 2e-2;
            assert!((num - gi).abs() < 1e-3, "{i}: {num} vs {gi}");
        }
    }
}
