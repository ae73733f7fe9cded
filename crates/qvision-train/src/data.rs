//! Data for training: MNIST/Fashion-MNIST idx files, image folders (`root/<class>/<image>`), a
//! loader that shuffles per epoch, batches and decodes/augments each batch in parallel, and the
//! augmentations (random-resized-crop, horizontal flip, padded random crop).
//!
//! Every random choice comes from a generator derived from `(seed, epoch, index)`, so a batch
//! is the same whatever the thread count, and a run resumed from a checkpoint sees the same data.

use crate::ops::Buf;
use crate::rng::Rng;
use crate::TrainError;
use qvision_io::image_io::{load_rgb, RgbImage};
use qvision_io::transforms::{resize, to_tensor_normalized, EvalTransform, Filter};
use rayon::prelude::*;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A labelled dataset of `[C, H, W]` samples.
pub trait Dataset: Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `[C, H, W]` of one sample.
    fn sample_shape(&self) -> [usize; 3];
    fn num_classes(&self) -> usize;
    /// Sample `i`, augmented when `rng` is given (training), plain otherwise.
    fn get(&self, i: usize, rng: Option<&mut Rng>) -> Result<(Vec<f32>, usize), TrainError>;
}

/// Augmentations of a small grayscale dataset.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct IdxAugment {
    pub flip: bool,
    /// Zero-pad by this many pixels and crop back at a random offset.
    pub pad_crop: usize,
}

/// An MNIST-format dataset (idx3 images, idx1 labels; raw or gzip).
pub struct IdxDataset {
    images: Vec<u8>,
    labels: Vec<u8>,
    rows: usize,
    cols: usize,
    mean: f32,
    std: f32,
    pub augment: IdxAugment,
}

/// Read an idx file (optionally gzip-compressed): its dims and bytes.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>), TrainError> {
    let raw =
        std::fs::read(path).map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| TrainError::Data(format!("{}: bad gzip data: {e}", path.display())))?;
        out
    } else {
        raw
    };
    let bad = |m: &str| TrainError::Data(format!("{}: not an idx file: {m}", path.display()));
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        return Err(bad("expected magic 0x0000_08xx (unsigned bytes)"));
    }
    let nd = bytes[3] as usize;
    if bytes.len() < 4 + 4 * nd {
        return Err(bad("truncated header"));
    }
    let dims: Vec<usize> = (0..nd)
        .map(|i| {
            u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap_or([0; 4])) as usize
        })
        .collect();
    let n: usize = dims.iter().product();
    let data = &bytes[4 + 4 * nd..];
    if data.len() < n {
        return Err(bad(&format!("{} data bytes, header says {n}", data.len())));
    }
    Ok((dims, data[..n].to_vec()))
}

/// Normalisation of Fashion-MNIST (mean, std of the training pixels).
pub const FASHION_MNIST_NORM: (f32, f32) = (0.2860, 0.3530);
/// Normalisation of MNIST.
pub const MNIST_NORM: (f32, f32) = (0.1307, 0.3081);

impl IdxDataset {
    pub fn load(images: &Path, labels: &Path, norm: (f32, f32)) -> Result<Self, TrainError> {
        let (d, img) = read_idx(images)?;
        let (dl, lab) = read_idx(labels)?;
        if d.len() != 3 || dl.len() != 1 || d[0] != dl[0] {
            return Err(TrainError::Data(format!(
                "{} ({d:?}) and {} ({dl:?}) do not form an image/label pair",
                images.display(),
                labels.display()
            )));
        }
        Ok(IdxDataset {
            images: img,
            labels: lab,
            rows: d[1],
            cols: d[2],
            mean: norm.0,
            std: norm.1,
            augment: IdxAugment::default(),
        })
    }

    /// The `train` or `t10k` split of an MNIST-layout directory
    /// (`{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`).
    pub fn from_dir(dir: &Path, train: bool, norm: (f32, f32)) -> Result<Self, TrainError> {
        let split = if train { "train" } else { "t10k" };
        let find = |kind: &str| -> Result<PathBuf, TrainError> {
            for ext in ["", ".gz"] {
                let p = dir.join(format!("{split}-{kind}-ubyte{ext}"));
                if p.exists() {
                    return Ok(p);
                }
            }
            Err(TrainError::Data(format!(
                "{}: no {split}-{kind}-ubyte[.gz] (MNIST layout expected)",
                dir.display()
            )))
        };
        Self::load(&find("images-idx3")?, &find("labels-idx1")?, norm)
    }

    /// Keep only the first `n` samples (quick runs, tests).
    pub fn truncate(&mut self, n: usize) {
        let n = n.min(self.labels.len());
        self.labels.truncate(n);
        self.images.truncate(n * self.rows * self.cols);
    }

    pub fn label(&self, i: usize) -> usize {
        self.labels[i] as usize
    }
}

impl Dataset for IdxDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn sample_shape(&self) -> [usize; 3] {
        [1, self.rows, self.cols]
    }
    fn num_classes(&self) -> usize {
        self.labels
            .iter()
            .copied()
            .max()
            .map_or(0, |m| m as usize + 1)
            .max(10)
    }
    fn get(&self, i: usize, rng: Option<&mut Rng>) -> Result<(Vec<f32>, usize), TrainError> {
        let (h, w) = (self.rows, self.cols);
        let img = &self.images[i * h * w..(i + 1) * h * w];
        let norm = |v: u8| (v as f32 / 255.0 - self.mean) / self.std;
        let mut out: Vec<f32> = img.iter().map(|&v| norm(v)).collect();
        if let Some(rng) = rng {
            let a = self.augment;
            let flip = a.flip && rng.uniform() < 0.5;
            let (dy, dx) = if a.pad_crop > 0 {
                let r = 2 * a.pad_crop + 1;
                (
                    rng.below(r) as isize - a.pad_crop as isize,
                    rng.below(r) as isize - a.pad_crop as isize,
                )
            } else {
                (0, 0)
            };
            if flip || dy != 0 || dx != 0 {
                let zero = norm(0);
                for y in 0..h {
                    for x in 0..w {
                        let sy = y as isize + dy;
                        let mut sx = x as isize + dx;
                        if flip {
                            sx = w as isize - 1 - sx;
                        }
                        out[y * w + x] = if sy < 0 || sy >= h as isize || sx < 0 || sx >= w as isize
                        {
                            zero
                        } else {
                            norm(img[sy as usize * w + sx as usize])
                        };
                    }
                }
            }
        }
        Ok((out, self.labels[i] as usize))
    }
}

/// How image-folder samples are made.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FolderTransform {
    /// Output side.
    pub size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Training: `RandomResizedCrop(size, scale=(min_scale, 1))`; evaluation: resize to
    /// `size * 256 / 224` and center-crop.
    pub min_scale: f32,
    pub flip: bool,
}

impl FolderTransform {
    /// torchvision's ImageNet recipe at `size`.
    pub fn imagenet(size: usize) -> Self {
        FolderTransform {
            size,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            min_scale: 0.08,
            flip: true,
        }
    }
}

/// `root/<class>/<image>` (classes sorted by name, as torchvision's `ImageFolder`).
pub struct ImageFolder {
    pub files: Vec<(PathBuf, usize)>,
    pub classes: Vec<String>,
    pub transform: FolderTransform,
}

impl ImageFolder {
    pub fn open(root: &Path, transform: FolderTransform) -> Result<Self, TrainError> {
        let err = |e: std::io::Error| TrainError::Data(format!("{}: {e}", root.display()));
        let mut classes: Vec<String> = std::fs::read_dir(root)
            .map_err(err)?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        classes.sort();
        let mut files = vec![];
        for (ci, c) in classes.iter().enumerate() {
            let mut f: Vec<PathBuf> = std::fs::read_dir(root.join(c))
                .map_err(err)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                        matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png")
                    })
                })
                .collect();
            f.sort();
            files.extend(f.into_iter().map(|p| (p, ci)));
        }
        if files.is_empty() {
            return Err(TrainError::Data(format!(
                "{}: no images found in class folders (expected root/<class>/<image>.jpg|png)",
                root.display()
            )));
        }
        Ok(ImageFolder {
            files,
            classes,
            transform,
        })
    }
}

/// Copy the `w x h` window at `(x, y)`.
fn crop(img: &RgbImage, x: usize, y: usize, w: usize, h: usize) -> RgbImage {
    let mut data = Vec::with_capacity(w * h * 3);
    for r in y..y + h {
        data.extend_from_slice(&img.data[(r * img.width + x) * 3..(r * img.width + x + w) * 3]);
    }
    RgbImage {
        width: w,
        height: h,
        data,
    }
}

/// torchvision's `RandomResizedCrop.get_params`: a window of random area and aspect ratio
/// (10 tries, then the central crop at the clamped ratio).
pub fn random_resized_crop_window(
    width: usize,
    height: usize,
    min_scale: f32,
    rng: &mut Rng,
) -> (usize, usize, usize, usize) {
    let area = (width * height) as f32;
    let (lr0, lr1) = ((3.0f32 / 4.0).ln(), (4.0f32 / 3.0).ln());
    for _ in 0..10 {
        let target = area * rng.range(min_scale, 1.0);
        let ratio = rng.range(lr0, lr1).exp();
        let w = (target * ratio).sqrt().round() as usize;
        let h = (target / ratio).sqrt().round() as usize;
        if w > 0 && h > 0 && w <= width && h <= height {
            let y = rng.below(height - h + 1);
            let x = rng.below(width - w + 1);
            return (x, y, w, h);
        }
    }
    let in_ratio = width as f32 / height as f32;
    let (w, h) = if in_ratio < 3.0 / 4.0 {
        (width, ((width as f32) / (3.0 / 4.0)).round() as usize)
    } else if in_ratio > 4.0 / 3.0 {
        (((height as f32) * (4.0 / 3.0)).round() as usize, height)
    } else {
        (width, height)
    };
    let (w, h) = (w.min(width), h.min(height));
    ((width - w) / 2, (height - h) / 2, w, h)
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }
    fn sample_shape(&self) -> [usize; 3] {
        [3, self.transform.size, self.transform.size]
    }
    fn num_classes(&self) -> usize {
        self.classes.len()
    }
    fn get(&self, i: usize, rng: Option<&mut Rng>) -> Result<(Vec<f32>, usize), TrainError> {
        let (path, label) = &self.files[i];
        let img = load_rgb(path).map_err(|e| TrainError::Data(e.to_string()))?;
        let t = self.transform;
        let tensor = match rng {
            Some(rng) => {
                let (x, y, w, h) =
                    random_resized_crop_window(img.width, img.height, t.min_scale, rng);
                let mut out = resize(&crop(&img, x, y, w, h), t.size, t.size, Filter::Bilinear);
                if t.flip && rng.uniform() < 0.5 {
                    for row in out.data.chunks_mut(t.size * 3) {
                        for c in 0..t.size / 2 {
                            for k in 0..3 {
                                row.swap(c * 3 + k, (t.size - 1 - c) * 3 + k);
                            }
                        }
                    }
                }
                to_tensor_normalized(&out, t.mean, t.std)
            }
            None => EvalTransform {
                resize: t.size * 256 / 224,
                crop: t.size,
                filter: Filter::Bilinear,
                mean: t.mean,
                std: t.std,
            }
            .apply(&img),
        };
        let data = tensor
            .into_f32()
            .map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?;
        Ok((data, *label))
    }
}

/// A batch: `[N, C, H, W]` inputs and their labels.
#[derive(Clone, Debug)]
pub struct Batch {
    pub x: Buf,
    pub labels: Vec<usize>,
}

/// Shuffled (or ordered), batched, parallel-decoded passes over a dataset.
pub struct DataLoader<'a> {
    pub dataset: &'a dyn Dataset,
    pub batch_size: usize,
    pub shuffle: bool,
    pub augment: bool,
    pub drop_last: bool,
    pub seed: u64,
}

impl<'a> DataLoader<'a> {
    pub fn new(dataset: &'a dyn Dataset, batch_size: usize) -> Self {
        DataLoader {
            dataset,
            batch_size: batch_size.max(1),
            shuffle: false,
            augment: false,
            drop_last: false,
            seed: 0,
        }
    }

    /// Sample order of `epoch`.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.dataset.len()).collect();
        if self.shuffle {
            Rng::derive(self.seed, 0x5u64, epoch as u64).shuffle(&mut idx);
        }
        idx
    }

    /// Number of batches per epoch.
    pub fn num_batches(&self) -> usize {
        let n = self.dataset.len();
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    /// Decode batch `b` of `epoch` (samples in parallel).
    pub fn batch(&self, order: &[usize], epoch: usize, b: usize) -> Result<Batch, TrainError> {
        let ids = &order[b * self.batch_size..((b + 1) * self.batch_size).min(order.len())];
        let samples: Vec<(Vec<f32>, usize)> = ids
            .par_iter()
            .map(|&i| {
                let mut rng = Rng::derive(self.seed, 1 + epoch as u64, i as u64);
                self.dataset.get(i, self.augment.then_some(&mut rng))
            })
            .collect::<Result<_, _>>()?;
        let [c, h, w] = self.dataset.sample_shape();
        let mut data = Vec::with_capacity(samples.len() * c * h * w);
        let mut labels = Vec::with_capacity(samples.len());
        for (d, l) in samples {
            data.extend_from_slice(&d);
            labels.push(l);
        }
        Ok(Batch {
            x: Buf::new(vec![labels.len(), c, h, w], data),
            labels,
        })
    }
}
