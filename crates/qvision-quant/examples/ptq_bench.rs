//! Time fp32 against PTQ int8 for zoo models (formula weights): `cargo run --release -p
//! qvision-quant --example ptq_bench -- resnet50 mobilenet_v2`.
use qvision_graph::{Session, SessionOptions};
use qvision_quant::calibrate::ObserverKind;
use qvision_quant::{quantize_ptq, Backend, QConfig};
use qvision_tensor::Tensor;
use qvision_zoo::{build, ModelOptions, Weights};
use std::time::Instant;

fn main() {
    let threads = 2;
    for name in std::env::args().skip(1) {
        let model = build(
            &name,
            &ModelOptions {
                weights: Weights::Formula,
                ..Default::default()
            },
        )
        .unwrap();
        let x = Tensor::from_f32(
            vec![1, 3, 224, 224],
            qvision_graph::weights::formula_uniform(3, 3 * 224 * 224),
        )
        .unwrap();
        let (q, report) = quantize_ptq(
            &model.graph,
            vec![x.clone()],
            ObserverKind::MinMax,
            QConfig::default_for(Backend::X86),
            Some(threads),
        )
        .unwrap();
        let opts = SessionOptions {
            threads: Some(threads),
            ..Default::default()
        };
        let (fp, qs) = (
            Session::new(&model.graph, opts.clone()).unwrap(),
            Session::new(&q, opts).unwrap(),
        );
        let time = |s: &Session| {
            for _ in 0..3 {
                s.run(vec![x.clone()]).unwrap();
            }
            let mut t: Vec<f64> = (0..10)
                .map(|_| {
                    let t0 = Instant::now();
                    s.run(vec![x.clone()]).unwrap();
                    t0.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            t.sort_by(f64::total_cmp);
            t[5]
        };
        let (a, b) = (time(&fp), time(&qs));
        println!(
            "{name}: fp32 {a:.2} ms, int8 {b:.2} ms, ratio {:.2} ({} int8 convs, {} fp32 nodes)",
            b / a,
            report.int8.len(),
            report.fp32.len()
        );
    }
}
