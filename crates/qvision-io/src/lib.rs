//! File formats and data for qvision: PyTorch `.pth` state dicts (zip and legacy formats, read by
//! a restricted pickle reader that never runs code), safetensors, images, and torchvision-exact
//! eval transforms.

pub mod atomic;
mod error;
pub mod image_io;
mod pickle;
pub mod pth;
pub mod safetensors;
pub mod transforms;

pub use error::IoError;

use qvision_tensor::Tensor;
use std::path::Path;

/// A state dict: `(key, tensor)` in file order.
pub type StateDict = Vec<(String, Tensor)>;

/// Read a weights file, choosing the format from its content: zip `.pth`, legacy `.pth`, or
/// safetensors.
pub fn load_state_dict(path: &Path) -> Result<StateDict, IoError> {
    let bytes = std::fs::read(path).map_err(|e| IoError::io(path, e))?;
    let ctx = |e: IoError| e.in_file(path);
    if bytes.starts_with(b"PK\x03\x04") {
        pth::read_zip(&bytes).map_err(ctx)
    } else if bytes.first() == Some(&0x80) {
        pth::read_legacy(&bytes).map_err(ctx)
    } else if safetensors::looks_like(&bytes) {
        safetensors::read(&bytes).map_err(ctx)
    } else {
        Err(IoError::format(
            path,
            "not a weights file: expected a PyTorch .pth (zip or legacy) or a safetensors file",
        ))
    }
}
