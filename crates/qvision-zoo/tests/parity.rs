//! Parity with torchvision: parameter names and shapes, parameter counts, and logits under
//! formula weights, against fixtures made by `scripts/make_fixtures.py parity`.

use qvision_graph::{Session, SessionOptions};
use qvision_tensor::Tensor;
use qvision_zoo::{build, models, ModelOptions};
use serde_json::Value;
use std::path::PathBuf;

fn fixture(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/parity")
        .join(format!("{name}.json"));
    let s = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/make_fixtures.py parity)", p.display()));
    serde_json::from_str(&s).expect("fixture json")
}

#[test]
fn state_dict_keys_and_shapes_equal_torchvision() {
    let mut failures = vec![];
    for m in models() {
        let fx = fixture(m.name);
        let g = m.graph(&ModelOptions::default());
        let ours: Vec<(String, Vec<usize>)> = g
            .params()
            .map(|(_, v)| (v.name.clone(), v.shape.clone().unwrap_or_default()))
            .collect();
        let theirs: Vec<(String, Vec<usize>)> = fx["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|kv| {
                (
                    kv[0].as_str().unwrap().to_string(),
                    kv[1]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| d.as_u64().unwrap() as usize)
                        .collect(),
                )
            })
            .collect();
        let mut a = ours.clone();
        let mut b = theirs.clone();
        a.sort();
        b.sort();
        if a != b {
            let only_ours: Vec<_> = a.iter().filter(|k| !b.contains(k)).take(5).collect();
            let only_theirs: Vec<_> = b.iter().filter(|k| !a.contains(k)).take(5).collect();
            failures.push(format!(
                "{}: ours only {only_ours:?}; torchvision only {only_theirs:?}",
                m.name
            ));
        }
        let np = fx["num_params"].as_u64().unwrap() as usize;
        if g.num_params() != np {
            failures.push(format!(
                "{}: {} params, torchvision {np}",
                m.name,
                g.num_params()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn formula_input(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let u = qvision_graph::weights::formula_uniform(qvision_graph::weights::fnv1a64("input"), n);
    Tensor::from_f32(shape.to_vec(), u.into_iter().map(|v| v * 2.0).collect()).unwrap()
}

/// Logits within 1e-4 x max(1, max|logit|) of torchvision's.
fn check_logits(name: &str) -> Result<f32, String> {
    let fx = fixture(name);
    let opts = ModelOptions {
        transform_input: Some(matches!(name, "googlenet" | "inception_v3")),
        ..Default::default()
    };
    let mut model = build(name, &opts).map_err(|e| e.to_string())?;
    let gain = fx["gain"].as_f64().ok_or("fixture has no gain")?;
    qvision_graph::weights::init_formula_with_gain(&mut model.graph, gain);
    let shape: Vec<usize> = fx["input_shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let want: Vec<f32> = fx["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let session =
        Session::new(&model.graph, SessionOptions::default()).map_err(|e| e.to_string())?;
    let out = session
        .run(vec![formula_input(&shape)])
        .map_err(|e| e.to_string())?;
    let got = out[0].as_f32().map_err(|e| e.to_string())?;
    if got.len() != want.len() {
        return Err(format!("{name}: {} logits, want {}", got.len(), want.len()));
    }
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let max_diff = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    if max_diff > 1e-4 * scale {
        return Err(format!(
            "{name}: max abs diff {max_diff} > {}",
            1e-4 * scale
        ));
    }
    Ok(max_diff / scale)
}

macro_rules! parity_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                match check_logits(stringify!($name)) {
                    Ok(rel) => eprintln!("{}: relative max diff {rel:.2e}", stringify!($name)),
                    Err(e) => panic!("{e}"),
                }
            }
        )*
        #[test]
        fn every_model_has_a_parity_test() {
            let tested = [$(stringify!($name)),*];
            for m in models() {
                assert!(tested.contains(&m.name), "{} has no parity test", m.name);
            }
        }
    };
}

mod logits {
    use super::*;
    parity_tests!(
        resnet18,
        resnet34,
        resnet50,
        resnet101,
        resnet152,
        resnext50_32x4d,
        resnext101_32x8d,
        resnext101_64x4d,
        wide_resnet50_2,
        wide_resnet101_2,
        densenet121,
        densenet161,
        densenet169,
        densenet201,
        efficientnet_b0,
        efficientnet_b1,
        efficientnet_b2,
        efficientnet_b3,
        efficientnet_b4,
        efficientnet_b5,
        efficientnet_b6,
        efficientnet_b7,
        efficientnet_v2_s,
        efficientnet_v2_m,
        efficientnet_v2_l,
        mobilenet_v2,
        mobilenet_v3_large,
        mobilenet_v3_small,
        squeezenet1_0,
        squeezenet1_1,
        mnasnet0_5,
        mnasnet0_75,
        mnasnet1_0,
        mnasnet1_3,
        shufflenet_v2_x0_5,
        shufflenet_v2_x1_0,
        shufflenet_v2_x1_5,
        shufflenet_v2_x2_0,
        googlenet,
        inception_v3,
        convnext_tiny,
        convnext_small,
        convnext_base,
        convnext_large,
        regnet_x_400mf,
        regnet_x_800mf,
        regnet_x_1_6gf,
        regnet_x_3_2gf,
        regnet_x_8gf,
        regnet_x_16gf,
        regnet_x_32gf,
        regnet_y_400mf,
        regnet_y_800mf,
        regnet_y_1_6gf,
        regnet_y_3_2gf,
        regnet_y_8gf,
        regnet_y_16gf,
        regnet_y_32gf,
        regnet_y_128gf,
        vgg11,
        vgg11_bn,
        vgg13,
        vgg13_bn,
        vgg16,
        vgg16_bn,
        vgg19,
        vgg19_bn,
    );
}

/// Each model's eval transform equals torchvision's for its DEFAULT weights
/// (fixtures/transforms.json, from `scripts/make_fixtures.py transforms`).
#[test]
fn eval_transforms_equal_torchvision_defaults() {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/transforms.json");
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    for m in models() {
        let e = &fx[m.name];
        let t = m.transform;
        assert_eq!(
            t.crop as u64,
            e["crop_size"].as_u64().unwrap(),
            "{}",
            m.name
        );
        assert_eq!(
            t.resize as u64,
            e["resize_size"].as_u64().unwrap(),
            "{}",
            m.name
        );
        let interp = match t.interpolation {
            qvision_zoo::Interpolation::Bilinear => "bilinear",
            qvision_zoo::Interpolation::Bicubic => "bicubic",
        };
        assert_eq!(interp, e["interpolation"].as_str().unwrap(), "{}", m.name);
        for c in 0..3 {
            assert_eq!(
                t.mean[c],
                e["mean"][c].as_f64().unwrap() as f32,
                "{}",
                m.name
            );
            assert_eq!(t.std[c], e["std"][c].as_f64().unwrap() as f32, "{}", m.name);
        }
        assert_eq!(
            m.default_weights,
            e["weights"].as_str().unwrap(),
            "{}",
            m.name
        );
    }
}
