//! The graph IR every qvision stage shares.
//!
//! A [`Graph`] is a list of [`Node`]s in topological order over [`Value`]s. A value is a graph
//! input, a parameter (named by its torchvision state-dict key), a constant, or a node output.
//! Nodes may have several outputs and values carry any [`qvision_tensor::DType`], so detection and
//! segmentation graphs (boxes, scores, i64 labels, data-dependent sizes) fit the same IR.
//!
//! - [`builder`]: a small API the zoo uses to write graphs with torchvision's module names.
//! - [`op`]: the op set, with shape inference and MAC counts.
//! - [`passes`]: graph rewrites (BatchNorm folding, activation fusion).
//! - [`exec`]: the executor ([`Session`]), which prepares kernels once and frees values early.
//! - [`weights`]: state-dict loading by name, and the deterministic formula weights.

pub mod builder;
mod error;
pub mod exec;
mod exec_q;
mod ir;
pub mod op;
pub mod passes;
pub mod qop;
pub mod serialize;
#[cfg(test)]
mod testutil;
pub mod weights;

pub use builder::GraphBuilder;
pub use error::GraphError;
pub use exec::{Session, SessionOptions};
pub use ir::{Graph, Node, NodeId, Value, ValueId, ValueKind};
pub use op::Op;
pub use qop::{QOp, Qp};
pub use qvision_kernels::Activation;
