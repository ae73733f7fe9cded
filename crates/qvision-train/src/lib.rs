//! Training in Rust for qvision graphs, in PyTorch's vocabulary.
//!
//! - [`autograd`]: reverse-mode differentiation over the graph IR ([`TrainGraph`]), with the
//!   per-op forwards and backwards in [`ops`] and the loss in [`loss`].
//! - [`optim`] (SGD with momentum/Nesterov/weight decay, AdamW) and [`schedule`] (step, cosine,
//!   warm-up).
//! - [`data`]: MNIST/Fashion-MNIST idx files and image folders, a shuffling, batching,
//!   parallel-decoding loader, random-resized-crop and flip augmentation.
//! - [`checkpoint`]: atomic checkpoints that resume exactly (weights, optimizer state, epoch,
//!   RNG, QAT observers).
//! - [`qat`] and [`fake_quant`]: quantization-aware training (`prepare_qat`, fake quant with
//!   straight-through gradients, Conv+BN folded in training, freezing, `convert` to the int8
//!   graph PTQ produces).
//! - [`fit`]: the training loop used by `qvision train` and `qvision qat`.
//! - [`models`]: small recipe models (the Fashion-MNIST ResNet).

pub mod autograd;
pub mod checkpoint;
pub mod data;
pub mod fake_quant;
pub mod fit;
pub mod loss;
pub mod models;
pub mod ops;
pub mod optim;
pub mod profile;
pub mod qat;
pub mod rng;
pub mod schedule;

pub use autograd::{Grads, Tape, TrainGraph};
pub use data::{DataLoader, Dataset, IdxDataset, ImageFolder};
pub use optim::{Optimizer, OptimizerKind};
pub use qat::{convert, prepare_qat};
pub use schedule::{Schedule, ScheduleKind};

/// Errors from training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("training: {0}")]
    Graph(String),
    #[error("training: op {0} has no backward")]
    Unsupported(String),
    #[error("data: {0}")]
    Data(String),
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: String, msg: String },
    #[error("node '{node}' ({op}): {source}")]
    At {
        node: String,
        op: String,
        #[source]
        source: Box<TrainError>,
    },
}

impl TrainError {
    /// Attach the node this error happened at.
    pub fn at(self, n: &qvision_graph::Node) -> Self {
        match self {
            e @ TrainError::At { .. } => e,
            e => TrainError::At {
                node: n.name.clone(),
                op: n.op.kind().to_string(),
                source: Box::new(e),
            },
        }
    }
}
