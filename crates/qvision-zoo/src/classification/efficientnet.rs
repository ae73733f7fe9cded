//! EfficientNet B0–B7 and V2 S/M/L (torchvision `models/efficientnet.py`).

use crate::common::{conv_bn_act, make_divisible, pool_flatten, squeeze_excitation};
use crate::ModelOptions;
use qvision_graph::{Activation, Graph, GraphBuilder, ValueId};

/// `(fused, expand_ratio, kernel, stride, in, out, layers)`.
type Stage = (bool, usize, usize, usize, usize, usize, usize);

const V1: &[Stage] = &[
    (false, 1, 3, 1, 32, 16, 1),
    (false, 6, 3, 2, 16, 24, 2),
    (false, 6, 5, 2, 24, 40, 2),
    (false, 6, 3, 2, 40, 80, 3),
    (false, 6, 5, 1, 80, 112, 3),
    (false, 6, 5, 2, 112, 192, 4),
    (false, 6, 3, 1, 192, 320, 1),
];
const V2_S: &[Stage] = &[
    (true, 1, 3, 1, 24, 24, 2),
    (true, 4, 3, 2, 24, 48, 4),
    (true, 4, 3, 2, 48, 64, 4),
    (false, 4, 3, 2, 64, 128, 6),
    (false, 6, 3, 1, 128, 160, 9),
    (false, 6, 3, 2, 160, 256, 15),
];
const V2_M: &[Stage] = &[
    (true, 1, 3, 1, 24, 24, 3),
    (true, 4, 3, 2, 24, 48, 5),
    (true, 4, 3, 2, 48, 80, 5),
    (false, 4, 3, 2, 80, 160, 7),
    (false, 6, 3, 1, 160, 176, 14),
    (false, 6, 3, 2, 176, 304, 18),
    (false, 6, 3, 1, 304, 512, 5),
];
const V2_L: &[Stage] = &[
    (true, 1, 3, 1, 32, 32, 4),
    (true, 4, 3, 2, 32, 64, 7),
    (true, 4, 3, 2, 64, 96, 7),
    (false, 4, 3, 2, 96, 192, 10),
    (false, 6, 3, 1, 192, 224, 19),
    (false, 6, 3, 2, 224, 384, 25),
    (false, 6, 3, 1, 384, 640, 7),
];

pub fn build(name: &str, opts: &ModelOptions) -> Graph {
    // (stages, width_mult, depth_mult, bn eps, last channel (None: 4x), dropout)
    let (stages, width, depth, eps, last, dropout): (&[Stage], f64, f64, f32, Option<usize>, f32) =
        match name {
            "efficientnet_b0" => (V1, 1.0, 1.0, 1e-5, None, 0.2),
            "efficientnet_b1" => (V1, 1.0, 1.1, 1e-5, None, 0.2),
            "efficientnet_b2" => (V1, 1.1, 1.2, 1e-5, None, 0.3),
            "efficientnet_b3" => (V1, 1.2, 1.4, 1e-5, None, 0.3),
            "efficientnet_b4" => (V1, 1.4, 1.8, 1e-5, None, 0.4),
            "efficientnet_b5" => (V1, 1.6, 2.2, 1e-3, None, 0.4),
            "efficientnet_b6" => (V1, 1.8, 2.6, 1e-3, None, 0.5),
            "efficientnet_b7" => (V1, 2.0, 3.1, 1e-3, None, 0.5),
            "efficientnet_v2_s" => (V2_S, 1.0, 1.0, 1e-3, Some(1280), 0.2),
            "efficientnet_v2_m" => (V2_M, 1.0, 1.0, 1e-3, Some(1280), 0.3),
            _ => (V2_L, 1.0, 1.0, 1e-3, Some(1280), 0.4),
        };
    let adjust = |c: usize| make_divisible(c as f64 * width, 8);
    let silu = Some(Activation::Silu);
    let mut b = GraphBuilder::new(name);
    let x = b.input("input", &[1, 3, 224, 224]);
    let first = adjust(stages[0].4);
    let mut x = conv_bn_act(&mut b, "features.0", x, 3, first, 3, 2, 1, eps, silu);
    for (si, &(fused, expand, k, stride, cin, cout, layers)) in stages.iter().enumerate() {
        let (cin, cout) = (adjust(cin), adjust(cout));
        let n = (layers as f64 * depth).ceil() as usize;
        for bi in 0..n {
            let (inp, s) = if bi == 0 { (cin, stride) } else { (cout, 1) };
            let p = format!("features.{}.{bi}.block", si + 1);
            let expanded = make_divisible(inp as f64 * expand as f64, 8);
            let mut y: ValueId = x;
            if fused {
                if expanded != inp {
                    y = conv_bn_act(
                        &mut b,
                        &format!("{p}.0"),
                        y,
                        inp,
                        expanded,
                        k,
                        s,
                        1,
                        eps,
                        silu,
                    );
                    y = conv_bn_act(
                        &mut b,
                        &format!("{p}.1"),
                        y,
                        expanded,
                        cout,
                        1,
                        1,
                        1,
                        eps,
                        None,
                    );
                } else {
                    y = conv_bn_act(&mut b, &format!("{p}.0"), y, inp, cout, k, s, 1, eps, silu);
                }
            } else {
                let mut j = 0;
                if expanded != inp {
                    y = conv_bn_act(
                        &mut b,
                        &format!("{p}.0"),
                        y,
                        inp,
                        expanded,
                        1,
                        1,
                        1,
                        eps,
                        silu,
                    );
                    j += 1;
                }
                y = conv_bn_act(
                    &mut b,
                    &format!("{p}.{j}"),
                    y,
                    expanded,
                    expanded,
                    k,
                    s,
                    expanded,
                    eps,
                    silu,
                );
                let sq = (inp / 4).max(1);
                y = squeeze_excitation(
                    &mut b,
                    &format!("{p}.{}", j + 1),
                    y,
                    expanded,
                    sq,
                    Activation::Silu,
                    Activation::Sigmoid,
                );
                y = conv_bn_act(
                    &mut b,
                    &format!("{p}.{}", j + 2),
                    y,
                    expanded,
                    cout,
                    1,
                    1,
                    1,
                    eps,
                    None,
                );
            }
            // StochasticDepth is the identity at inference.
            x = if s == 1 && inp == cout {
                b.add(&format!("features.{}.{bi}.add", si + 1), x, y)
            } else {
                y
            };
        }
    }
    let last_in = adjust(stages[stages.len() - 1].5);
    let last_out = last.unwrap_or(4 * last_in);
    let x = conv_bn_act(
        &mut b,
        &format!("features.{}", stages.len() + 1),
        x,
        last_in,
        last_out,
        1,
        1,
        1,
        eps,
        silu,
    );
    let x = pool_flatten(&mut b, x);
    let x = b.dropout("classifier.0", x, dropout);
    let x = b.linear("classifier.1", x, last_out, opts.num_classes, true);
    b.finish(&[x])
}
