//! Per-layer SQNR of a zoo model's PTQ conversion (formula weights, random inputs):
//! `cargo run --release -p qvision-quant --example layer_report -- mobilenet_v2 64`.
use qvision_quant::calibrate::{calibrate, Calibrator, ObserverKind};
use qvision_quant::{convert, prepare, report, Backend, QConfig, QConfigMapping};
use qvision_tensor::Tensor;
use qvision_zoo::{build, ModelOptions, Weights};

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "mobilenet_v2".into());
    let size: usize = args.next().map_or(64, |s| s.parse().unwrap());
    let gain: f64 = args
        .next()
        .map_or(qvision_graph::weights::HE_GAIN, |s| s.parse().unwrap());
    let mut model = build(
        &name,
        &ModelOptions {
            weights: Weights::Formula,
            num_classes: 10,
            ..Default::default()
        },
    )
    .unwrap();
    qvision_graph::weights::init_formula_with_gain(&mut model.graph, gain);
    let x = |seed: u64| {
        let v = qvision_graph::weights::formula_uniform(seed, 3 * size * size);
        Tensor::from_f32(
            vec![1, 3, size, size],
            v.into_iter().map(|x| x * 2.0).collect(),
        )
        .unwrap()
    };
    let prepared = prepare(&model.graph).unwrap();
    let q = QConfig::default_for(Backend::X86);
    let mut cal = Calibrator::new(ObserverKind::MinMax, q);
    calibrate(&prepared, (100..104).map(x), None, &mut cal).unwrap();
    let (g, rep) = convert::convert(&prepared, &cal, &QConfigMapping::new(q)).unwrap();
    let seed: u64 = std::env::var("SEED").map_or(7, |s| s.parse().unwrap());
    for l in report::layer_sqnr(&prepared, &g, &rep, &[x(seed)], None).unwrap() {
        println!("{:<40} {:<12} {:6.1} dB", l.node, l.kind, l.sqnr_db);
    }
}
