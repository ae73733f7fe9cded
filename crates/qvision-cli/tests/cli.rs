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
    let out = qvision(&["bench", "missing.qvm", "--precision", "int8"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("missing.qvm") && !err.contains("panicked"),
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

#[test]
fn bench_both_adds_int8_and_ratio() {
    let out = qvision(&[
        "bench",
        "squeezenet1_1",
        "--precision",
        "both",
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
    for k in [
        "model", "threads", "batch", "fp32_ms", "int8_ms", "ratio", "isa",
    ] {
        assert!(v.get(k).is_some(), "missing {k}: {v}");
    }
    let ratio = v["int8_ms"].as_f64().unwrap() / v["fp32_ms"].as_f64().unwrap();
    assert!((ratio - v["ratio"].as_f64().unwrap()).abs() < 1e-9);
}

#[test]
fn bench_table_writes_docs_and_chart() {
    let dir = std::env::temp_dir().join(format!("qv-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let md = dir.join("BENCH.md");
    std::fs::write(&md, "# Benchmarks\n\nkept text\n").unwrap();
    let svg = dir.join("ratios.svg");
    let args = [
        "bench",
        "--models",
        "squeezenet1_1,mobilenet_v3_small",
        "--precision",
        "both",
        "--threads",
        "1",
        "--size",
        "64",
        "--warmup",
        "0",
        "--iters",
        "1",
        "--write-docs",
        md.to_str().unwrap(),
        "--chart",
        svg.to_str().unwrap(),
    ];
    for _ in 0..2 {
        let out = qvision(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(
            table.contains("| model | fp32 (ms) | int8 (ms) | int8 / fp32 |"),
            "{table}"
        );
    }
    let doc = std::fs::read_to_string(&md).unwrap();
    assert!(doc.starts_with("# Benchmarks\n\nkept text\n"), "{doc}");
    // written twice, one section
    assert_eq!(doc.matches("| mobilenet_v3_small |").count(), 1, "{doc}");
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg") && chart.contains("squeezenet1_1"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn quantize_report_lists_layers_and_honours_overrides() {
    let dir = std::env::temp_dir().join(format!("qv-qrep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let qvm = dir.join("m.qvm");
    let out = qvision(&[
        "quantize",
        "resnet18",
        "--random-weights",
        "--calib",
        "synthetic",
        "--samples",
        "2",
        "--observer",
        "minmax",
        "--skip",
        "Linear",
        "--skip",
        "layer4.1.*",
        "--per-tensor",
        "layer1.*",
        "--report",
        "--out",
        qvm.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let fp32: Vec<&str> = v["fp32_nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert!(
        fp32.contains(&"fc") && fp32.contains(&"layer4.1.conv2"),
        "{fp32:?}"
    );
    let layers = v["layers"].as_array().unwrap();
    assert!(layers.len() > 15, "{v}");
    for l in layers {
        let db = l["sqnr_db"].as_f64().unwrap_or(f64::INFINITY);
        assert!(db > 10.0, "{l}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn export_import_and_predict_an_onnx_file() {
    let dir = std::env::temp_dir().join(format!("qv-onnx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let onnx = dir.join("sq.onnx");
    let out = qvision(&[
        "export",
        "squeezenet1_1",
        "--random-weights",
        "--size",
        "64",
        "--out",
        onnx.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = qvision(&["import", onnx.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["input_shape"], serde_json::json!([1, 3, 64, 64]));
    assert_eq!(v["quantized"], false);
    let img = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/preprocess/image.png");
    let out = qvision(&[
        "predict",
        onnx.to_str().unwrap(),
        img.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // an ONNX model quantizes, and its int8 model exports as QDQ
    let qvm = dir.join("sq.qvm");
    let out = qvision(&[
        "quantize",
        onnx.to_str().unwrap(),
        "--calib",
        "synthetic",
        "--samples",
        "2",
        "--out",
        qvm.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let q8 = dir.join("sq8.onnx");
    let out = qvision(&[
        "export",
        qvm.to_str().unwrap(),
        "--out",
        q8.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = qvision(&["import", q8.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["quantized"], true, "{v}");
    let out = qvision(&[
        "export",
        "squeezenet1_1",
        "--random-weights",
        "--out",
        "x.onnx",
        "--opset",
        "9",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("opset 9"));
    std::fs::remove_dir_all(&dir).unwrap();
}
