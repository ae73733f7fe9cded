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
            return Err(IoError::bad(format!(
                "{} bytes are not a {width}x{height} RGB image",
                data.len()
            )));
        }
        Ok(RgbImage {
            width,
            height,
            data,
        })
    }
}

/// Decode an image file (JPEG or PNG; any colour type is converted to RGB, as PIL's
/// `.convert("RGB")` does).
pub fn load_rgb(path: &Path) -> Result<RgbImage, IoError> {
    let bytes = std::fs::read(path).map_err(|e| IoError::io(path, e))?;
    decode_rgb(&bytes).map_err(|e| e.in_file(path))
}

/// Decode image bytes to RGB. JPEGs go through libjpeg-turbo's decoder (via mozjpeg, the same
/// IDCT and upsampling PIL uses), so pixels equal what torchvision sees.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, IoError> {
    if bytes.starts_with(&[0xFF, 0xD8]) {
        let end = bytes
            .iter()
            .rposition(|&b| b != 0 && b != b'\n' && b != b'\r')
            .unwrap_or(0);
        if end < 1 || bytes[end - 1..=end] != [0xFF, 0xD9] {
            return Err(IoError::bad("JPEG is truncated (no end-of-image marker)"));
        }
        if let Some(img) = decode_jpeg_libjpeg(bytes) {
            return img;
        }
    }
    decode_generic(bytes)
}

/// `None` when libjpeg cannot produce RGB (e.g. CMYK); then the generic decoder is used.
fn decode_jpeg_libjpeg(bytes: &[u8]) -> Option<Result<RgbImage, IoError>> {
    let result = std::panic::catch_unwind(|| -> std::io::Result<(usize, usize, Vec<u8>)> {
        let d = mozjpeg::Decompress::new_mem(bytes)?;
        let mut started = d.rgb()?;
        let (w, h) = (started.width(), started.height());
        let data = started.read_scanlines::<u8>()?;
        started.finish()?;
        Ok((w, h, data))
    });
    match result {
        Ok(Ok((w, h, data))) if w > 0 && h > 0 && data.len() == w * h * 3 => {
            Some(RgbImage::new(w, h, data))
        }
        Ok(Ok(_)) => Some(Err(IoError::bad("JPEG decoded to an unexpected size"))),
        Ok(Err(_)) | Err(_) => None,
    }
}

fn decode_generic(bytes: &[u8]) -> Result<RgbImage, IoError> {
    let img = image::load_from_memory(bytes)
        .map_err(|e| IoError::bad(format!("cannot decode image: {e}")))?;
    let rgb = img.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    if w == 0 || h == 0 {
        return Err(IoError::bad("image is empty"));
    }
    RgbImage::new(w, h, rgb.into_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_images_are_errors() {
        assert!(decode_rgb(b"\xff\xd8\xff\xe0garbage").is_err());
        assert!(decode_rgb(b"\xff\xd8\xff\xe0garbage\xff\xd9").is_err());
        assert!(decode_rgb(b"not an image").is_err());
        assert!(decode_rgb(b"").is_err());
    }
}
