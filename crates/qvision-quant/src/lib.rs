//! Quantization in PyTorch's vocabulary (`torch.ao.quantization`): quantized dtypes and qschemes
//! ([`qconfig`]), observers that watch calibration data and choose quantization parameters
//! ([`observer`]), and the parameter arithmetic itself ([`qparams`]).
//!
//! Status: this crate holds the observers and qparams of the PTQ work. Fusion, prepare/convert
//! passes and the int8 graph arrive with the rest of that work; the int8 GEMM they will run is
//! `qvision_kernels::qgemm`.

pub mod calibrate;
pub mod observer;
pub mod qconfig;
pub mod qparams;
pub mod quantize;

pub use observer::{
    EntropyObserver, HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver, Observer,
    PerChannelMinMaxObserver, PercentileObserver,
};
pub use qconfig::{Backend, QConfig, QDType, QScheme};
pub use qparams::{calculate_qparams, QuantParams};

/// Errors from quantization.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error("quantization: {0}")]
    Shape(String),
}
