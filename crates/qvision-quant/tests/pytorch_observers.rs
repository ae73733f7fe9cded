//! Observers against `torch.ao.quantization` on the same deterministic batches
//! (fixtures/quant/observers.json, made by `scripts/make_fixtures.py observers`).

use qvision_graph::weights::{fnv1a64, formula_uniform};
use qvision_quant::{
    HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver, Observer,
    PerChannelMinMaxObserver, QDType, QScheme,
};
use serde_json::Value;

fn batches() -> Vec<Vec<f32>> {
    [
        (2.0f32, 0.3f32),
        (1.5, -0.2),
        (3.0, 0.5),
        (1.0, 0.0),
        (2.5, 1.0),
    ]
    .iter()
    .enumerate()
    .map(|(b, &(scale, shift))| {
        let mut v: Vec<f32> = formula_uniform(fnv1a64(&format!("obs{b}")), 4096)
            .into_iter()
            .map(|u| {
                let v = u * scale + shift;
                v * v * v.signum()
            })
            .collect();
        for i in (0..v.len()).step_by(997) {
            v[i] *= 8.0;
        }
        v
    })
    .collect()
}

fn fixture() -> Value {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/quant/observers.json"
    );
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn run(mut o: impl Observer) -> (f32, i32) {
    for b in batches() {
        o.observe(&b);
    }
    let q = o.qparams();
    (q.scale, q.zero_point)
}

fn expect(fx: &Value, name: &str, got: (f32, i32)) {
    let want = (
        fx[name]["scale"].as_f64().unwrap() as f32,
        fx[name]["zero_point"].as_i64().unwrap() as i32,
    );
    assert_eq!(got, want, "{name}");
}

#[test]
fn min_max_observers_equal_pytorch() {
    let fx = fixture();
    let (u8a, s8s) = (
        (QDType::QUInt8, QScheme::PerTensorAffine),
        (QDType::QInt8, QScheme::PerTensorSymmetric),
    );
    expect(
        &fx,
        "minmax_u8_affine",
        run(MinMaxObserver::new(u8a.0, u8a.1, false)),
    );
    expect(
        &fx,
        "minmax_s8_symmetric",
        run(MinMaxObserver::new(s8s.0, s8s.1, false)),
    );
    expect(
        &fx,
        "minmax_u8_reduce",
        run(MinMaxObserver::new(u8a.0, u8a.1, true)),
    );
    expect(
        &fx,
        "moving_average_u8",
        run(MovingAverageMinMaxObserver::new(u8a.0, u8a.1, false)),
    );
}

#[test]
fn histogram_observer_equals_pytorch() {
    let fx = fixture();
    for (name, dtype, scheme) in [
        (
            "histogram_u8_affine",
            QDType::QUInt8,
            QScheme::PerTensorAffine,
        ),
        (
            "histogram_s8_symmetric",
            QDType::QInt8,
            QScheme::PerTensorSymmetric,
        ),
    ] {
        let mut o = HistogramObserver::new(dtype, scheme, false);
        for b in batches() {
            o.observe(&b);
        }
        let e = &fx[name];
        let (lo, hi) = o.observed_range().unwrap();
        assert_eq!(
            (lo, hi),
            (
                e["min"].as_f64().unwrap() as f32,
                e["max"].as_f64().unwrap() as f32
            ),
            "{name}"
        );
        assert_eq!(
            o.histogram().iter().sum::<f32>(),
            e["hist_sum"].as_f64().unwrap() as f32
        );
        let (slo, shi) = o.search_range().unwrap();
        assert_eq!(
            (slo, shi),
            (
                e["search_min"].as_f64().unwrap() as f32,
                e["search_max"].as_f64().unwrap() as f32
            ),
            "{name}"
        );
        let q = o.qparams();
        expect(&fx, name, (q.scale, q.zero_point));
    }
}

#[test]
fn per_channel_observer_equals_pytorch() {
    let fx = fixture();
    let all: Vec<f32> = batches().concat();
    let w = &all[..64 * 320];
    let mut o = PerChannelMinMaxObserver::new(QDType::QInt8, QScheme::PerChannelSymmetric, false);
    o.observe_channels(w, 64).unwrap();
    assert!(o.observe_channels(&w[..100], 64).is_err());
    let q = o.qparams_per_channel();
    let scales: Vec<f32> = fx["per_channel_s8_symmetric"]["scales"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(q.iter().map(|p| p.scale).collect::<Vec<_>>(), scales);
    assert!(q.iter().all(|p| p.zero_point == 0));
}

#[test]
fn histogram_search_with_a_far_outlier_equals_pytorch() {
    let fx = fixture();
    let e = &fx["histogram_outlier"];
    let mut o = HistogramObserver::new(QDType::QUInt8, QScheme::PerTensorAffine, false);
    for (i, mut b) in batches().into_iter().enumerate() {
        if i == 2 {
            b[5] = 1000.0;
        }
        o.observe(&b);
    }
    let (lo, hi) = o.search_range().unwrap();
    assert_eq!(
        (lo, hi),
        (
            e["search_min"].as_f64().unwrap() as f32,
            e["search_max"].as_f64().unwrap() as f32
        )
    );
    expect(&fx, "histogram_outlier", run_qparams(&o));
}

fn run_qparams(o: &HistogramObserver) -> (f32, i32) {
    let q = o.qparams();
    (q.scale, q.zero_point)
}
