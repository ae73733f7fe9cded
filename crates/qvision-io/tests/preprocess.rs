//! The eval transforms equal torchvision's (PIL path) bit for bit on a lossless image.

use qvision_io::image_io::load_rgb;
use qvision_io::transforms::{EvalTransform, Filter};
use std::path::PathBuf;

#[test]
fn eval_transforms_equal_torchvision() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/preprocess");
    let img = load_rgb(&dir.join("image.png")).unwrap();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    for case in cases.as_array().unwrap() {
        let t = EvalTransform {
            resize: case["resize"].as_u64().unwrap() as usize,
            crop: case["crop"].as_u64().unwrap() as usize,
            filter: if case["interpolation"] == "bicubic" {
                Filter::Bicubic
            } else {
                Filter::Bilinear
            },
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        };
        let got = t.apply(&img);
        let shape: Vec<usize> = case["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(got.shape(), shape.as_slice());
        let want: Vec<f32> = case["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let got = got.as_f32().unwrap();
        let mismatches = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(
            mismatches,
            0,
            "{t:?}: {mismatches} of {} values differ",
            want.len()
        );
    }
}
