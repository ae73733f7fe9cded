//! Quantization in PyTorch's vocabulary (`torch.ao.quantization`): quantized dtypes and qschemes
//! ([`qconfig`]), observers that watch calibration data and choose quantization parameters
//! ([`observer`]), and the parameter arithmetic itself ([`qparams`]).
//!
//! The PTQ sequence, as PyTorch's eager mode has it: [`prepare`] (fuse), [`Prepared`] (observe
//! and [`Prepared::calibrate`]), [`convert`](convert::convert) to an int8 graph that runs on
//! `qvision_kernels::qnhwc` and `qops`; [`QConfigMapping`] chooses per node; [`report`] measures
//! each layer's error. [`quantize_ptq`] does it in one call.

pub mod calibrate;
pub mod convert;
pub mod observer;
pub mod qconfig;
pub mod qparams;
pub mod quantize;
pub mod report;

pub use calibrate::Prepared;
pub use observer::{
    EntropyObserver, HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver, Observer,
    PerChannelMinMaxObserver, PercentileObserver,
};
pub use qconfig::{Backend, QConfig, QConfigMapping, QDType, QScheme};
pub use qparams::{calculate_qparams, QuantParams};

/// PyTorch's `fuse` + `prepare`: fold BatchNorm, fuse activations and residual adds, so that
/// calibration observes exactly the values the int8 graph will compute.
pub fn prepare(graph: &qvision_graph::Graph) -> Result<qvision_graph::Graph, QuantError> {
    qvision_graph::passes::optimize_for_inference(graph)
        .map_err(|e| QuantError::Shape(e.to_string()))
}

/// Post-training quantization in one call: prepare, calibrate on `batches` with `observer`,
/// convert. Returns the int8 graph and what stayed fp32.
pub fn quantize_ptq(
    graph: &qvision_graph::Graph,
    batches: impl IntoIterator<Item = qvision_tensor::Tensor>,
    observer: calibrate::ObserverKind,
    qconfig: impl Into<QConfigMapping>,
    threads: Option<usize>,
) -> Result<(qvision_graph::Graph, convert::ConvertReport), QuantError> {
    let mut p = calibrate::Prepared::new(&prepare(graph)?, qconfig, observer, threads)?;
    for b in batches {
        p.calibrate(b)?;
    }
    p.convert()
}

/// Signal-to-quantization-noise ratio in dB of `test` against `reference`.
pub fn sqnr_db(reference: &[f32], test: &[f32]) -> f64 {
    let signal: f64 = reference.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let noise: f64 = reference
        .iter()
        .zip(test)
        .map(|(&a, &b)| ((a - b) as f64).powi(2))
        .sum();
    if noise == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (signal / noise).log10()
}

/// Errors from quantization.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error("quantization: {0}")]
    Shape(String),
}
