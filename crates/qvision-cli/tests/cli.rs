//! The CLI's contract: listing, JSON shapes, and clear errors for bad input.

use std::process::Command;

fn qvision(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_qvision"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn models_lists_the_whole_classification_zoo() {
    let out = qvision(&["models", "--task", "classification", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert!(rows.len() >= 67, "{} models", rows.len());
    let r50 = rows.iter().find(|r| r["name"] == "resnet50").unwrap();
    assert_eq!(r50["params"], 25_557_032);
    // torchvision reports 4.089 GFLOPS (multiply-adds) for resnet50
    assert_eq!((r50["macs"].as_f64().unwrap() / 1e6).round() / 1e3, 4.089);
    let text = qvision(&["models"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("regnet_y_128gf"));
}

#[test]
fn bench_json_has_the_documented_keys() {
    let out = qvision(&[
        "bench",
        "squeezenet1_1",
        "--json",
        "--threads",
        "1",
        "--size",
        "64",
        "--warmup",
        "1",
        "--iters",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in ["model", "threads", "batch", "fp32_ms"] {
        assert!(v.get(k).is_some(), "missing {k}: {v}");
    }
    assert_eq!(v["threads"], 1);
}

#[test]
fn bad_input_gets_clear_errors() {
    let out = qvision(&["predict", "resnet9000", "--weights", "x.pth", "a.jpg"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown model 'resnet9000'"));

    let dir = std::env::temp_dir().join(format!("qv-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.pth");
    std::fs::write(&junk, b"PK\x03\x04 not really a zip").unwrap();
    let out = qvision(&[
        "predict",
        "resnet18",
        "--weights",
        junk.to_str().unwrap(),
        "a.jpg",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("junk.pth"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // weights of another model: every mismatch named
    let fx = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/weights/tiny_zip.pth");
    let out = qvision(&[
        "predict",
        "resnet18",
        "--weights",
        fx.to_str().unwrap(),
        "a.jpg",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("missing key 'layer1.0.conv1.weight'")
            && err.contains("unexpected key 'half'"),
        "{err}"
    );

    let out = qvision(&["bench", "resnet18", "--precision", "int4"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--precision int4"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn quantize_writes_a_qvm_that_predict_runs() {
    let dir = std::env::temp_dir().join(format!("qv-qvm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let qvm = dir.join("m.qvm");
    let out = qvision(&[
        "quantize",
        "mobilenet_v3_small",
        "--random-weights",
        "--calib",
        "synthetic",
        "--samples",
        "2",
        "--observer",
        "minmax",
        "--out",
        qvm.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["int8_nodes"].as_u64().unwrap() > 20, "{report}");
    let img = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/preprocess/image.png");
    let out = qvision(&[
        "predict",
        qvm.to_str().unwrap(),
        img.to_str().unwrap(),
        "--json",
        "--topk",
        "3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let preds: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(preds[0]["top"].as_array().unwrap().len(), 3);
    // a truncated model file is a clear error, not a panic
    let bytes = std::fs::read(&qvm).unwrap();
    let cut = dir.join("cut.qvm");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = qvision(&["predict", cut.to_str().unwrap(), img.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cut.qvm") && !err.contains("panicked"),
        "{err}"
    );
    let out = qvision(&[
        "quantize",
        "resnet18",
        "--random-weights",
        "--calib",
        "synthetic",
        "--observer",
        "median",
        "--out",
        "x.qvm",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown observer 'median'"));
    std::fs::remove_dir_all(&dir).unwrap();
}
