//! MobileNetV2 and MobileNetV3 large/small (torchvision `models/mobilenetv2.py`, `mobilenetv3.py`).

use crate::common::{conv_bn_act, make_divisible, pool_flatten, squeeze_excitation};
use crate::ModelOptions;
use qvision_graph::builder::Conv;
use qvision_graph::{Activation, Graph, GraphBuilder, ValueId};

pub fn build(name: &str, opts: &ModelOptions) -> Graph {
    match name {
        "mobilenet_v2" => v2(name, opts),
        _ => v3(name, opts),
    }
}

fn v2(name: &str, opts: &ModelOptions) -> Graph {
    let relu6 = Some(Activation::Relu6);
    let mut b = GraphBuilder::new(name);
    let x = b.input("input", &[1, 3, 224, 224]);
    let mut x = conv_bn_act(&mut b, "features.0", x, 3, 32, 3, 2, 1, 1e-5, relu6);
    let setting = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ];
    let mut cin = 32;
    let mut idx = 1;
    for (t, c, n, s) in setting {
        let cout = make_divisible(c as f64, 8);
        for i in 0..n {
            let stride = if i == 0 { s } else { 1 };
            let p = format!("features.{idx}.conv");
            let hidden = cin * t;
            let mut y = x;
            let mut j = 0;
            if t != 1 {
                y = conv_bn_act(
                    &mut b,
                    &format!("{p}.0"),
                    y,
                    cin,
                    hidden,
                    1,
                    1,
                    1,
                    1e-5,
                    relu6,
                );
                j += 1;
            }
            y = conv_bn_act(
                &mut b,
                &format!("{p}.{j}"),
                y,
                hidden,
                hidden,
                3,
                stride,
                hidden,
                1e-5,
                relu6,
            );
            y = b.conv2d(
                &format!("{p}.{}", j + 1),
                y,
                Conv::new(hidden, cout, 1).bias(false),
            );
            y = b.batch_norm(&format!("{p}.{}", j + 2), y, cout);
            x = if stride == 1 && cin == cout {
                b.add(&format!("features.{idx}.add"), x, y)
            } else {
                y
            };
            cin = cout;
            idx += 1;
        }
    }
    let x = conv_bn_act(
        &mut b,
        &format!("features.{idx}"),
        x,
        cin,
        1280,
        1,
        1,
        1,
        1e-5,
        relu6,
    );
    let x = pool_flatten(&mut b, x);
    let x = b.dropout("classifier.0", x, 0.2);
    let x = b.linear("classifier.1", x, 1280, opts.num_classes, true);
    b.finish(&[x])
}

/// `(input, kernel, expanded, out, use_se, hardswish, stride)`.
type V3Block = (usize, usize, usize, usize, bool, bool, usize);

fn v3(name: &str, opts: &ModelOptions) -> Graph {
    let large = name == "mobilenet_v3_large";
    let (blocks, last_channel): (&[V3Block], usize) = if large {
        (
            &[
                (16, 3, 16, 16, false, false, 1),
                (16, 3, 64, 24, false, false, 2),
                (24, 3, 72, 24, false, false, 1),
                (24, 5, 72, 40, true, false, 2),
                (40, 5, 120, 40, true, false, 1),
                (40, 5, 120, 40, true, false, 1),
                (40, 3, 240, 80, false, true, 2),
                (80, 3, 200, 80, false, true, 1),
                (80, 3, 184, 80, false, true, 1),
                (80, 3, 184, 80, false, true, 1),
                (80, 3, 480, 112, true, true, 1),
                (112, 3, 672, 112, true, true, 1),
                (112, 5, 672, 160, true, true, 2),
                (160, 5, 960, 160, true, true, 1),
                (160, 5, 960, 160, true, true, 1),
            ],
            1280,
        )
    } else {
        (
            &[
                (16, 3, 16, 16, true, false, 2),
                (16, 3, 72, 24, false, false, 2),
                (24, 3, 88, 24, false, false, 1),
                (24, 5, 96, 40, true, true, 2),
                (40, 5, 240, 40, true, true, 1),
                (40, 5, 240, 40, true, true, 1),
                (40, 5, 120, 48, true, true, 1),
                (48, 5, 144, 48, true, true, 1),
                (48, 5, 288, 96, true, true, 2),
                (96, 5, 576, 96, true, true, 1),
                (96, 5, 576, 96, true, true, 1),
            ],
            1024,
        )
    };
    let eps = 1e-3;
    let hs = Activation::Hardswish;
    let mut b = GraphBuilder::new(name);
    let x = b.input("input", &[1, 3, 224, 224]);
    let mut x = conv_bn_act(&mut b, "features.0", x, 3, 16, 3, 2, 1, eps, Some(hs));
    for (i, &(cin, k, exp, cout, se, use_hs, stride)) in blocks.iter().enumerate() {
        let p = format!("features.{}.block", i + 1);
        let act = if use_hs { hs } else { Activation::Relu };
        let mut y: ValueId = x;
        let mut j = 0;
        if exp != cin {
            y = conv_bn_act(
                &mut b,
                &format!("{p}.0"),
                y,
                cin,
                exp,
                1,
                1,
                1,
                eps,
                Some(act),
            );
            j += 1;
        }
        y = conv_bn_act(
            &mut b,
            &format!("{p}.{j}"),
            y,
            exp,
            exp,
            k,
            stride,
            exp,
            eps,
            Some(act),
        );
        j += 1;
        if se {
            let sq = make_divisible((exp / 4) as f64, 8);
            y = squeeze_excitation(
                &mut b,
                &format!("{p}.{j}"),
                y,
                exp,
                sq,
                Activation::Relu,
                Activation::Hardsigmoid,
            );
            j += 1;
        }
        y = conv_bn_act(
            &mut b,
            &format!("{p}.{j}"),
            y,
            exp,
            cout,
            1,
            1,
            1,
            eps,
            None,
        );
        x = if stride == 1 && cin == cout {
            b.add(&format!("features.{}.add", i + 1), x, y)
        } else {
            y
        };
    }
    let last_in = blocks[blocks.len() - 1].3;
    let last_conv = 6 * last_in;
    let x = conv_bn_act(
        &mut b,
        &format!("features.{}", blocks.len() + 1),
        x,
        last_in,
        last_conv,
        1,
        1,
        1,
        eps,
        Some(hs),
    );
    let x = pool_flatten(&mut b, x);
    let x = b.linear("classifier.0", x, last_conv, last_channel, true);
    let x = b.act("classifier.1", x, hs);
    let x = b.dropout("classifier.2", x, 0.2);
    let x = b.linear("classifier.3", x, last_channel, opts.num_classes, true);
    b.finish(&[x])
}
