//! ResNet, ResNeXt and Wide ResNet (torchvision `models/resnet.py`).

use crate::common::pool_flatten;
use crate::ModelOptions;
use qvision_graph::builder::{pool, Conv};
use qvision_graph::{Activation, Graph, GraphBuilder, ValueId};

struct Arch {
    bottleneck: bool,
    layers: [usize; 4],
    groups: usize,
    width_per_group: usize,
}

fn arch(name: &str) -> Arch {
    let (bottleneck, layers, groups, width_per_group) = match name {
        "resnet18" => (false, [2, 2, 2, 2], 1, 64),
        "resnet34" => (false, [3, 4, 6, 3], 1, 64),
        "resnet50" => (true, [3, 4, 6, 3], 1, 64),
        "resnet101" => (true, [3, 4, 23, 3], 1, 64),
        "resnet152" => (true, [3, 8, 36, 3], 1, 64),
        "resnext50_32x4d" => (true, [3, 4, 6, 3], 32, 4),
        "resnext101_32x8d" => (true, [3, 4, 23, 3], 32, 8),
        "resnext101_64x4d" => (true, [3, 4, 23, 3], 64, 4),
        "wide_resnet50_2" => (true, [3, 4, 6, 3], 1, 128),
        "wide_resnet101_2" => (true, [3, 4, 23, 3], 1, 128),
        other => unreachable!("not a resnet: {other}"),
    };
    Arch {
        bottleneck,
        layers,
        groups,
        width_per_group,
    }
}

pub fn build(name: &str, opts: &ModelOptions) -> Graph {
    let a = arch(name);
    let relu = Activation::Relu;
    let mut b = GraphBuilder::new(name);
    let x = b.input("input", &[1, 3, 224, 224]);
    let x = b.conv2d("conv1", x, Conv::new(3, 64, 7).stride(2).pad(3).bias(false));
    let x = b.batch_norm("bn1", x, 64);
    let x = b.act("relu", x, relu);
    let mut x = b.max_pool("maxpool", x, pool(3, 2, 1, false));
    let expansion = if a.bottleneck { 4 } else { 1 };
    let mut inplanes = 64;
    for (li, (&blocks, planes)) in a.layers.iter().zip([64, 128, 256, 512]).enumerate() {
        for bi in 0..blocks {
            let stride = if li > 0 && bi == 0 { 2 } else { 1 };
            let p = format!("layer{}.{}", li + 1, bi);
            let identity = if stride != 1 || inplanes != planes * expansion {
                let d = b.conv2d(
                    &format!("{p}.downsample.0"),
                    x,
                    Conv::new(inplanes, planes * expansion, 1)
                        .stride(stride)
                        .bias(false),
                );
                b.batch_norm(&format!("{p}.downsample.1"), d, planes * expansion)
            } else {
                x
            };
            let y = if a.bottleneck {
                let width = planes * a.width_per_group / 64 * a.groups;
                let y = b.conv2d(
                    &format!("{p}.conv1"),
                    x,
                    Conv::new(inplanes, width, 1).bias(false),
                );
                let y = b.batch_norm(&format!("{p}.bn1"), y, width);
                let y = b.act(&format!("{p}.relu"), y, relu);
                let y = b.conv2d(
                    &format!("{p}.conv2"),
                    y,
                    Conv::new(width, width, 3)
                        .stride(stride)
                        .pad(1)
                        .groups(a.groups)
                        .bias(false),
                );
                let y = b.batch_norm(&format!("{p}.bn2"), y, width);
                let y = b.act(&format!("{p}.relu"), y, relu);
                let y = b.conv2d(
                    &format!("{p}.conv3"),
                    y,
                    Conv::new(width, planes * 4, 1).bias(false),
                );
                b.batch_norm(&format!("{p}.bn3"), y, planes * 4)
            } else {
                let y = b.conv2d(
                    &format!("{p}.conv1"),
                    x,
                    Conv::new(inplanes, planes, 3)
                        .stride(stride)
                        .pad(1)
                        .bias(false),
                );
                let y = b.batch_norm(&format!("{p}.bn1"), y, planes);
                let y = b.act(&format!("{p}.relu"), y, relu);
                let y = b.conv2d(
                    &format!("{p}.conv2"),
                    y,
                    Conv::new(planes, planes, 3).pad(1).bias(false),
                );
                b.batch_norm(&format!("{p}.bn2"), y, planes)
            };
            let y = b.add(&format!("{p}.add"), y, identity);
            x = b.act(&format!("{p}.relu"), y, relu);
            inplanes = planes * expansion;
        }
    }
    let x: ValueId = pool_flatten(&mut b, x);
    let x = b.linear("fc", x, 512 * expansion, opts.num_classes, true);
    b.finish(&[x])
}
