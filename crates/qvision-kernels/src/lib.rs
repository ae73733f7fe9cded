//! Compute kernels for qvision, kept apart from the graph (as tract keeps `linalg`).
//!
//! Kernels work on contiguous slices with explicit shapes: fp32 in NCHW or the blocked NCHW16c
//! layout ([`blocked`]), int8 on NHWC u8 activations ([`qnhwc`], [`qops`]). Each optimised path
//! has a scalar reference (in [`reference`], or the portable body it is compiled from) that the
//! tests compare against.

pub mod act;
pub mod blocked;
pub mod conv;
pub mod depthwise;
pub mod elementwise;
pub mod gemm;
pub mod gemv;
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

/// `round_half_even(t) + zo` as a byte, for `t` already clamped to `[-zo, 255 - zo]`. Adding
/// 1.5 * 2^23 rounds in the FPU's default mode (half to even, as `vcvtps2dq`), and the integer
/// comes from the bits: no float-to-int cast, whose saturating Rust semantics LLVM does not
/// vectorise.
#[inline(always)]
pub(crate) fn round_u8(t: f32, zo: i32) -> u8 {
    const MAGIC: f32 = 12_582_912.0;
    ((t + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32 + zo) as u8
}

/// A raw output pointer shared by parallel tasks that each write a disjoint region of one
/// buffer (GEMM tiles, conv pixel runs); the buffer outlives the parallel loop.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr<T>(pub *mut T);
// SAFETY: every task writes a disjoint region of the output, which outlives the parallel loop.
unsafe impl<T> Send for OutPtr<T> {}
// SAFETY: as above; no task reads what another writes.
unsafe impl<T> Sync for OutPtr<T> {}

impl<T> OutPtr<T> {
    /// The pointer (a method, so closures capture the whole `Send + Sync` wrapper rather than
    /// the raw field).
    pub(crate) fn get(&self) -> *mut T {
        self.0
    }
}

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
