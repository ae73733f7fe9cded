//! Quantization-aware training on one model of each classification family: a few QAT steps on
//! small inputs, then `convert` to int8, which must run and compute what the fake-quantized
//! training graph computed.

use qvision_graph::{Session, SessionOptions};
use qvision_quant::{sqnr_db, Backend, QConfig};
use qvision_tensor::Tensor;
use qvision_train::ops::Buf;
use qvision_train::rng::Rng;
use qvision_train::{fit, OptimizerKind, TrainGraph};
use qvision_zoo::{build, ModelOptions, Weights};

/// The weight gain the PTQ family tests use (He gain leaves several random nets chaotic).
const LECUN_GAIN: f64 = 12.0;

fn check(name: &str, size: usize) {
    let model = build(
        name,
        &ModelOptions {
            weights: Weights::Formula,
            quantize: true,
            is_qat: true,
            num_classes: 10,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!model.fused, "{name}: is_qat must give the unfused graph");
    let mut g = model.graph;
    qvision_graph::weights::init_formula_with_gain(&mut g, LECUN_GAIN);
    let mut tg = TrainGraph::new(g, false).unwrap();
    qvision_train::prepare_qat(&mut tg, QConfig::default_for(Backend::X86)).unwrap();
    let (acts, weights, _) = tg.qat.as_ref().unwrap().counts();
    assert!(acts > 0 && weights > 0, "{name}: nothing fake-quantized");
    let mut rng = Rng::new(9);
    let mut opt = qvision_train::Optimizer::new(OptimizerKind::sgd(0.9, false, 0.0));
    let batch = |rng: &mut Rng| {
        Buf::new(
            vec![2, 3, size, size],
            (0..2 * 3 * size * size)
                .map(|_| rng.range(-2.0, 2.0))
                .collect(),
        )
    };
    for step in 0..3 {
        let x = batch(&mut rng);
        let (loss, _) = fit::train_step(
            &mut tg,
            &mut opt,
            x,
            &[step % 10, 3],
            1e-3,
            step as u64,
            0.0,
        )
        .unwrap();
        assert!(loss.is_finite(), "{name}: loss {loss}");
    }
    qvision_train::qat::freeze_bn_stats(&mut tg);
    let (int8, report) = qvision_train::convert(&tg).unwrap();
    assert!(
        report.int8_count("Conv2d") > 0,
        "{name}: no int8 conv after QAT convert"
    );
    let session = Session::new(&int8, SessionOptions::default()).unwrap();
    let x = batch(&mut rng);
    let sim = tg.forward(vec![x.clone()], false, 0).unwrap();
    let sim = sim.outputs()[0].data.clone();
    let out = session
        .run(vec![
            Tensor::from_f32(x.shape.clone(), x.data.clone()).unwrap()
        ])
        .unwrap();
    let got = out[0].as_f32().unwrap();
    let db = sqnr_db(&sim, got);
    // The same network without fake quantization: how far int8 is from plain fp32.
    tg.qat.as_mut().unwrap().fake_quant_enabled = false;
    let plain = tg.forward(vec![x], false, 0).unwrap();
    let db_fp32 = sqnr_db(&plain.outputs()[0].data, got);
    eprintln!("SQNR {name}: vs simulation {db:.1} dB, vs fp32 {db_fp32:.1} dB");
    assert!(
        db >= 20.0,
        "{name}: int8 model vs QAT simulation {db:.1} dB"
    );
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
