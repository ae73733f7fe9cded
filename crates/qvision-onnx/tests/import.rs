//! Import of torchvision's own ONNX exports (fixtures/onnx, made by
//! `scripts/make_fixtures.py onnx` with formula weights): the graphs load with the state-dict
//! names, run on qvision's kernels and give PyTorch's logits; ONNX Runtime's QDQ model runs on
//! the int8 kernels close to ONNX Runtime's own int8 result; export -> import round-trips.

use qvision_graph::{Op, QOp, Session, SessionOptions};
use qvision_onnx::{import, ExportOptions};
use qvision_tensor::Tensor;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/onnx")
}

fn input(seed: u64, shape: &[usize], scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v = qvision_graph::weights::formula_uniform(seed, n);
    Tensor::from_f32(shape.to_vec(), v.into_iter().map(|x| x * scale).collect()).unwrap()
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
        .unwrap()
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap()
}

#[test]
fn torchvision_exports_import_and_match_pytorch() {
    let exp = expected();
    for name in ["squeezenet1_1", "mobilenet_v3_small", "shufflenet_v2_x0_5"] {
        let e = &exp[name];
        let file = fixtures().join(e["file"].as_str().unwrap());
        let imp = import(&std::fs::read(&file).unwrap(), &file.display().to_string()).unwrap();
        assert!(!imp.is_quantized());
        // parameters keep the state-dict names
        assert!(
            imp.graph.params().any(|(_, v)| v.name.ends_with(".weight")),
            "{name}: no state-dict names"
        );
        let size = e["size"].as_u64().unwrap() as usize;
        let batch = e["batch"].as_u64().unwrap() as usize;
        let x = input(
            7,
            &[batch, 3, size, size],
            e["input_scale"].as_f64().unwrap() as f32,
        );
        let want: Vec<f32> = e["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        for blocked in [true, false] {
            let s = Session::new(
                &imp.graph,
                SessionOptions {
                    blocked: Some(blocked),
                    ..Default::default()
                },
            )
            .unwrap();
            let y = s.run(vec![x.clone()]).unwrap();
            let y = y[0].as_f32().unwrap();
            assert_eq!(y.len(), want.len(), "{name}");
            let tol = 1e-4 * want.iter().fold(1f32, |m, v| m.max(v.abs()));
            let diff = y
                .iter()
                .zip(&want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff <= tol, "{name}: max |diff| {diff} > {tol}");
        }
    }
}

#[test]
fn onnx_runtime_qdq_models_run_on_the_int8_kernels() {
    let e = &expected()["squeezenet1_1_qdq"];
    let file = fixtures().join(e["file"].as_str().unwrap());
    let imp = import(&std::fs::read(&file).unwrap(), "qdq").unwrap();
    assert!(imp.is_quantized());
    let (g, report) = imp.int8().unwrap();
    let convs = g
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Q(QOp::Conv2d { .. })))
        .count();
    assert!(
        convs >= 25,
        "{convs} int8 convs; fp32 islands {:?}",
        report.fp32
    );
    let x = input(7, &[2, 3, 96, 96], 4.0);
    let y = Session::new(&g, SessionOptions::default())
        .unwrap()
        .run(vec![x])
        .unwrap();
    let y = y[0].as_f32().unwrap();
    let want: Vec<f32> = e["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let db = qvision_quant::sqnr_db(&want, y);
    assert!(db >= 20.0, "qvision int8 vs ONNX Runtime int8: {db:.1} dB");
    for b in 0..2 {
        assert_eq!(
            argmax(&want[b * 10..b * 10 + 10]),
            argmax(&y[b * 10..b * 10 + 10])
        );
    }
}

#[test]
fn export_then_import_round_trips() {
    let mut m = qvision_zoo::build(
        "mobilenet_v3_small",
        &qvision_zoo::ModelOptions {
            weights: qvision_zoo::Weights::Formula,
            num_classes: 10,
            ..Default::default()
        },
    )
    .unwrap();
    qvision_graph::weights::init_formula_with_gain(&mut m.graph, 12.0);
    let x = input(3, &[1, 3, 64, 64], 2.0);
    let a = Session::new(&m.graph, SessionOptions::default())
        .unwrap()
        .run(vec![x.clone()])
        .unwrap();
    for opset in [13, 17, 20] {
        let bytes = qvision_onnx::to_bytes(
            &m.graph,
            &ExportOptions::new(opset, true, vec![1, 3, 64, 64]),
        )
        .unwrap();
        let imp = import(&bytes, "round trip").unwrap();
        assert_eq!(imp.opset, opset);
        let b = Session::new(&imp.graph, SessionOptions::default())
            .unwrap()
            .run(vec![x.clone()])
            .unwrap();
        let (a, b) = (a[0].as_f32().unwrap(), b[0].as_f32().unwrap());
        let diff = a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(diff <= 1e-5, "opset {opset}: {diff}");
    }
}

#[test]
fn unsupported_ops_and_bad_files_are_named() {
    use qvision_onnx::proto::{self, dtype};
    let m = proto::Model {
        ir_version: 8,
        opset: vec![(String::new(), 13)],
        graph: proto::Graph {
            name: "g".into(),
            nodes: vec![proto::Node {
                name: "weird_node".into(),
                op_type: "NonMaxSuppression".into(),
                inputs: vec!["x".into()],
                outputs: vec!["y".into()],
                ..Default::default()
            }],
            inputs: vec![proto::ValueInfo {
                name: "x".into(),
                elem_type: dtype::FLOAT,
                dims: vec![Some(1), Some(3), Some(8), Some(8)],
                dim_params: vec![None; 4],
            }],
            outputs: vec![],
            initializers: vec![],
        },
        ..Default::default()
    };
    let e = import(&proto::encode(&m), "weird.onnx")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("NonMaxSuppression") && e.contains("weird_node") && e.contains("opset 13"),
        "{e}"
    );
    let good = std::fs::read(fixtures().join("squeezenet1_1_opset13.onnx")).unwrap();
    for cut in [10, good.len() / 3, good.len() - 7] {
        let e = import(&good[..cut], "cut.onnx")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("cut.onnx") || e.contains("ONNX"), "{e}");
    }
}

#[test]
fn imported_torchvision_exports_quantize() {
    use qvision_quant::calibrate::ObserverKind;
    use qvision_quant::{quantize_ptq, Backend, QConfig};
    let exp = expected();
    for name in ["squeezenet1_1", "mobilenet_v3_small", "shufflenet_v2_x0_5"] {
        let e = &exp[name];
        let file = fixtures().join(e["file"].as_str().unwrap());
        let imp = import(&std::fs::read(&file).unwrap(), name).unwrap();
        let size = e["size"].as_u64().unwrap() as usize;
        let cal = (0..4).map(|k| input(100 + k, &[1, 3, size, size], 4.0));
        let (q, report) = quantize_ptq(
            &imp.graph,
            cal,
            ObserverKind::MinMax,
            QConfig::default_for(Backend::X86),
            None,
        )
        .unwrap();
        assert!(report.int8.len() > 10, "{name}: {:?}", report.fp32);
        let fp = Session::new(&imp.graph, SessionOptions::default()).unwrap();
        let qs = Session::new(&q, SessionOptions::default()).unwrap();
        for seed in [7, 8] {
            let x = input(seed, &[1, 3, size, size], 4.0);
            let a = fp.run(vec![x.clone()]).unwrap();
            let b = qs.run(vec![x]).unwrap();
            let (a, b) = (a[0].as_f32().unwrap(), b[0].as_f32().unwrap());
            let db = qvision_quant::sqnr_db(a, b);
            assert!(db >= 20.0, "{name}: {db:.1} dB");
            assert_eq!(argmax(a), argmax(b), "{name}");
        }
    }
}
