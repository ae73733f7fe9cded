//! ShuffleNetV2 x0.5/x1.0/x1.5/x2.0 (torchvision `models/shufflenetv2.py`).

use crate::common::pool_flatten;
use crate::ModelOptions;
use qvision_graph::builder::{pool, Conv};
use qvision_graph::{Activation, Graph, GraphBuilder, ValueId};

fn block(
    b: &mut GraphBuilder,
    p: &str,
    x: ValueId,
    inp: usize,
    oup: usize,
    stride: usize,
) -> ValueId {
    let bf = oup / 2;
    let relu = Activation::Relu;
    let (left, right_in, right_cin) = if stride > 1 {
        let l = b.conv2d(
            &format!("{p}.branch1.0"),
            x,
            Conv::new(inp, inp, 3)
                .stride(stride)
                .pad(1)
                .groups(inp)
                .bias(false),
        );
        let l = b.batch_norm(&format!("{p}.branch1.1"), l, inp);
        let l = b.conv2d(
            &format!("{p}.branch1.2"),
            l,
            Conv::new(inp, bf, 1).bias(false),
        );
        let l = b.batch_norm(&format!("{p}.branch1.3"), l, bf);
        let l = b.act(&format!("{p}.branch1.4"), l, relu);
        (l, x, inp)
    } else {
        let halves = b.split(&format!("{p}.chunk"), x, 1, &[inp / 2, inp - inp / 2]);
        (halves[0], halves[1], bf)
    };
    let r = b.conv2d(
        &format!("{p}.branch2.0"),
        right_in,
        Conv::new(right_cin, bf, 1).bias(false),
    );
    let r = b.batch_norm(&format!("{p}.branch2.1"), r, bf);
    let r = b.act(&format!("{p}.branch2.2"), r, relu);
    let r = b.conv2d(
        &format!("{p}.branch2.3"),
        r,
        Conv::new(bf, bf, 3)
            .stride(stride)
            .pad(1)
            .groups(bf)
            .bias(false),
    );
    let r = b.batch_norm(&format!("{p}.branch2.4"), r, bf);
    let r = b.conv2d(
        &format!("{p}.branch2.5"),
        r,
        Conv::new(bf, bf, 1).bias(false),
    );
    let r = b.batch_norm(&format!("{p}.branch2.6"), r, bf);
    let r = b.act(&format!("{p}.branch2.7"), r, relu);
    let y = b.concat(&format!("{p}.cat"), &[left, r], 1);
    b.channel_shuffle(&format!("{p}.channel_shuffle"), y, 2)
}

pub fn build(name: &str, opts: &ModelOptions) -> Graph {
    let ch: [usize; 5] = match name {
        "shufflenet_v2_x0_5" => [24, 48, 96, 192, 1024],
        "shufflenet_v2_x1_0" => [24, 116, 232, 464, 1024],
        "shufflenet_v2_x1_5" => [24, 176, 352, 704, 1024],
        _ => [24, 244, 488, 976, 2048],
    };
    let relu = Activation::Relu;
    let mut b = GraphBuilder::new(name);
    let x = b.input("input", &[1, 3, 224, 224]);
    let x = b.conv2d(
        "conv1.0",
        x,
        Conv::new(3, ch[0], 3).stride(2).pad(1).bias(false),
    );
    let x = b.batch_norm("conv1.1", x, ch[0]);
    let x = b.act("conv1.2", x, relu);
    let mut x = b.max_pool("maxpool", x, pool(3, 2, 1, false));
    let mut cin = ch[0];
    for (si, repeats) in [4, 8, 4].into_iter().enumerate() {
        let cout = ch[si + 1];
        for i in 0..repeats {
            let (inp, stride) = if i == 0 { (cin, 2) } else { (cout, 1) };
            x = block(
                &mut b,
                &format!("stage{}.{i}", si + 2),
                x,
                inp,
                cout,
                stride,
            );
        }
        cin = cout;
    }
    let x = b.conv2d("conv5.0", x, Conv::new(cin, ch[4], 1).bias(false));
    let x = b.batch_norm("conv5.1", x, ch[4]);
    let x = b.act("conv5.2", x, relu);
    let x = pool_flatten(&mut b, x);
    let x = b.linear("fc", x, ch[4], opts.num_classes, true);
    b.finish(&[x])
}
