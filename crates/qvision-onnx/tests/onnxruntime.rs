//! qvision's ONNX exports checked by the real consumers: `onnx.checker` (full check) and ONNX
//! Runtime, through `scripts/ort_run.py` (Python is a test-time oracle only; `scripts/py-deps`
//! installs it, and CI fails when it is missing).
//!
//! fp32: one model per classification family at opsets 13 and 17 equals qvision's output within
//! 1e-4 x max(1, max |logit|), with a dynamic batch of 2. int8 (QDQ): the exports, DenseNet,
//! RegNet, EfficientNet and ConvNeXt included, run in ONNX Runtime and keep qvision's top-1,
//! in the QDQ and the QOperator formats.

use qvision_graph::{Graph, Session, SessionOptions};
use qvision_onnx::ExportOptions;
use qvision_tensor::Tensor;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The PYTHONPATH with onnx and onnxruntime, or `None` (skip) outside CI.
fn oracle() -> Option<PathBuf> {
    let dir = std::env::var_os("QVISION_PYDEPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".cache/pydeps"));
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
    eprintln!("skipping: onnxruntime not installed (scripts/py-deps)");
    None
}

struct Case {
    name: String,
    graph: Graph,
    opset: i64,
    /// QOperator format (with com.microsoft ops) instead of QDQ.
    qoperator: bool,
    shape: Vec<usize>,
    x: Tensor,
}

/// Export every case, run them all in one Python process; each result is ORT's output.
fn run_ort(pp: &Path, cases: &[Case], tag: &str) -> Vec<Result<Vec<f32>, String>> {
    let dir = std::env::temp_dir().join(format!("qv-ort-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut job = vec![];
    for (i, c) in cases.iter().enumerate() {
        let onnx = dir.join(format!("{i}_{}.onnx", c.name));
        qvision_onnx::to_files(
            &c.graph,
            &ExportOptions {
                qoperator: c.qoperator,
                allow_contrib: c.qoperator,
                ..ExportOptions::new(c.opset, true, vec![1, c.shape[1], c.shape[2], c.shape[3]])
            },
            &onnx,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        let input = dir.join(format!("{i}.in"));
        let raw: Vec<u8> =
            c.x.as_f32()
                .unwrap()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
        std::fs::write(&input, raw).unwrap();
        job.push(serde_json::json!({
            "onnx": onnx, "input": input, "shape": c.shape, "output": dir.join(format!("{i}.out")),
        }));
    }
    let jf = dir.join("job.json");
    std::fs::write(&jf, serde_json::to_string(&job).unwrap()).unwrap();
    let out = Command::new("python3")
        .env("PYTHONPATH", pp)
        .arg(repo().join("scripts/ort_run.py"))
        .arg(&jf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let res = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if l["ok"].as_bool() == Some(true) {
                let b = std::fs::read(dir.join(format!("{i}.out"))).unwrap();
                Ok(b.chunks(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect())
            } else {
                Err(l["error"].as_str().unwrap_or("?").to_string())
            }
        })
        .collect();
    std::fs::remove_dir_all(&dir).ok();
    res
}

fn model(name: &str) -> Graph {
    let mut m = qvision_zoo::build(
        name,
        &qvision_zoo::ModelOptions {
            weights: qvision_zoo::Weights::Formula,
            num_classes: 10,
            ..Default::default()
        },
    )
    .unwrap();
    qvision_graph::weights::init_formula_with_gain(&mut m.graph, 12.0);
    m.graph
}

fn input(seed: u64, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v = qvision_graph::weights::formula_uniform(seed, n);
    Tensor::from_f32(shape.to_vec(), v.into_iter().map(|x| x * 4.0).collect()).unwrap()
}

fn size(name: &str) -> usize {
    if name == "inception_v3" {
        96
    } else {
        64
    }
}

const FAMILIES: &[&str] = &[
    "resnet18",
    "resnext50_32x4d",
    "wide_resnet50_2",
    "vgg11_bn",
    "squeezenet1_1",
    "densenet121",
    "inception_v3",
    "googlenet",
    "shufflenet_v2_x1_0",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mnasnet1_0",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "regnet_x_400mf",
    "regnet_y_400mf",
    "convnext_tiny",
];

#[test]
fn fp32_exports_match_in_onnxruntime() {
    let Some(pp) = oracle() else { return };
    let models: Vec<String> = match std::env::var("QVISION_ONNX_MODELS") {
        // QVISION_ONNX_MODELS=all checks every zoo model (slow)
        Ok(v) if v == "all" => qvision_zoo::models()
            .iter()
            .map(|m| m.name.to_string())
            .collect(),
        Ok(v) => v.split(',').map(str::to_string).collect(),
        Err(_) => FAMILIES.iter().map(|s| s.to_string()).collect(),
    };
    let mut cases = vec![];
    for (i, name) in models.iter().enumerate() {
        let s = size(name);
        let shape = vec![2, 3, s, s];
        cases.push(Case {
            name: name.clone(),
            graph: model(name),
            opset: if i % 2 == 0 { 13 } else { 17 },
            qoperator: false,
            x: input(11 + i as u64, &shape),
            shape,
        });
    }
    let got = run_ort(&pp, &cases, "fp32");
    let mut failures = vec![];
    for (c, r) in cases.iter().zip(got) {
        let want = Session::new(&c.graph, SessionOptions::default())
            .unwrap()
            .run(vec![c.x.clone()])
            .unwrap();
        let want = want[0].as_f32().unwrap();
        match r {
            Err(e) => failures.push(format!("{}: {e}", c.name)),
            Ok(y) => {
                let tol = 1e-4 * want.iter().fold(1f32, |m, v| m.max(v.abs()));
                let diff = y
                    .iter()
                    .zip(want)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                if y.len() != want.len() || diff > tol {
                    failures.push(format!(
                        "{} (opset {}): max |diff| {diff} > {tol}",
                        c.name, c.opset
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn int8_exports_run_in_onnxruntime() {
    use qvision_quant::calibrate::ObserverKind;
    use qvision_quant::{quantize_ptq, Backend, QConfig};
    let Some(pp) = oracle() else { return };
    let names: Vec<String> = match std::env::var("QVISION_ONNX_MODELS") {
        Ok(v) if v == "all" => qvision_zoo::models()
            .iter()
            .map(|m| m.name.to_string())
            .collect(),
        Ok(v) => v.split(',').map(str::to_string).collect(),
        Err(_) => [
            "resnet18",
            "densenet121",
            "regnet_x_400mf",
            "regnet_y_400mf",
            "efficientnet_b0",
            "convnext_tiny",
            "mobilenet_v3_large",
            "shufflenet_v2_x1_0",
            "googlenet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    };
    let mut cases = vec![];
    for (i, name) in names.iter().enumerate() {
        let g = model(name);
        let s = size(name);
        let cal = (0..3).map(|k| input(100 + k, &[1, 3, s, s]));
        let (q, _) = quantize_ptq(
            &g,
            cal,
            ObserverKind::MinMax,
            QConfig::default_for(Backend::X86),
            None,
        )
        .unwrap();
        let shape = vec![2, 3, s, s];
        for qoperator in [false, true] {
            cases.push(Case {
                name: format!("{name}{}", if qoperator { " (QOperator)" } else { "" }),
                graph: q.clone(),
                opset: 13,
                qoperator,
                x: input(21 + i as u64, &shape),
                shape: shape.clone(),
            });
        }
    }
    let got = run_ort(&pp, &cases, "int8");
    let mut failures = vec![];
    for (c, r) in cases.iter().zip(got) {
        let want = Session::new(&c.graph, SessionOptions::default())
            .unwrap()
            .run(vec![c.x.clone()])
            .unwrap();
        let want = want[0].as_f32().unwrap();
        match r {
            Err(e) => failures.push(format!("{}: {e}", c.name)),
            Ok(y) => {
                let db = qvision_quant::sqnr_db(want, &y);
                eprintln!("{}: qvision int8 vs ONNX Runtime int8 {db:.1} dB", c.name);
                let argmax =
                    |v: &[f32]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
                for b in 0..2 {
                    if argmax(&want[b * 10..b * 10 + 10]) != argmax(&y[b * 10..b * 10 + 10]) {
                        failures.push(format!(
                            "{}: top-1 differs on input {b} ({db:.1} dB)",
                            c.name
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
