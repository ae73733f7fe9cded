//! Post-training quantization end to end on zoo models with formula weights: the int8 graph runs
//! (convolutions on the int8 kernels) and its logits stay close to fp32.

use qvision_graph::{Op, Session, SessionOptions};
use qvision_quant::calibrate::ObserverKind;
use qvision_quant::{quantize_ptq, sqnr_db, Backend, QConfig};
use qvision_tensor::Tensor;
use qvision_zoo::{build, ModelOptions, Weights};

fn batches(n: usize, size: usize, seed: u64) -> Vec<Tensor> {
    (0..n)
        .map(|i| {
            let v = qvision_graph::weights::formula_uniform(seed + i as u64, 3 * size * size);
            Tensor::from_f32(
                vec![1, 3, size, size],
                v.into_iter().map(|x| x * 2.0).collect(),
            )
            .unwrap()
        })
        .collect()
}

fn check(name: &str, observer: ObserverKind, min_db: f64) {
    let model = build(
        name,
        &ModelOptions {
            weights: Weights::Formula,
            ..Default::default()
        },
    )
    .unwrap();
    let cal = batches(4, 64, 100);
    let (q, report) = quantize_ptq(
        &model.graph,
        cal,
        observer,
        QConfig::default_for(Backend::X86),
        None,
    )
    .unwrap();
    assert!(
        q.nodes.iter().any(|n| matches!(n.op, Op::QConv2d { .. })),
        "{name}: no int8 conv"
    );
    assert!(!report.int8.is_empty());
    let fp = Session::new(&model.graph, SessionOptions::default()).unwrap();
    let qs = Session::new(&q, SessionOptions::default()).unwrap();
    for x in batches(2, 64, 7) {
        let a = fp.run(vec![x.clone()]).unwrap();
        let b = qs.run(vec![x]).unwrap();
        let (a, b) = (a[0].as_f32().unwrap(), b[0].as_f32().unwrap());
        let db = sqnr_db(a, b);
        assert!(
            db >= min_db,
            "{name}: int8 logits SQNR {db:.1} dB < {min_db} dB ({} convs int8, {} nodes fp32)",
            report.int8.len(),
            report.fp32.len()
        );
    }
}

// MobileNetV2 is checked with its real ImageNet weights on real images
// (crates/qvision-cli/tests/real_assets.rs): random weights say little about depthwise layers.

#[test]
fn resnet18_ptq_runs_int8_convs() {
    check("resnet18", ObserverKind::MinMax, 20.0);
}

#[test]
fn arm_backend_quantizes_weights_per_tensor() {
    let model = build(
        "resnet18",
        &ModelOptions {
            weights: Weights::Formula,
            ..Default::default()
        },
    )
    .unwrap();
    let (q, _) = quantize_ptq(
        &model.graph,
        batches(2, 64, 1),
        ObserverKind::MinMax,
        QConfig::default_for(Backend::Arm),
        None,
    )
    .unwrap();
    let mut convs = 0;
    for n in q
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::QConv2d { .. }))
    {
        let s = q.tensor(n.inputs[3]).unwrap().as_f32().unwrap();
        assert!(
            s.iter().all(|&v| v == s[0]),
            "{}: per-tensor weights have one scale",
            n.name
        );
        convs += 1;
    }
    assert!(convs > 10);
    let x = batches(1, 64, 9).remove(0);
    let y = Session::new(&q, SessionOptions::default())
        .unwrap()
        .run(vec![x])
        .unwrap();
    assert_eq!(y[0].shape(), &[1, 1000]);
}
