//! Recipe models and parameter initialisation for training from scratch.

use crate::rng::Rng;
use qvision_graph::builder::Conv;
use qvision_graph::{Activation, Graph, GraphBuilder, ValueId};
use qvision_tensor::{DType, Data, Tensor};

/// Names `qvision train` / `qvision qat` accept besides the zoo.
pub const RECIPE_MODELS: &[&str] = &["small_resnet"];

/// A small ResNet for 28x28 grayscale images (Fashion-MNIST, MNIST): a 3x3 stem and three
/// stages of one BasicBlock each (`width`, `2·width`, `4·width` channels; strides 1, 2, 2),
/// global average pooling and a linear classifier. Names follow torchvision's ResNet.
pub fn small_resnet(
    in_channels: usize,
    num_classes: usize,
    width: usize,
    input: [usize; 2],
) -> Graph {
    let mut b = GraphBuilder::new("small_resnet");
    let x = b.input("input", &[1, in_channels, input[0], input[1]]);
    let x = b.conv2d(
        "conv1",
        x,
        Conv::new(in_channels, width, 3).pad(1).bias(false),
    );
    let x = b.batch_norm("bn1", x, width);
    let mut x = b.act("relu", x, Activation::Relu);
    let mut cin = width;
    for (i, (c, s)) in [(width, 1), (2 * width, 2), (4 * width, 2)]
        .into_iter()
        .enumerate()
    {
        x = basic_block(&mut b, &format!("layer{}.0", i + 1), x, cin, c, s);
        cin = c;
    }
    let x = b.adaptive_avg_pool("avgpool", x, 1, 1);
    let x = b.flatten("flatten", x, 1);
    let x = b.linear("fc", x, cin, num_classes, true);
    b.finish(&[x])
}

fn basic_block(
    b: &mut GraphBuilder,
    name: &str,
    x: ValueId,
    cin: usize,
    cout: usize,
    stride: usize,
) -> ValueId {
    let y = b.conv2d(
        &format!("{name}.conv1"),
        x,
        Conv::new(cin, cout, 3).stride(stride).pad(1).bias(false),
    );
    let y = b.batch_norm(&format!("{name}.bn1"), y, cout);
    let y = b.act(&format!("{name}.relu"), y, Activation::Relu);
    let y = b.conv2d(
        &format!("{name}.conv2"),
        y,
        Conv::new(cout, cout, 3).pad(1).bias(false),
    );
    let y = b.batch_norm(&format!("{name}.bn2"), y, cout);
    let short = if stride != 1 || cin != cout {
        let s = b.conv2d(
            &format!("{name}.downsample.0"),
            x,
            Conv::new(cin, cout, 1).stride(stride).bias(false),
        );
        b.batch_norm(&format!("{name}.downsample.1"), s, cout)
    } else {
        x
    };
    let y = b.add(&format!("{name}.add"), y, short);
    b.act(&format!("{name}.relu_out"), y, Activation::Relu)
}

/// Initialise every parameter the way PyTorch's modules do by default, with torchvision's
/// ResNet choices for convs: conv weights Kaiming-normal (fan-out, ReLU gain), conv biases zero,
/// linear weights and biases uniform in `±1/sqrt(fan_in)`, norm weights one and biases zero,
/// running statistics at their reset values.
pub fn init_params(g: &mut Graph, seed: u64) {
    let params: Vec<_> = g.params().map(|(id, v)| (id, v.clone())).collect();
    for (i, (id, v)) in params.into_iter().enumerate() {
        let shape = v.shape.clone().unwrap_or_default();
        let n: usize = shape.iter().product();
        let mut rng = Rng::derive(seed, 0x1417, i as u64);
        let name = v.name.as_str();
        let t = if v.dtype == DType::I64 {
            Tensor::new(shape.clone(), Data::I64(vec![0; n]))
        } else {
            let data: Vec<f32> = if name.ends_with("running_var") {
                vec![1.0; n]
            } else if name.ends_with("running_mean") {
                vec![0.0; n]
            } else if shape.len() == 4 {
                let fan_out = shape[0] * shape[2] * shape[3];
                let std = (2.0 / fan_out as f32).sqrt();
                (0..n).map(|_| rng.normal() * std).collect()
            } else if shape.len() == 2 {
                let bound = 1.0 / (shape[1] as f32).sqrt();
                (0..n).map(|_| rng.range(-bound, bound)).collect()
            } else if name.ends_with(".weight") {
                vec![1.0; n]
            } else if name.ends_with(".bias") {
                // A linear's bias: uniform by its weight's fan-in; everything else zero.
                let w = name.trim_end_matches(".bias").to_string() + ".weight";
                match g.param_id(&w).and_then(|wid| g.values[wid.0].shape.clone()) {
                    Some(ws) if ws.len() == 2 => {
                        let bound = 1.0 / (ws[1] as f32).sqrt();
                        (0..n).map(|_| rng.range(-bound, bound)).collect()
                    }
                    _ => vec![0.0; n],
                }
            } else {
                // Layer scales and other per-channel multipliers keep PyTorch's small constant.
                vec![1e-6; n]
            };
            Tensor::from_f32(shape.clone(), data)
        };
        if let Ok(t) = t {
            g.tensors.insert(id, t);
        }
    }
}

/// Give the classifier a new head of `classes` outputs (fine-tuning on another label set): the
/// linear layer that produces the graph output gets fresh weights of the new shape.
pub fn reset_head(g: &mut Graph, classes: usize, seed: u64) -> Result<(), crate::TrainError> {
    let out = *g
        .outputs
        .first()
        .ok_or_else(|| crate::TrainError::Graph("the graph has no output".into()))?;
    let node = g
        .nodes
        .iter()
        .rev()
        .find(|n| n.outputs.contains(&out) && matches!(n.op, qvision_graph::Op::Linear { .. }))
        .cloned()
        .ok_or_else(|| {
            crate::TrainError::Graph(
                "the output does not come from a linear layer: cannot resize the head".into(),
            )
        })?;
    let w = node.inputs[1];
    let fan_in = g.values[w.0]
        .shape
        .as_ref()
        .and_then(|s| s.get(1).copied())
        .unwrap_or(1);
    let bound = 1.0 / (fan_in as f32).sqrt();
    let mut rng = Rng::derive(seed, 0x4EAD, 0);
    let mut set = |g: &mut Graph, id: ValueId, shape: Vec<usize>| {
        let n = shape.iter().product();
        let data = (0..n).map(|_| rng.range(-bound, bound)).collect();
        g.values[id.0].shape = Some(shape.clone());
        if let Ok(t) = Tensor::from_f32(shape, data) {
            g.tensors.insert(id, t);
        }
    };
    set(g, w, vec![classes, fan_in]);
    if let Some(&b) = node.inputs.get(2) {
        set(g, b, vec![classes]);
    }
    Ok(())
}
