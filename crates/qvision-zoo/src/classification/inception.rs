//! Inception v3 (torchvision `models/inception.py`). `AuxLogits` is declared for strict loading
//! and does not run at inference.

use super::googlenet::{basic_conv, transform_input};
use crate::common::pool_flatten;
use crate::ModelOptions;
use qvision_graph::builder::{pool, Conv};
use qvision_graph::{Graph, GraphBuilder, ValueId};

fn bc(
    b: &mut GraphBuilder,
    p: &str,
    x: ValueId,
    cin: usize,
    cout: usize,
    k: (usize, usize),
    pad: (usize, usize),
    stride: usize,
) -> ValueId {
    basic_conv(
        b,
        p,
        x,
        Conv::new(cin, cout, 1)
            .kernel2(k.0, k.1)
            .pad2(pad.0, pad.1)
            .stride(stride),
    )
}

fn avg3(b: &mut GraphBuilder, p: &str, x: ValueId) -> ValueId {
    b.avg_pool(&format!("{p}.avg_pool"), x, pool(3, 1, 1, false), true)
}

fn inception_a(
    b: &mut GraphBuilder,
    p: &str,
    x: ValueId,
    cin: usize,
    pool_features: usize,
) -> ValueId {
    let b1 = bc(b, &format!("{p}.branch1x1"), x, cin, 64, (1, 1), (0, 0), 1);
    let b5 = bc(
        b,
        &format!("{p}.branch5x5_1"),
        x,
        cin,
        48,
        (1, 1),
        (0, 0),
        1,
    );
    let b5 = bc(
        b,
        &format!("{p}.branch5x5_2"),
        b5,
        48,
        64,
        (5, 5),
        (2, 2),
        1,
    );
    let b3 = bc(
        b,
        &format!("{p}.branch3x3dbl_1"),
        x,
        cin,
        64,
        (1, 1),
        (0, 0),
        1,
    );
    let b3 = bc(
        b,
        &format!("{p}.branch3x3dbl_2"),
        b3,
        64,
        96,
        (3, 3),
        (1, 1),
        1,
    );
    let b3 = bc(
        b,
        &format!("{p}.branch3x3dbl_3"),
        b3,
        96,
        96,
        (3, 3),
        (1, 1),
        1,
    );
    let bp = avg3(b, p, x);
    let bp = bc(
        b,
        &format!("{p}.branch_pool"),
        bp,
        cin,
        pool_features,
        (1, 1),
        (0, 0),
        1,
    );
    b.concat(&format!("{p}.cat"), &[b1, b5, b3, bp], 1)
}

fn inception_b(b: &mut GraphBuilder, p: &str, x: ValueId, cin: usize) -> ValueId {
    let b3 = bc(b, &format!("{p}.branch3x3"), x, cin, 384, (3, 3), (0, 0), 2);
    let bd = bc(
        b,
        &format!("{p}.branch3x3dbl_1"),
        x,
        cin,
        64,
        (1, 1),
        (0, 0),
        1,
    );
    let bd = bc(
        b,
        &format!("{p}.branch3x3dbl_2"),
        bd,
        64,
        96,
        (3, 3),
        (1, 1),
        1,
    );
    let bd = bc(
        b,
        &format!("{p}.branch3x3dbl_3"),
        bd,
        96,
        96,
        (3, 3),
        (0, 0),
        2,
    );
    let bp = b.max_pool(&format!("{p}.max_pool"), x, pool(3, 2, 0, false));
    b.concat(&format!("{p}.cat"), &[b3, bd, bp], 1)
}

fn inception_c(b: &mut GraphBuilder, p: &str, x: ValueId, cin: usize, c7: usize) -> ValueId {
    let (h, v) = ((1, 7), (7, 1));
    let (ph, pv) = ((0, 3), (3, 0));
    let b1 = bc(b, &format!("{p}.branch1x1"), x, cin, 192, (1, 1), (0, 0), 1);
    let b7 = bc(
        b,
        &format!("{p}.branch7x7_1"),
        x,
        cin,
        c7,
        (1, 1),
        (0, 0),
        1,
    );
    let b7 = bc(b, &format!("{p}.branch7x7_2"), b7, c7, c7, h, ph, 1);
    let b7 = bc(b, &format!("{p}.branch7x7_3"), b7, c7, 192, v, pv, 1);
    let bd = bc(
        b,
        &format!("{p}.branch7x7dbl_1"),
        x,
        cin,
        c7,
        (1, 1),
        (0, 0),
        1,
    );
    let bd = bc(b, &format!("{p}.branch7x7dbl_2"), bd, c7, c7, v, pv, 1);
    let bd = bc(b, &format!("{p}.branch7x7dbl_3"), bd, c7, c7, h, ph, 1);
    let bd = bc(b, &format!("{p}.branch7x7dbl_4"), bd, c7, c7, v, pv, 1);
    let bd = bc(b, &format!("{p}.branch7x7dbl_5"), bd, c7, 192, h, ph, 1);
    let bp = avg3(b, p, x);
    let bp = bc(
        b,
        &format!("{p}.branch_pool"),
        bp,
        cin,
        192,
        (1, 1),
        (0, 0),
        1,
    );
    b.concat(&format!("{p}.cat"), &[b1, b7, bd, bp], 1)
}

fn inception_d(b: &mut GraphBuilder, p: &str, x: ValueId, cin: usize) -> ValueId {
    let b3 = bc(
        b,
        &format!("{p}.branch3x3_1"),
        x,
        cin,
        192,
        (1, 1),
        (0, 0),
        1,
    );
    let b3 = bc(
        b,
        &format!("{p}.branch3x3_2"),
        b3,
        192,
        320,
        (3, 3),
        (0, 0),
        2,
    );
    let b7 = bc(
        b,
        &format!("{p}.branch7x7x3_1"),
        x,
        cin,
        192,
        (1, 1),
        (0, 0),
        1,
    );
    let b7 = bc(
        b,
        &format!("{p}.branch7x7x3_2"),
        b7,
        192,
        192,
        (1, 7),
        (0, 3),
        1,
    );
    let b7 = bc(
        b,
        &format!("{p}.branch7x7x3_3"),
        b7,
        192,
        192,
        (7, 1),
        (3, 0),
        1,
    );
    let b7 = bc(
        b,
        &format!("{p}.branch7x7x3_4"),
        b7,
        192,
        192,
        (3, 3),
        (0, 0),
        2,
    );
    let bp = b.max_pool(&format!("{p}.max_pool"), x, pool(3, 2, 0, false));
    b.concat(&format!("{p}.cat"), &[b3, b7, bp], 1)
}

fn inception_e(b: &mut GraphBuilder, p: &str, x: ValueId, cin: usize) -> ValueId {
    let b1 = bc(b, &format!("{p}.branch1x1"), x, cin, 320, (1, 1), (0, 0), 1);
    let b3 = bc(
        b,
        &format!("{p}.branch3x3_1"),
        x,
        cin,
        384,
        (1, 1),
        (0, 0),
        1,
    );
    let b3a = bc(
        b,
        &format!("{p}.branch3x3_2a"),
        b3,
        384,
        384,
        (1, 3),
        (0, 1),
        1,
    );
    let b3b = bc(
        b,
        &format!("{p}.branch3x3_2b"),
        b3,
        384,
        384,
        (3, 1),
        (1, 0),
        1,
    );
    let b3 = b.concat(&format!("{p}.branch3x3.cat"), &[b3a, b3b], 1);
    let bd = bc(
        b,
        &format!("{p}.branch3x3dbl_1"),
        x,
        cin,
        448,
        (1, 1),
        (0, 0),
        1,
    );
    let bd = bc(
        b,
        &format!("{p}.branch3x3dbl_2"),
        bd,
        448,
        384,
        (3, 3),
        (1, 1),
        1,
    );
    let bda = bc(
        b,
        &format!("{p}.branch3x3dbl_3a"),
        bd,
        384,
        384,
        (1, 3),
        (0, 1),
        1,
    );
    let bdb = bc(
        b,
        &format!("{p}.branch3x3dbl_3b"),
        bd,
        384,
        384,
        (3, 1),
        (1, 0),
        1,
    );
    let bd = b.concat(&format!("{p}.branch3x3dbl.cat"), &[bda, bdb], 1);
    let bp = avg3(b, p, x);
    let bp = bc(
        b,
        &format!("{p}.branch_pool"),
        bp,
        cin,
        192,
        (1, 1),
        (0, 0),
        1,
    );
    b.concat(&format!("{p}.cat"), &[b1, b3, bd, bp], 1)
}

fn declare_aux(b: &mut GraphBuilder, num_classes: usize) {
    for (conv, cin, cout, k) in [("conv0", 768, 128, 1), ("conv1", 128, 768, 5)] {
        b.param(&format!("AuxLogits.{conv}.conv.weight"), &[cout, cin, k, k]);
        for s in ["weight", "bias", "running_mean", "running_var"] {
            b.param(&format!("AuxLogits.{conv}.bn.{s}"), &[cout]);
        }
        b.optional_param(
            &format!("AuxLogits.{conv}.bn.num_batches_tracked"),
            &[],
            qvision_tensor::DType::I64,
        );
    }
    b.param("AuxLogits.fc.weight", &[num_classes, 768]);
    b.param("AuxLogits.fc.bias", &[num_classes]);
}

pub fn build(name: &str, opts: &ModelOptions) -> Graph {
    let mut b = GraphBuilder::new(name);
    let mut x = b.input("input", &[1, 3, 299, 299]);
    if opts.transform_input.unwrap_or(false) {
        x = transform_input(&mut b, x);
    }
    let x = bc(&mut b, "Conv2d_1a_3x3", x, 3, 32, (3, 3), (0, 0), 2);
    let x = bc(&mut b, "Conv2d_2a_3x3", x, 32, 32, (3, 3), (0, 0), 1);
    let x = bc(&mut b, "Conv2d_2b_3x3", x, 32, 64, (3, 3), (1, 1), 1);
    let x = b.max_pool("maxpool1", x, pool(3, 2, 0, false));
    let x = bc(&mut b, "Conv2d_3b_1x1", x, 64, 80, (1, 1), (0, 0), 1);
    let x = bc(&mut b, "Conv2d_4a_3x3", x, 80, 192, (3, 3), (0, 0), 1);
    let x = b.max_pool("maxpool2", x, pool(3, 2, 0, false));
    let x = inception_a(&mut b, "Mixed_5b", x, 192, 32);
    let x = inception_a(&mut b, "Mixed_5c", x, 256, 64);
    let x = inception_a(&mut b, "Mixed_5d", x, 288, 64);
    let x = inception_b(&mut b, "Mixed_6a", x, 288);
    let x = inception_c(&mut b, "Mixed_6b", x, 768, 128);
    let x = inception_c(&mut b, "Mixed_6c", x, 768, 160);
    let x = inception_c(&mut b, "Mixed_6d", x, 768, 160);
    let x = inception_c(&mut b, "Mixed_6e", x, 768, 192);
    declare_aux(&mut b, opts.num_classes);
    let x = inception_d(&mut b, "Mixed_7a", x, 768);
    let x = inception_e(&mut b, "Mixed_7b", x, 1280);
    let x = inception_e(&mut b, "Mixed_7c", x, 2048);
    let x = pool_flatten(&mut b, x);
    let x = b.dropout("dropout", x, 0.5);
    let x = b.linear("fc", x, 2048, opts.num_classes, true);
    b.finish(&[x])
}
