//! Compute kernels for qvision, kept apart from the graph (as tract keeps `linalg`).
//!
//! Every kernel works on contiguous NCHW slices with explicit shapes. Each optimised path has a
//! plain scalar reference in [`reference`] that the tests compare against.

pub mod act;
pub mod blocked;
pub mod conv;
pub mod depthwise;
pub mod elementwise;
pub mod gemm;
pub mod isa;
pub mod layout;
pub mod norm;
pub mod pool;
pub mod qnhwc;
pub mod qops;
pub mod reference;
pub mod sgemm;

pub use act::Activation;
pub use conv::{Conv2dParams, PreparedConv};
pub use gemm::PackedMatrix;

use thiserror::Error;

/// Shape errors a kernel reports instead of panicking.
#[derive(Debug, Error, PartialEq)]
pub enum KernelError {
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },
}

pub(crate) fn shape_err(op: &'static str, msg: impl Into<String>) -> KernelError {
    KernelError::Shape {
        op,
        msg: msg.into(),
    }
}
