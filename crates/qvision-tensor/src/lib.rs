//! Dense, contiguous, row-major tensors of the element types qvision's graphs carry
//! (f32 activations and weights, i64/bool for detection outputs, u8/i8/i32 for int8 work),
//! and their quantization parameters.

mod dtype;
pub mod pool;
mod qparams;
mod tensor;

pub use dtype::DType;
pub use qparams::QParams;
pub use tensor::{numel, Data, Tensor, TensorError};
