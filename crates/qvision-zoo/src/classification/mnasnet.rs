//! MNASNet 0.5/0.75/1.0/1.3 (torchvision `models/mnasnet.py`).

use crate::common::pool_flatten;
use crate::ModelOptions;
use qvision_graph::builder::Conv;
use qvision_graph::{Activation, Graph, GraphBuilder, ValueId};

/// `_round_to_multiple_of(val, 8, round_up_bias=0.9)`.
fn round_to_8(v: f64) -> usize {
    let new = ((v + 4.0) as usize / 8 * 8).max(8);
    if new as f64 >= 0.9 * v {
        new
    } else {
        new + 8
    }
}

fn inverted_residual(
    b: &mut GraphBuilder,
    p: &str,
    x: ValueId,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    exp: usize,
) -> ValueId {
    let mid = cin * exp;
    let relu = Activation::Relu;
    let y = b.conv2d(
        &format!("{p}.layers.0"),
        x,
        Conv::new(cin, mid, 1).bias(false),
    );
    let y = b.batch_norm(&format!("{p}.layers.1"), y, mid);
    let y = b.act(&format!("{p}.layers.2"), y, relu);
    let y = b.conv2d(
        &format!("{p}.layers.3"),
        y,
        Conv::new(mid, mid, k)
            .pad(k / 2)
            .stride(stride)
            .groups(mid)
            .bias(false),
    );
    let y = b.batch_norm(&format!("{p}.layers.4"), y, mid);
    let y = b.act(&format!("{p}.layers.5"), y, relu);
    let y = b.conv2d(
        &format!("{p}.layers.6"),
        y,
        Conv::new(mid, cout, 1).bias(false),
    );
    let y = b.batch_norm(&format!("{p}.layers.7"), y, cout);
    if cin == cout && stride == 1 {
        b.add(&format!("{p}.add"), y, x)
    } else {
        y
    }
}

pub fn build(name: &str, opts: &ModelOptions) -> Graph {
    let alpha = match name {
        "mnasnet0_5" => 0.5,
        "mnasnet0_75" => 0.75,
        "mnasnet1_0" => 1.0,
        _ => 1.3,
    };
    let d: Vec<usize> = [32, 16, 24, 40, 80, 96, 192, 320]
        .iter()
        .map(|&c| round_to_8(c as f64 * alpha))
        .collect();
    let relu = Activation::Relu;
    let mut b = GraphBuilder::new(name);
    let x = b.input("input", &[1, 3, 224, 224]);
    let x = b.conv2d(
        "layers.0",
        x,
        Conv::new(3, d[0], 3).pad(1).stride(2).bias(false),
    );
    let x = b.batch_norm("layers.1", x, d[0]);
    let x = b.act("layers.2", x, relu);
    let x = b.conv2d(
        "layers.3",
        x,
        Conv::new(d[0], d[0], 3).pad(1).groups(d[0]).bias(false),
    );
    let x = b.batch_norm("layers.4", x, d[0]);
    let x = b.act("layers.5", x, relu);
    let x = b.conv2d("layers.6", x, Conv::new(d[0], d[1], 1).bias(false));
    let mut x = b.batch_norm("layers.7", x, d[1]);
    // (kernel, stride, expansion, repeats)
    let stacks = [
        (3, 2, 3, 3),
        (5, 2, 3, 3),
        (5, 2, 6, 3),
        (3, 1, 6, 2),
        (5, 2, 6, 4),
        (3, 1, 6, 1),
    ];
    for (i, &(k, s, e, r)) in stacks.iter().enumerate() {
        for j in 0..r {
            let (cin, stride) = if j == 0 { (d[i + 1], s) } else { (d[i + 2], 1) };
            x = inverted_residual(
                &mut b,
                &format!("layers.{}.{j}", i + 8),
                x,
                cin,
                d[i + 2],
                k,
                stride,
                e,
            );
        }
    }
    let x = b.conv2d("layers.14", x, Conv::new(d[7], 1280, 1).bias(false));
    let x = b.batch_norm("layers.15", x, 1280);
    let x = b.act("layers.16", x, relu);
    let x = pool_flatten(&mut b, x);
    let x = b.dropout("classifier.0", x, 0.2);
    let x = b.linear("classifier.1", x, 1280, opts.num_classes, true);
    b.finish(&[x])
}
