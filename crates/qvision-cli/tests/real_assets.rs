//! The official torchvision MobileNetV2 (legacy .pth) on foolbox's 20 labelled ImageNet images,
//! through the `qvision predict` CLI, against torchvision's own top-5 (fixtures/real).
//!
//! Needs `scripts/fetch-assets`. Under `CI=true` a missing asset fails the test.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn assets() -> Option<PathBuf> {
    let dir = std::env::var_os("QVISION_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".cache/assets"));
    if dir.join("mobilenet_v2-b0353104.pth").exists() && dir.join("foolbox").is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "real assets missing in {}: run scripts/fetch-assets",
            dir.display()
        );
    }
    eprintln!(
        "SKIPPED: real assets missing in {} (run scripts/fetch-assets)",
        dir.display()
    );
    None
}

#[test]
fn mobilenet_v2_matches_torchvision_on_foolbox_images() {
    let Some(dir) = assets() else { return };
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("fixtures/real/mobilenet_v2_foolbox.json")).unwrap(),
    )
    .unwrap();
    let rows = fixture["images"].as_array().unwrap();
    assert_eq!(rows.len(), 20);
    let images: Vec<PathBuf> = rows
        .iter()
        .map(|r| dir.join("foolbox").join(r["image"].as_str().unwrap()))
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_qvision"))
        .args(["predict", "mobilenet_v2", "--json", "--weights"])
        .arg(dir.join("mobilenet_v2-b0353104.pth"))
        .args(&images)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let preds: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let preds = preds.as_array().unwrap();
    assert_eq!(preds.len(), 20);
    let mut correct = 0;
    for (p, r) in preds.iter().zip(rows) {
        let ours: Vec<u64> = p["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["index"].as_u64().unwrap())
            .collect();
        let theirs: Vec<u64> = r["top5"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(
            ours, theirs,
            "{}: top-5 differs from torchvision",
            r["image"]
        );
        let probs: Vec<f64> = p["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["prob"].as_f64().unwrap())
            .collect();
        let tprobs: Vec<f64> = r["prob"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for (a, b) in probs.iter().zip(&tprobs) {
            assert!(
                (a - b).abs() < 1e-4,
                "{}: prob {a} vs torchvision {b}",
                r["image"]
            );
        }
        if ours[0] == r["label"].as_u64().unwrap() {
            correct += 1;
        }
    }
    assert!(correct >= 18, "top-1 correct on {correct}/20");
}
