//! The model zoo: one builder per torchvision model, each producing a [`Graph`] whose parameter
//! names are torchvision's state-dict keys, so torchvision weights load unchanged.
//!
//! Builders speak the seed report's vocabulary through [`ModelOptions`]: `weights`, `progress`,
//! `quantize`, `is_qat`, `skip_fuse`.

pub mod classification;
mod common;
mod registry;

pub use registry::{build, find, models, Interpolation, ModelInfo, Task, Transform};

use qvision_graph::Graph;
use qvision_tensor::Tensor;
use thiserror::Error;

/// Where a built model's weights come from.
#[derive(Clone, Debug, Default)]
pub enum Weights {
    /// Parameters left empty (load later, or only inspect the graph).
    #[default]
    None,
    /// Deterministic formula values (tests, benchmarks without a weights file).
    Formula,
    /// A torchvision state dict, as read by `qvision-io`.
    StateDict(Vec<(String, Tensor)>),
}

/// The seed's builder arguments, as a Rust options struct.
#[derive(Clone, Debug)]
pub struct ModelOptions {
    pub weights: Weights,
    /// torchvision's `progress` (a download bar). Accepted for the same call shape; qvision
    /// never downloads: weights come from local files.
    pub progress: bool,
    /// Build a quantizable model (PTQ): the graph comes back fused (conv+BN folded, ReLU and
    /// residual adds in the conv epilogue), ready for `qvision_quant::Prepared`, as the seed's
    /// `QuantizableX` builders call `fuse_model`.
    pub quantize: bool,
    /// Build for quantization-aware training (with `quantize`): the graph comes back unfused,
    /// for `qvision_train::prepare_qat` (which folds Conv+BN in the training forward pass).
    pub is_qat: bool,
    /// Do not fuse conv/bn/relu when quantizing (BN then runs as an int8 per-channel affine
    /// and activations as lookup tables).
    pub skip_fuse: bool,
    /// Strict state-dict loading: missing or unexpected keys are errors.
    pub strict: bool,
    pub num_classes: usize,
    /// GoogLeNet / Inception v3: apply torchvision's `transform_input`. Defaults, as in
    /// torchvision, to true when loading a state dict.
    pub transform_input: Option<bool>,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            weights: Weights::None,
            progress: false,
            quantize: false,
            is_qat: false,
            skip_fuse: false,
            strict: true,
            num_classes: 1000,
            transform_input: None,
        }
    }
}

/// Errors from building a model.
#[derive(Debug, Error)]
pub enum ZooError {
    #[error("unknown model '{0}' (run `qvision models` for the list)")]
    UnknownModel(String),
    #[error("{model}: {source}")]
    Graph {
        model: String,
        #[source]
        source: qvision_graph::GraphError,
    },
}

/// A built model: its graph, and what loading reported.
#[derive(Debug)]
pub struct Model {
    pub info: &'static ModelInfo,
    pub graph: Graph,
    pub load_report: Option<qvision_graph::weights::LoadReport>,
    /// Built with `quantize` (and fused unless `skip_fuse`).
    pub quantizable: bool,
    pub fused: bool,
}

/// The 1000 ImageNet class names, in torchvision's order.
pub fn imagenet_classes() -> Vec<&'static str> {
    include_str!("imagenet_classes.txt").lines().collect()
}
