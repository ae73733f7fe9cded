//! VGG 11/13/16/19, with and without BatchNorm (torchvision `models/vgg.py`).

use crate::ModelOptions;
use qvision_graph::builder::{pool, Conv};
use qvision_graph::{Activation, Graph, GraphBuilder};

/// 0 stands for a max-pool ("M").
fn cfg(depth: &str) -> &'static [usize] {
    match depth {
        "11" => &[64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0],
        "13" => &[
            64, 64, 0, 128, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0,
        ],
        "16" => &[
            64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0,
        ],
        _ => &[
            64, 64, 0, 128, 128, 0, 256, 256, 256, 256, 0, 512, 512, 512, 512, 0, 512, 512, 512,
            512, 0,
        ],
    }
}

pub fn build(name: &str, opts: &ModelOptions) -> Graph {
    let bn = name.ends_with("_bn");
    let depth = name.trim_start_matches("vgg").trim_end_matches("_bn");
    let relu = Activation::Relu;
    let mut b = GraphBuilder::new(name);
    let mut x = b.input("input", &[1, 3, 224, 224]);
    let mut i = 0;
    let mut cin = 3;
    for &v in cfg(depth) {
        if v == 0 {
            x = b.max_pool(&format!("features.{i}"), x, pool(2, 2, 0, false));
            i += 1;
            continue;
        }
        x = b.conv2d(&format!("features.{i}"), x, Conv::new(cin, v, 3).pad(1));
        i += 1;
        if bn {
            x = b.batch_norm(&format!("features.{i}"), x, v);
            i += 1;
        }
        x = b.act(&format!("features.{i}"), x, relu);
        i += 1;
        cin = v;
    }
    let x = b.adaptive_avg_pool("avgpool", x, 7, 7);
    let x = b.flatten("flatten", x, 1);
    let x = b.linear("classifier.0", x, 512 * 7 * 7, 4096, true);
    let x = b.act("classifier.1", x, relu);
    let x = b.dropout("classifier.2", x, 0.5);
    let x = b.linear("classifier.3", x, 4096, 4096, true);
    let x = b.act("classifier.4", x, relu);
    let x = b.dropout("classifier.5", x, 0.5);
    let x = b.linear("classifier.6", x, 4096, opts.num_classes, true);
    b.finish(&[x])
}
