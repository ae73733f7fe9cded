//! torchvision's eval transforms, bit-exact with the PIL path torchvision takes:
//! `Resize(short side)` with PIL's antialiased resampling (8-bit fixed point, horizontal pass
//! first), `CenterCrop` with Python's rounding, `ToTensor` and `Normalize`.

use crate::image_io::RgbImage;
use qvision_tensor::Tensor;

/// Resampling filter (PIL's `BILINEAR` and `BICUBIC`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    Bilinear,
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                let a = -0.5;
                if x < 1.0 {
                    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * a
                } else {
                    0.0
                }
            }
        }
    }
}

/// An `ImageClassification`-style eval transform.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalTransform {
    /// Short side after resize.
    pub resize: usize,
    /// Square center crop.
    pub crop: usize,
    pub filter: Filter,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl EvalTransform {
    /// Apply to one image; returns a `[3, crop, crop]` tensor.
    pub fn apply(&self, img: &RgbImage) -> Tensor {
        let (w, h) = resized_size(img.width, img.height, self.resize);
        let resized = resize(img, w, h, self.filter);
        let cropped = center_crop(&resized, self.crop, self.crop);
        to_tensor_normalized(&cropped, self.mean, self.std)
    }
}

/// torchvision's `_compute_resized_output_size` for a single int size: the short side becomes
/// `size`, the long side `int(size * long / short)`.
pub fn resized_size(w: usize, h: usize, size: usize) -> (usize, usize) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = (size as f64 * long as f64 / short as f64) as usize;
    if w <= h {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's `precompute_coeffs` + `normalize_coeffs_8bpc`: per output pixel, the first input index,
/// the tap count and fixed-point weights.
fn coeffs(
    in_size: usize,
    out_size: usize,
    filter: Filter,
) -> (Vec<(usize, usize)>, Vec<i32>, usize) {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut kk = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        let xmin = ((center - support + 0.5) as isize).max(0) as usize;
        let xmax = ((center + support + 0.5) as isize).min(in_size as isize) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = filter.eval((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for x in 0..n {
            let v = if ww != 0.0 { k[x] / ww } else { k[x] };
            let f = v * (1u32 << PRECISION_BITS) as f64;
            kk[xx * ksize + x] = if v < 0.0 {
                (f - 0.5) as i32
            } else {
                (f + 0.5) as i32
            };
        }
        bounds.push((xmin, n));
    }
    (bounds, kk, ksize)
}

#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// PIL's `Image.resize((w, h), filter)` for an RGB image: horizontal pass over the needed rows,
/// then vertical pass, 8-bit intermediate.
pub fn resize(img: &RgbImage, out_w: usize, out_h: usize, filter: Filter) -> RgbImage {
    let (in_w, in_h) = (img.width, img.height);
    let need_h = out_w != in_w;
    let need_v = out_h != in_h;
    let (hb, hk, hks) = coeffs(in_w, out_w, filter);
    let (vb, vk, vks) = coeffs(in_h, out_h, filter);
    let mut cur = img.clone();
    let mut vbounds = vb.clone();
    if need_h {
        let first = if need_v { vb[0].0 } else { 0 };
        let last = if need_v {
            vb[out_h - 1].0 + vb[out_h - 1].1
        } else {
            in_h
        };
        for b in vbounds.iter_mut() {
            b.0 -= first;
        }
        let rows = last - first;
        let mut out = vec![0u8; out_w * rows * 3];
        for y in 0..rows {
            let src = &img.data[(y + first) * in_w * 3..(y + first + 1) * in_w * 3];
            for (xx, &(xmin, n)) in hb.iter().enumerate() {
                let k = &hk[xx * hks..xx * hks + n];
                let mut ss = [1i32 << (PRECISION_BITS - 1); 3];
                for (x, &kv) in k.iter().enumerate() {
                    let p = &src[(xmin + x) * 3..(xmin + x) * 3 + 3];
                    for c in 0..3 {
                        ss[c] = ss[c].wrapping_add(p[c] as i32 * kv);
                    }
                }
                for c in 0..3 {
                    out[(y * out_w + xx) * 3 + c] = clip8(ss[c]);
                }
            }
        }
        cur = RgbImage {
            width: out_w,
            height: rows,
            data: out,
        };
    }
    if need_v {
        let w = cur.width;
        let mut out = vec![0u8; w * out_h * 3];
        for (yy, &(ymin, n)) in vbounds.iter().enumerate() {
            let k = &vk[yy * vks..yy * vks + n];
            for x in 0..w {
                let mut ss = [1i32 << (PRECISION_BITS - 1); 3];
                for (y, &kv) in k.iter().enumerate() {
                    let p = &cur.data[((ymin + y) * w + x) * 3..((ymin + y) * w + x) * 3 + 3];
                    for c in 0..3 {
                        ss[c] = ss[c].wrapping_add(p[c] as i32 * kv);
                    }
                }
                for c in 0..3 {
                    out[(yy * w + x) * 3 + c] = clip8(ss[c]);
                }
            }
        }
        cur = RgbImage {
            width: w,
            height: out_h,
            data: out,
        };
    }
    cur
}

/// torchvision's `center_crop`: pads with zeros when the crop is larger, then crops at
/// `int(round((size - crop) / 2))` (Python rounds half to even).
pub fn center_crop(img: &RgbImage, crop_w: usize, crop_h: usize) -> RgbImage {
    let img = if crop_w > img.width || crop_h > img.height {
        let pl = crop_w.saturating_sub(img.width) / 2;
        let pt = crop_h.saturating_sub(img.height) / 2;
        let pr = crop_w.saturating_sub(img.width).div_ceil(2);
        let pb = crop_h.saturating_sub(img.height).div_ceil(2);
        let (w, h) = (img.width + pl + pr, img.height + pt + pb);
        let mut data = vec![0u8; w * h * 3];
        for y in 0..img.height {
            let dst = ((y + pt) * w + pl) * 3;
            data[dst..dst + img.width * 3]
                .copy_from_slice(&img.data[y * img.width * 3..(y + 1) * img.width * 3]);
        }
        RgbImage {
            width: w,
            height: h,
            data,
        }
    } else {
        img.clone()
    };
    let top = ((img.height - crop_h) as f64 / 2.0).round_ties_even() as usize;
    let left = ((img.width - crop_w) as f64 / 2.0).round_ties_even() as usize;
    let mut data = Vec::with_capacity(crop_w * crop_h * 3);
    for y in top..top + crop_h {
        data.extend_from_slice(
            &img.data[(y * img.width + left) * 3..(y * img.width + left + crop_w) * 3],
        );
    }
    RgbImage {
        width: crop_w,
        height: crop_h,
        data,
    }
}

/// HWC u8 to CHW f32: `(v / 255 - mean) / std`, in f32 as torchvision computes it.
pub fn to_tensor_normalized(img: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> Tensor {
    let hw = img.width * img.height;
    let mut out = vec![0f32; 3 * hw];
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * hw + i] = (px[c] as f32 / 255.0 - mean[c]) / std[c];
        }
    }
    Tensor::from_f32(vec![3, img.height, img.width], out).expect("3 x h x w values")
}

/// Stack `[3, h, w]` tensors into `[n, 3, h, w]`.
pub fn stack(images: &[Tensor]) -> Option<Tensor> {
    let first = images.first()?.shape().to_vec();
    let mut data = Vec::with_capacity(images.len() * first.iter().product::<usize>());
    for t in images {
        if t.shape() != first.as_slice() {
            return None;
        }
        data.extend_from_slice(t.as_f32().ok()?);
    }
    let mut shape = vec![images.len()];
    shape.extend(first);
    Tensor::from_f32(shape, data).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_size_truncates_long_side() {
        assert_eq!(resized_size(500, 375, 256), (341, 256));
        assert_eq!(resized_size(375, 500, 256), (256, 341));
        assert_eq!(resized_size(300, 300, 232), (232, 232));
    }

    #[test]
    fn crop_uses_half_even_rounding() {
        // (5 - 2) / 2 = 1.5 -> 2; (7 - 2) / 2 = 2.5 -> 2
        let img = RgbImage::new(7, 5, (0..105).map(|v| v as u8).collect()).unwrap();
        let c = center_crop(&img, 2, 2);
        assert_eq!(
            &c.data[..3],
            &img.data[(2 * 7 + 2) * 3..(2 * 7 + 2) * 3 + 3]
        );
    }

    #[test]
    fn identity_resize_keeps_pixels() {
        let img = RgbImage::new(4, 3, (0..36).map(|v| v as u8 * 7).collect()).unwrap();
        assert_eq!(resize(&img, 4, 3, Filter::Bilinear), img);
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::new(9, 7, vec![200; 9 * 7 * 3]).unwrap();
        for f in [Filter::Bilinear, Filter::Bicubic] {
            let r = resize(&img, 4, 5, f);
            assert!(r.data.iter().all(|&v| v == 200), "{f:?}");
        }
    }
}
