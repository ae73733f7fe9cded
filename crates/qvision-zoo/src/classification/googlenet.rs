//! GoogLeNet (torchvision `models/googlenet.py`). The auxiliary heads are declared so that
//! torchvision checkpoints (which carry `aux1.*`, `aux2.*`) load strictly; they do not run at
//! inference, as in torchvision's eval mode.

use crate::common::pool_flatten;
use crate::ModelOptions;
use qvision_graph::builder::{pool, Conv};
use qvision_graph::{Activation, Graph, GraphBuilder, ValueId};
use qvision_tensor::Tensor;

/// torchvision's `BasicConv2d`: conv (no bias), BatchNorm(eps=0.001), ReLU.
pub(crate) fn basic_conv(b: &mut GraphBuilder, p: &str, x: ValueId, c: Conv) -> ValueId {
    let y = b.conv2d(&format!("{p}.conv"), x, c.bias(false));
    let y = b.batch_norm_eps(&format!("{p}.bn"), y, c.cout, 1e-3);
    b.act(&format!("{p}.relu"), y, Activation::Relu)
}

/// torchvision's `_transform_input`: re-normalise from ImageNet statistics to [-1, 1].
pub(crate) fn transform_input(b: &mut GraphBuilder, x: ValueId) -> ValueId {
    let scale = [0.229f32 / 0.5, 0.224 / 0.5, 0.225 / 0.5];
    let shift = [
        (0.485f32 - 0.5) / 0.5,
        (0.456 - 0.5) / 0.5,
        (0.406 - 0.5) / 0.5,
    ];
    let s = b.constant(
        "transform_input.scale",
        Tensor::from_f32(vec![1, 3, 1, 1], scale.to_vec()).expect("3 values"),
    );
    let t = b.constant(
        "transform_input.shift",
        Tensor::from_f32(vec![1, 3, 1, 1], shift.to_vec()).expect("3 values"),
    );
    let x = b.mul("transform_input.mul", x, s);
    b.add("transform_input.add", x, t)
}

/// Declare an auxiliary head's parameters (`conv` + `fc1` + `fc2`) without running it.
fn declare_aux(b: &mut GraphBuilder, p: &str, cin: usize, num_classes: usize) {
    b.param(&format!("{p}.conv.conv.weight"), &[128, cin, 1, 1]);
    for s in ["weight", "bias", "running_mean", "running_var"] {
        b.param(&format!("{p}.conv.bn.{s}"), &[128]);
    }
    b.optional_param(
        &format!("{p}.conv.bn.num_batches_tracked"),
        &[],
        qvision_tensor::DType::I64,
    );
    b.param(&format!("{p}.fc1.weight"), &[1024, 2048]);
    b.param(&format!("{p}.fc1.bias"), &[1024]);
    b.param(&format!("{p}.fc2.weight"), &[num_classes, 1024]);
    b.param(&format!("{p}.fc2.bias"), &[num_classes]);
}

#[allow(clippy::too_many_arguments)]
fn inception(
    b: &mut GraphBuilder,
    p: &str,
    x: ValueId,
    cin: usize,
    c1: usize,
    c3r: usize,
    c3: usize,
    c5r: usize,
    c5: usize,
    pp: usize,
) -> ValueId {
    let b1 = basic_conv(b, &format!("{p}.branch1"), x, Conv::new(cin, c1, 1));
    let b2 = basic_conv(b, &format!("{p}.branch2.0"), x, Conv::new(cin, c3r, 1));
    let b2 = basic_conv(
        b,
        &format!("{p}.branch2.1"),
        b2,
        Conv::new(c3r, c3, 3).pad(1),
    );
    let b3 = basic_conv(b, &format!("{p}.branch3.0"), x, Conv::new(cin, c5r, 1));
    let b3 = basic_conv(
        b,
        &format!("{p}.branch3.1"),
        b3,
        Conv::new(c5r, c5, 3).pad(1),
    );
    let b4 = b.max_pool(&format!("{p}.branch4.0"), x, pool(3, 1, 1, true));
    let b4 = basic_conv(b, &format!("{p}.branch4.1"), b4, Conv::new(cin, pp, 1));
    b.concat(&format!("{p}.cat"), &[b1, b2, b3, b4], 1)
}

pub fn build(name: &str, opts: &ModelOptions) -> Graph {
    let mut b = GraphBuilder::new(name);
    let mut x = b.input("input", &[1, 3, 224, 224]);
    if opts.transform_input.unwrap_or(false) {
        x = transform_input(&mut b, x);
    }
    let x = basic_conv(&mut b, "conv1", x, Conv::new(3, 64, 7).stride(2).pad(3));
    let x = b.max_pool("maxpool1", x, pool(3, 2, 0, true));
    let x = basic_conv(&mut b, "conv2", x, Conv::new(64, 64, 1));
    let x = basic_conv(&mut b, "conv3", x, Conv::new(64, 192, 3).pad(1));
    let x = b.max_pool("maxpool2", x, pool(3, 2, 0, true));
    let x = inception(&mut b, "inception3a", x, 192, 64, 96, 128, 16, 32, 32);
    let x = inception(&mut b, "inception3b", x, 256, 128, 128, 192, 32, 96, 64);
    let x = b.max_pool("maxpool3", x, pool(3, 2, 0, true));
    let x = inception(&mut b, "inception4a", x, 480, 192, 96, 208, 16, 48, 64);
    declare_aux(&mut b, "aux1", 512, opts.num_classes);
    let x = inception(&mut b, "inception4b", x, 512, 160, 112, 224, 24, 64, 64);
    let x = inception(&mut b, "inception4c", x, 512, 128, 128, 256, 24, 64, 64);
    let x = inception(&mut b, "inception4d", x, 512, 112, 144, 288, 32, 64, 64);
    declare_aux(&mut b, "aux2", 528, opts.num_classes);
    let x = inception(&mut b, "inception4e", x, 528, 256, 160, 320, 32, 128, 128);
    let x = b.max_pool("maxpool4", x, pool(2, 2, 0, true));
    let x = inception(&mut b, "inception5a", x, 832, 256, 160, 320, 32, 128, 128);
    let x = inception(&mut b, "inception5b", x, 832, 384, 192, 384, 48, 128, 128);
    let x = pool_flatten(&mut b, x);
    let x = b.dropout("dropout", x, 0.2);
    let x = b.linear("fc", x, 1024, opts.num_classes, true);
    b.finish(&[x])
}
