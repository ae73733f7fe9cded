//! Post-training quantization end to end, one model of every classification family (formula
//! weights, small inputs): the model converts, its convs and linear layers run on the int8
//! kernels, int8 top-1 equals fp32 top-1 on the test inputs and the logits' SQNR is at least
//! 20 dB. MobileNetV2 is also checked with its real ImageNet weights on real images
//! (crates/qvision-cli/tests/real_assets.rs).
//!
//! The formula weights use LeCun gain (variance `1 / fan_in`), not He gain: at He gain several
//! random zoo nets (MobileNetV2/V3, MNASNet, ShuffleNetV2, EfficientNetV2) are chaotic, every
//! perturbation grows layer by layer (EfficientNetV2-S ends at 4 dB), so they cannot measure
//! quantization error; at LeCun gain they end between 35 and 44 dB, like trained nets.

use qvision_graph::{Op, QOp, Session, SessionOptions};
use qvision_quant::calibrate::ObserverKind;
use qvision_quant::{quantize_ptq, sqnr_db, Backend, QConfig, QConfigMapping};
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

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// Variance `1 / fan_in` (the formula's gain is 12 x the variance x fan_in).
const LECUN_GAIN: f64 = 12.0;

fn check(name: &str, size: usize) {
    // ten classes, as a fine-tuned head would have: with 1000 random logits the top two are
    // often within 1 % of the logits' spread, a tie any perturbation flips
    let mut model = build(
        name,
        &ModelOptions {
            weights: Weights::Formula,
            num_classes: 10,
            ..Default::default()
        },
    )
    .unwrap();
    qvision_graph::weights::init_formula_with_gain(&mut model.graph, LECUN_GAIN);
    let (q, report) = quantize_ptq(
        &model.graph,
        batches(4, size, 100),
        ObserverKind::MinMax,
        QConfig::default_for(Backend::X86),
        None,
    )
    .unwrap();
    assert!(
        q.nodes
            .iter()
            .any(|n| matches!(n.op, Op::Q(QOp::Conv2d { .. }))),
        "{name}: no int8 conv"
    );
    // every conv runs in int8 but a shallow stem reading the image (a deep one converts too)
    let fp32_convs: Vec<&str> = report
        .fp32
        .iter()
        .filter(|(_, k)| k == "Conv2d")
        .map(|(n, _)| n.as_str())
        .collect();
    let stem_fp32 = model
        .graph
        .nodes
        .iter()
        .filter(|n| model.graph.inputs.contains(&n.inputs[0]))
        .any(qvision_quant::convert::stem_stays_fp32);
    assert!(
        fp32_convs.len() <= usize::from(stem_fp32),
        "{name}: fp32 convs {fp32_convs:?}"
    );
    let fp = Session::new(&model.graph, SessionOptions::default()).unwrap();
    let qs = Session::new(&q, SessionOptions::default()).unwrap();
    for x in batches(8, size, 7) {
        let a = fp.run(vec![x.clone()]).unwrap();
        let b = qs.run(vec![x]).unwrap();
        let (a, b) = (a[0].as_f32().unwrap(), b[0].as_f32().unwrap());
        let db = sqnr_db(a, b);
        assert!(
            db >= 20.0,
            "{name}: int8 logits SQNR {db:.1} dB < 20 dB (int8 nodes {}, fp32 islands {:?})",
            report.int8.len(),
            report.fp32
        );
        assert_eq!(
            argmax(a),
            argmax(b),
            "{name}: int8 top-1 differs (SQNR {db:.1} dB)"
        );
    }
}

macro_rules! families {
    ($($test:ident: $model:literal @ $size:literal,)*) => {
        $(#[test] fn $test() { check($model, $size) })*
    };
}

families! {
    resnet: "resnet18" @ 64,
    resnext: "resnext50_32x4d" @ 64,
    wide_resnet: "wide_resnet50_2" @ 64,
    vgg: "vgg11_bn" @ 64,
    squeezenet: "squeezenet1_1" @ 64,
    densenet: "densenet121" @ 64,
    inception_v3: "inception_v3" @ 96,
    googlenet: "googlenet" @ 64,
    shufflenet_v2: "shufflenet_v2_x1_0" @ 64,
    mobilenet_v2: "mobilenet_v2" @ 64,
    mobilenet_v3: "mobilenet_v3_large" @ 64,
    mnasnet: "mnasnet1_0" @ 64,
    efficientnet: "efficientnet_b0" @ 64,
    efficientnet_v2: "efficientnet_v2_s" @ 64,
    regnet_x: "regnet_x_400mf" @ 64,
    regnet_y: "regnet_y_400mf" @ 64,
    convnext: "convnext_tiny" @ 64,
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
        .filter(|n| matches!(n.op, Op::Q(QOp::Conv2d { .. })))
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

#[test]
fn overrides_keep_nodes_in_fp32_or_per_tensor() {
    let model = build(
        "resnet18",
        &ModelOptions {
            weights: Weights::Formula,
            ..Default::default()
        },
    )
    .unwrap();
    let x86 = QConfig::default_for(Backend::X86);
    let mapping = QConfigMapping::new(x86)
        .set_object_type("Linear", None)
        .set_module_name("layer4.*", Some(QConfig::default_for(Backend::Arm)))
        .set_module_name("layer1.0.conv1", None);
    let (q, report) = quantize_ptq(
        &model.graph,
        batches(2, 64, 1),
        ObserverKind::MinMax,
        mapping,
        None,
    )
    .unwrap();
    let fp32: Vec<&str> = report.fp32.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        fp32.contains(&"fc") && fp32.contains(&"layer1.0.conv1"),
        "{fp32:?}"
    );
    for n in &q.nodes {
        if let Op::Q(QOp::Conv2d { .. }) = n.op {
            let s = q.tensor(n.inputs[3]).unwrap().as_f32().unwrap();
            let one_scale = s.iter().all(|&v| v == s[0]);
            assert_eq!(one_scale, n.name.starts_with("layer4."), "{}", n.name);
        }
    }
}

/// The seed's section-7 sequence: build with `quantize=true` (fused), attach observers, run
/// calibration batches, convert; with `skip_fuse` the BatchNorms and ReLUs convert on their own.
#[test]
fn builder_quantize_prepare_calibrate_convert() {
    use qvision_quant::Prepared;
    for skip_fuse in [false, true] {
        let mut model = build(
            "resnet18",
            &ModelOptions {
                weights: Weights::Formula,
                quantize: true,
                skip_fuse,
                num_classes: 10,
                ..Default::default()
            },
        )
        .unwrap();
        qvision_graph::weights::init_formula_with_gain(&mut model.graph, LECUN_GAIN);
        // formula values replace the folded ones: rebuild the fused graph from them
        if model.fused {
            model.graph = qvision_quant::prepare(&model.graph).unwrap();
        }
        assert!(model.quantizable);
        assert_eq!(model.fused, !skip_fuse);
        let bn = |g: &qvision_graph::Graph| {
            g.nodes
                .iter()
                .filter(|n| matches!(n.op, Op::BatchNorm2d { .. }))
                .count()
        };
        assert_eq!(bn(&model.graph) == 0, !skip_fuse, "fused graphs have no BN");
        let mut p = Prepared::new(
            &model.graph,
            QConfig::default_for(Backend::X86),
            ObserverKind::MinMax,
            None,
        )
        .unwrap();
        assert!(p.convert().is_err(), "convert needs calibration first");
        for x in batches(3, 64, 100) {
            p.calibrate(x).unwrap();
        }
        let (q, report) = p.convert().unwrap();
        if skip_fuse {
            assert!(
                q.nodes
                    .iter()
                    .any(|n| matches!(n.op, Op::Q(QOp::ChannelAffine { .. }))),
                "unfused BN runs in int8"
            );
        }
        let fp = Session::new(&model.graph, SessionOptions::default()).unwrap();
        let qs = Session::new(&q, SessionOptions::default()).unwrap();
        let x = batches(1, 64, 7).remove(0);
        let (a, b) = (
            fp.run(vec![x.clone()]).unwrap().remove(0),
            qs.run(vec![x]).unwrap().remove(0),
        );
        let db = sqnr_db(a.as_f32().unwrap(), b.as_f32().unwrap());
        assert!(
            db >= 20.0,
            "skip_fuse={skip_fuse}: {db:.1} dB, fp32 {:?}",
            report.fp32
        );
    }
}
