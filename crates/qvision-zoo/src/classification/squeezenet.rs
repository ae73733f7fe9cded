//! SqueezeNet 1.0 and 1.1 (torchvision `models/squeezenet.py`).

use crate::ModelOptions;
use qvision_graph::builder::{pool, Conv};
use qvision_graph::{Activation, Graph, GraphBuilder, ValueId};

fn fire(
    b: &mut GraphBuilder,
    name: &str,
    x: ValueId,
    cin: usize,
    squeeze: usize,
    e1: usize,
    e3: usize,
) -> ValueId {
    let relu = Activation::Relu;
    let s = b.conv2d(&format!("{name}.squeeze"), x, Conv::new(cin, squeeze, 1));
    let s = b.act(&format!("{name}.squeeze_activation"), s, relu);
    let a = b.conv2d(&format!("{name}.expand1x1"), s, Conv::new(squeeze, e1, 1));
    let a = b.act(&format!("{name}.expand1x1_activation"), a, relu);
    let c = b.conv2d(
        &format!("{name}.expand3x3"),
        s,
        Conv::new(squeeze, e3, 3).pad(1),
    );
    let c = b.act(&format!("{name}.expand3x3_activation"), c, relu);
    b.concat(&format!("{name}.cat"), &[a, c], 1)
}

/// Layer list after the stem: `Some((in, squeeze, e1, e3))` is a Fire module, `None` a max-pool.
type Layer = Option<(usize, usize, usize, usize)>;

pub fn build(name: &str, opts: &ModelOptions) -> Graph {
    let v1_0 = name == "squeezenet1_0";
    let mut b = GraphBuilder::new(name);
    let x = b.input("input", &[1, 3, 224, 224]);
    let (stem_out, stem_k) = if v1_0 { (96, 7) } else { (64, 3) };
    let x = b.conv2d("features.0", x, Conv::new(3, stem_out, stem_k).stride(2));
    let x = b.act("features.1", x, Activation::Relu);
    let mut x = b.max_pool("features.2", x, pool(3, 2, 0, true));
    let layers: &[Layer] = if v1_0 {
        &[
            Some((96, 16, 64, 64)),
            Some((128, 16, 64, 64)),
            Some((128, 32, 128, 128)),
            None,
            Some((256, 32, 128, 128)),
            Some((256, 48, 192, 192)),
            Some((384, 48, 192, 192)),
            Some((384, 64, 256, 256)),
            None,
            Some((512, 64, 256, 256)),
        ]
    } else {
        &[
            Some((64, 16, 64, 64)),
            Some((128, 16, 64, 64)),
            None,
            Some((128, 32, 128, 128)),
            Some((256, 32, 128, 128)),
            None,
            Some((256, 48, 192, 192)),
            Some((384, 48, 192, 192)),
            Some((384, 64, 256, 256)),
            Some((512, 64, 256, 256)),
        ]
    };
    for (i, l) in layers.iter().enumerate() {
        let n = format!("features.{}", i + 3);
        x = match *l {
            Some((cin, s, e1, e3)) => fire(&mut b, &n, x, cin, s, e1, e3),
            None => b.max_pool(&n, x, pool(3, 2, 0, true)),
        };
    }
    let x = b.dropout("classifier.0", x, 0.5);
    let x = b.conv2d("classifier.1", x, Conv::new(512, opts.num_classes, 1));
    let x = b.act("classifier.2", x, Activation::Relu);
    let x = b.adaptive_avg_pool("classifier.3", x, 1, 1);
    let x = b.flatten("flatten", x, 1);
    b.finish(&[x])
}
