//! ConvNeXt tiny/small/base/large (torchvision `models/convnext.py`).

use crate::ModelOptions;
use qvision_graph::builder::Conv;
use qvision_graph::{Activation, Graph, GraphBuilder, ValueId};

/// torchvision's `LayerNorm2d`: LayerNorm over channels of an NCHW tensor.
fn layer_norm_2d(b: &mut GraphBuilder, name: &str, x: ValueId, c: usize) -> ValueId {
    let y = b.permute(&format!("{name}.to_nhwc"), x, &[0, 2, 3, 1]);
    let y = b.layer_norm(name, y, c, 1e-6);
    b.permute(&format!("{name}.to_nchw"), y, &[0, 3, 1, 2])
}

pub fn build(name: &str, opts: &ModelOptions) -> Graph {
    let (dims, depths): ([usize; 4], [usize; 4]) = match name {
        "convnext_tiny" => ([96, 192, 384, 768], [3, 3, 9, 3]),
        "convnext_small" => ([96, 192, 384, 768], [3, 3, 27, 3]),
        "convnext_base" => ([128, 256, 512, 1024], [3, 3, 27, 3]),
        _ => ([192, 384, 768, 1536], [3, 3, 27, 3]),
    };
    let mut b = GraphBuilder::new(name);
    let x = b.input("input", &[1, 3, 224, 224]);
    let x = b.conv2d("features.0.0", x, Conv::new(3, dims[0], 4).stride(4));
    let mut x = layer_norm_2d(&mut b, "features.0.1", x, dims[0]);
    for s in 0..4 {
        let dim = dims[s];
        let stage = 2 * s + 1;
        for i in 0..depths[s] {
            let p = format!("features.{stage}.{i}");
            let y = b.conv2d(
                &format!("{p}.block.0"),
                x,
                Conv::new(dim, dim, 7).pad(3).groups(dim),
            );
            let y = b.permute(&format!("{p}.block.1"), y, &[0, 2, 3, 1]);
            let y = b.layer_norm(&format!("{p}.block.2"), y, dim, 1e-6);
            let y = b.linear(&format!("{p}.block.3"), y, dim, 4 * dim, true);
            let y = b.act(&format!("{p}.block.4"), y, Activation::Gelu);
            let y = b.linear(&format!("{p}.block.5"), y, 4 * dim, dim, true);
            let y = b.permute(&format!("{p}.block.6"), y, &[0, 3, 1, 2]);
            let scale = b.param(&format!("{p}.layer_scale"), &[dim, 1, 1]);
            let y = b.mul(&format!("{p}.mul"), y, scale);
            // StochasticDepth is the identity at inference.
            x = b.add(&format!("{p}.add"), y, x);
        }
        if s < 3 {
            let p = format!("features.{}", stage + 1);
            let y = layer_norm_2d(&mut b, &format!("{p}.0"), x, dim);
            x = b.conv2d(
                &format!("{p}.1"),
                y,
                Conv::new(dim, dims[s + 1], 2).stride(2),
            );
        }
    }
    let last = dims[3];
    let x = b.adaptive_avg_pool("avgpool", x, 1, 1);
    let x = layer_norm_2d(&mut b, "classifier.0", x, last);
    let x = b.flatten("classifier.1", x, 1);
    let x = b.linear("classifier.2", x, last, opts.num_classes, true);
    b.finish(&[x])
}
