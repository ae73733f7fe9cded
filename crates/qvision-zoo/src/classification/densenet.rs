//! DenseNet 121/161/169/201 (torchvision `models/densenet.py`).

use crate::common::pool_flatten;
use crate::ModelOptions;
use qvision_graph::builder::{pool, Conv};
use qvision_graph::{Activation, Graph, GraphBuilder};

pub fn build(name: &str, opts: &ModelOptions) -> Graph {
    let (growth, blocks, init): (usize, &[usize], usize) = match name {
        "densenet121" => (32, &[6, 12, 24, 16], 64),
        "densenet161" => (48, &[6, 12, 36, 24], 96),
        "densenet169" => (32, &[6, 12, 32, 32], 64),
        _ => (32, &[6, 12, 48, 32], 64),
    };
    let bn_size = 4;
    let relu = Activation::Relu;
    let mut b = GraphBuilder::new(name);
    let x = b.input("input", &[1, 3, 224, 224]);
    let x = b.conv2d(
        "features.conv0",
        x,
        Conv::new(3, init, 7).stride(2).pad(3).bias(false),
    );
    let x = b.batch_norm("features.norm0", x, init);
    let x = b.act("features.relu0", x, relu);
    let mut x = b.max_pool("features.pool0", x, pool(3, 2, 1, false));
    let mut nf = init;
    for (bi, &layers) in blocks.iter().enumerate() {
        let mut feats = vec![x];
        for li in 0..layers {
            let p = format!("features.denseblock{}.denselayer{}", bi + 1, li + 1);
            let cin = nf + li * growth;
            let inp = if feats.len() == 1 {
                feats[0]
            } else {
                b.concat(&format!("{p}.cat"), &feats, 1)
            };
            let y = b.batch_norm(&format!("{p}.norm1"), inp, cin);
            let y = b.act(&format!("{p}.relu1"), y, relu);
            let y = b.conv2d(
                &format!("{p}.conv1"),
                y,
                Conv::new(cin, bn_size * growth, 1).bias(false),
            );
            let y = b.batch_norm(&format!("{p}.norm2"), y, bn_size * growth);
            let y = b.act(&format!("{p}.relu2"), y, relu);
            let y = b.conv2d(
                &format!("{p}.conv2"),
                y,
                Conv::new(bn_size * growth, growth, 3).pad(1).bias(false),
            );
            feats.push(y);
        }
        nf += layers * growth;
        x = b.concat(&format!("features.denseblock{}.cat", bi + 1), &feats, 1);
        if bi + 1 != blocks.len() {
            let p = format!("features.transition{}", bi + 1);
            let y = b.batch_norm(&format!("{p}.norm"), x, nf);
            let y = b.act(&format!("{p}.relu"), y, relu);
            let y = b.conv2d(
                &format!("{p}.conv"),
                y,
                Conv::new(nf, nf / 2, 1).bias(false),
            );
            x = b.avg_pool(&format!("{p}.pool"), y, pool(2, 2, 0, false), true);
            nf /= 2;
        }
    }
    let x = b.batch_norm("features.norm5", x, nf);
    let x = b.act("relu", x, relu);
    let x = pool_flatten(&mut b, x);
    let x = b.linear("classifier", x, nf, opts.num_classes, true);
    b.finish(&[x])
}
