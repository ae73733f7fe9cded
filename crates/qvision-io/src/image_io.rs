//! Image decoding (JPEG, PNG) into 8-bit RGB.

use crate::IoError;
use std::path::Path;

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Clone, Debug, PartialEq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self, IoError> {
        if data.len() != width * height * 3 {
            return Err(IoError::bad(format!("{} bytes are not a {width}x{height} RGB image", data.len())));
        }
        Ok(RgbImage { width, height, data })
    }
}

/// Decode an image file (JPEG or PNG; any colour type is converted to RGB, as PIL's
/// `.convert("RGB")` does).
pub fn load_rgb(path: &Path) -> Result<RgbImage, IoError> {
    let bytes = std::fs::read(path).map_err(|e| IoError::io(path, e))?;
    decode_rgb(&bytes).map_err(|e| e.in_file(path))
}

/// Decode image bytes to RGB.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, IoError> {
    let img = image::load_from_memory(bytes).map_err(|e| IoError::bad(format!("cannot decode image: {e}")))?;
    let rgb = img.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    if w == 0 || h == 0 {
        return Err(IoError::bad("image is empty"));
    }
    RgbImage::new(w, h, rgb.into_raw())
}
