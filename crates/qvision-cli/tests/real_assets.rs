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

/// PTQ of the official MobileNetV2: calibrated on foolbox's CIFAR and MNIST samples (upsampled,
/// disjoint from the evaluation images), evaluated on the 20 labelled ImageNet images.
#[test]
fn mobilenet_v2_int8_ptq_keeps_its_accuracy() {
    use qvision_graph::{Session, SessionOptions};
    use qvision_io::image_io::load_rgb;
    use qvision_io::transforms::{EvalTransform, Filter};
    use qvision_quant::calibrate::ObserverKind;
    use qvision_quant::{quantize_ptq, Backend, QConfig};
    use qvision_zoo::{build, ModelOptions, Weights};

    let Some(dir) = assets() else { return };
    let sd = qvision_io::load_state_dict(&dir.join("mobilenet_v2-b0353104.pth")).unwrap();
    let model = build(
        "mobilenet_v2",
        &ModelOptions {
            weights: Weights::StateDict(sd),
            ..Default::default()
        },
    )
    .unwrap();
    let t = model.info.transform;
    let tf = EvalTransform {
        resize: t.resize,
        crop: t.crop,
        filter: Filter::Bilinear,
        mean: t.mean,
        std: t.std,
    };
    let load = |p: &std::path::Path| {
        let x = tf.apply(&load_rgb(p).unwrap());
        x.reshape(vec![1, 3, t.crop, t.crop]).unwrap()
    };
    let mut files: Vec<_> = std::fs::read_dir(dir.join("foolbox"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let calib: Vec<_> = files
        .iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("cifar") || n.starts_with("mnist")
        })
        .map(|p| load(p))
        .collect();
    assert!(calib.len() >= 40);
    let (q, report) = quantize_ptq(
        &model.graph,
        calib,
        ObserverKind::Percentile {
            lower: 0.01,
            upper: 99.99,
        },
        QConfig::default_for(Backend::X86),
        None,
    )
    .unwrap();
    assert!(
        report.int8.len() >= 50,
        "{} convs in int8",
        report.int8.len()
    );
    let fp = Session::new(&model.graph, SessionOptions::default()).unwrap();
    let qs = Session::new(&q, SessionOptions::default()).unwrap();
    let argmax = |t: &qvision_tensor::Tensor| {
        let v = t.as_f32().unwrap();
        (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap()
    };
    let mut int8_top1 = vec![];
    let mut batch = vec![];
    let (mut agree, mut correct_q, mut correct_f) = (0, 0, 0);
    for p in files.iter().filter(|p| {
        p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("imagenet")
    }) {
        let label: usize = p
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .rsplit('_')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let x = load(p);
        batch.extend_from_slice(x.as_f32().unwrap());
        let a = argmax(&fp.run(vec![x.clone()]).unwrap()[0]);
        let b = argmax(&qs.run(vec![x]).unwrap()[0]);
        int8_top1.push(b);
        agree += usize::from(a == b);
        correct_f += usize::from(a == label);
        correct_q += usize::from(b == label);
    }
    eprintln!("fp32 top-1 {correct_f}/20, int8 top-1 {correct_q}/20, agreement {agree}/20");
    assert!(correct_q >= 18, "int8 top-1 correct on {correct_q}/20");
    assert!(agree >= 19, "int8 agrees with fp32 on {agree}/20");

    // The int8 model exported as ONNX QDQ keeps qvision int8's top-1 in ONNX Runtime.
    let Some(pp) = onnx_oracle() else { return };
    let tmp = std::env::temp_dir().join(format!("qv-mnv2-onnx-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let onnx = tmp.join("mobilenet_v2_int8.onnx");
    let bytes = qvision_onnx::to_bytes(
        &q,
        &qvision_onnx::ExportOptions::new(13, true, vec![1, 3, t.crop, t.crop]),
    )
    .unwrap();
    std::fs::write(&onnx, bytes).unwrap();
    // and the fp32 model, on the same real images
    let onnx32 = tmp.join("mobilenet_v2_fp32.onnx");
    let bytes = qvision_onnx::to_bytes(
        &model.graph,
        &qvision_onnx::ExportOptions::new(13, true, vec![1, 3, t.crop, t.crop]),
    )
    .unwrap();
    std::fs::write(&onnx32, bytes).unwrap();
    let n = int8_top1.len();
    let raw: Vec<u8> = batch.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(tmp.join("x.in"), raw).unwrap();
    let job = serde_json::json!([
        {"onnx": onnx, "input": tmp.join("x.in"), "shape": [n, 3, t.crop, t.crop], "output": tmp.join("y.out")},
        {"onnx": onnx32, "input": tmp.join("x.in"), "shape": [n, 3, t.crop, t.crop], "output": tmp.join("y32.out")},
    ]);
    std::fs::write(tmp.join("job.json"), job.to_string()).unwrap();
    let out = Command::new("python3")
        .env("PYTHONPATH", &pp)
        .arg(root().join("scripts/ort_run.py"))
        .arg(tmp.join("job.json"))
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        line.matches("\"ok\": true").count() == 2,
        "{line} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let y: Vec<f32> = std::fs::read(tmp.join("y.out"))
        .unwrap()
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let ort_agree = (0..n)
        .filter(|&i| {
            let row = &y[i * 1000..(i + 1) * 1000];
            (0..1000)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap()
                == int8_top1[i]
        })
        .count();
    eprintln!("ONNX Runtime on the int8 export agrees with qvision int8 on {ort_agree}/{n}");
    assert!(
        ort_agree >= 19,
        "ONNX Runtime int8 top-1 agrees on {ort_agree}/{n}"
    );
    let y32: Vec<f32> = std::fs::read(tmp.join("y32.out"))
        .unwrap()
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let x = qvision_tensor::Tensor::from_f32(vec![n, 3, t.crop, t.crop], batch.clone()).unwrap();
    let ours = fp.run(vec![x]).unwrap();
    let ours = ours[0].as_f32().unwrap();
    let tol = 1e-4 * ours.iter().fold(1f32, |m, v| m.max(v.abs()));
    let diff = ours
        .iter()
        .zip(&y32)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff <= tol,
        "fp32 export in ONNX Runtime: max |diff| {diff} > {tol}"
    );
    std::fs::remove_dir_all(&tmp).ok();
}

/// The PYTHONPATH with onnx and onnxruntime (scripts/py-deps); under CI a missing one fails.
fn onnx_oracle() -> Option<PathBuf> {
    let dir = std::env::var_os("QVISION_PYDEPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".cache/pydeps"));
    let ok = Command::new("python3")
        .env("PYTHONPATH", &dir)
        .args(["-c", "import onnx, onnxruntime, numpy"])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("onnx/onnxruntime are missing: run scripts/py-deps");
    }
    eprintln!("SKIPPED: onnxruntime not installed (scripts/py-deps)");
    None
}

/// The same PTQ through the CLI: `quantize` (calibration images disjoint from the evaluation
/// ones) then `eval` on the 20 labelled ImageNet photos.
#[test]
fn quantize_then_eval_through_the_cli() {
    let Some(dir) = assets() else { return };
    let tmp = std::env::temp_dir().join(format!("qv-eval-{}", std::process::id()));
    let (calib, data) = (tmp.join("calib"), tmp.join("data"));
    std::fs::create_dir_all(&calib).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    for e in std::fs::read_dir(dir.join("foolbox")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let to = if name.starts_with("imagenet") {
            &data
        } else if name.starts_with("cifar") || name.starts_with("mnist") {
            &calib
        } else {
            continue;
        };
        std::fs::copy(&p, to.join(&name)).unwrap();
    }
    let weights = dir.join("mobilenet_v2-b0353104.pth");
    let qvm = tmp.join("mnv2.qvm");
    let run = |args: &[&std::ffi::OsStr]| {
        Command::new(env!("CARGO_BIN_EXE_qvision"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&[
        "quantize".as_ref(),
        "mobilenet_v2".as_ref(),
        "--weights".as_ref(),
        weights.as_os_str(),
        "--calib".as_ref(),
        calib.as_os_str(),
        "--observer".as_ref(),
        "percentile".as_ref(),
        "--out".as_ref(),
        qvm.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&[
        "eval".as_ref(),
        "mobilenet_v2".as_ref(),
        "--weights".as_ref(),
        weights.as_os_str(),
        "--quantized".as_ref(),
        qvm.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--json".as_ref(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["images"], 20);
    assert!(r["int8_top1"].as_f64().unwrap() >= 90.0, "{r}");
    assert!(r["agreement"].as_f64().unwrap() >= 95.0, "{r}");
    assert!(r["fp32_top1"].as_f64().unwrap() >= 90.0, "{r}");
    std::fs::remove_dir_all(&tmp).unwrap();
}
