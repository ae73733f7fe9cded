//! RegNetX and RegNetY (torchvision `models/regnet.py`), with the same width/depth generator.

use crate::common::{conv_bn_act, make_divisible, pool_flatten, squeeze_excitation};
use crate::ModelOptions;
use qvision_graph::{Activation, Graph, GraphBuilder, ValueId};

struct Params {
    depth: usize,
    w_0: f64,
    w_a: f64,
    w_m: f64,
    group_width: usize,
    se_ratio: Option<f64>,
}

fn params(name: &str) -> Params {
    let (depth, w_0, w_a, w_m, group_width, se) = match name {
        "regnet_y_400mf" => (16, 48.0, 27.89, 2.09, 8, true),
        "regnet_y_800mf" => (14, 56.0, 38.84, 2.4, 16, true),
        "regnet_y_1_6gf" => (27, 48.0, 20.71, 2.65, 24, true),
        "regnet_y_3_2gf" => (21, 80.0, 42.63, 2.66, 24, true),
        "regnet_y_8gf" => (17, 192.0, 76.82, 2.19, 56, true),
        "regnet_y_16gf" => (18, 200.0, 106.23, 2.48, 112, true),
        "regnet_y_32gf" => (20, 232.0, 115.89, 2.53, 232, true),
        "regnet_y_128gf" => (27, 456.0, 160.83, 2.52, 264, true),
        "regnet_x_400mf" => (22, 24.0, 24.48, 2.54, 16, false),
        "regnet_x_800mf" => (16, 56.0, 35.73, 2.28, 16, false),
        "regnet_x_1_6gf" => (18, 80.0, 34.01, 2.25, 24, false),
        "regnet_x_3_2gf" => (25, 88.0, 26.31, 2.25, 48, false),
        "regnet_x_8gf" => (23, 80.0, 49.56, 2.88, 120, false),
        "regnet_x_16gf" => (22, 216.0, 55.59, 2.1, 128, false),
        _ => (23, 320.0, 69.86, 2.0, 168, false),
    };
    Params {
        depth,
        w_0,
        w_a,
        w_m,
        group_width,
        se_ratio: se.then_some(0.25),
    }
}

/// `BlockParams.from_init_params`: per stage `(width, depth, group_width)`. Computed in f32 as
/// torch does.
fn stages(p: &Params) -> Vec<(usize, usize, usize)> {
    let (w_0, w_a, w_m) = (p.w_0 as f32, p.w_a as f32, p.w_m as f32);
    let ln_wm = (p.w_m).ln() as f32;
    let widths: Vec<usize> = (0..p.depth)
        .map(|i| {
            let cont = i as f32 * w_a + w_0;
            let cap = ((cont / w_0).ln() / ln_wm).round_ties_even();
            ((w_0 * w_m.powf(cap) / 8.0).round_ties_even() * 8.0) as usize
        })
        .collect();
    let mut out: Vec<(usize, usize, usize)> = Vec::new();
    for w in widths {
        match out.last_mut() {
            Some((lw, d, _)) if *lw == w => *d += 1,
            _ => out.push((w, 1, 0)),
        }
    }
    // _adjust_widths_groups_compatibilty with bottleneck multiplier 1.0
    for (w, _, g) in out.iter_mut() {
        let gmin = p.group_width.min(*w);
        *w = make_divisible(*w as f64, gmin);
        *g = gmin;
    }
    out
}

pub fn build(name: &str, opts: &ModelOptions) -> Graph {
    let p = params(name);
    let relu = Some(Activation::Relu);
    let mut b = GraphBuilder::new(name);
    let x = b.input("input", &[1, 3, 224, 224]);
    let mut x = conv_bn_act(&mut b, "stem", x, 3, 32, 3, 2, 1, 1e-5, relu);
    let mut width_in = 32;
    for (si, (width_out, depth, group_width)) in stages(&p).into_iter().enumerate() {
        for i in 0..depth {
            let pre = format!("trunk_output.block{}.block{}-{i}", si + 1, si + 1);
            let (w_in, stride) = if i == 0 {
                (width_in, 2)
            } else {
                (width_out, 1)
            };
            let shortcut: ValueId = if w_in != width_out || stride != 1 {
                conv_bn_act(
                    &mut b,
                    &format!("{pre}.proj"),
                    x,
                    w_in,
                    width_out,
                    1,
                    stride,
                    1,
                    1e-5,
                    None,
                )
            } else {
                x
            };
            let w_b = width_out;
            let groups = w_b / group_width;
            let y = conv_bn_act(
                &mut b,
                &format!("{pre}.f.a"),
                x,
                w_in,
                w_b,
                1,
                1,
                1,
                1e-5,
                relu,
            );
            let mut y = conv_bn_act(
                &mut b,
                &format!("{pre}.f.b"),
                y,
                w_b,
                w_b,
                3,
                stride,
                groups,
                1e-5,
                relu,
            );
            if let Some(r) = p.se_ratio {
                let se = (r * w_in as f64).round_ties_even() as usize;
                y = squeeze_excitation(
                    &mut b,
                    &format!("{pre}.f.se"),
                    y,
                    w_b,
                    se,
                    Activation::Relu,
                    Activation::Sigmoid,
                );
            }
            let y = conv_bn_act(
                &mut b,
                &format!("{pre}.f.c"),
                y,
                w_b,
                width_out,
                1,
                1,
                1,
                1e-5,
                None,
            );
            let y = b.add(&format!("{pre}.add"), shortcut, y);
            x = b.act(&format!("{pre}.activation"), y, Activation::Relu);
        }
        width_in = width_out;
    }
    let x = pool_flatten(&mut b, x);
    let x = b.linear("fc", x, width_in, opts.num_classes, true);
    b.finish(&[x])
}
