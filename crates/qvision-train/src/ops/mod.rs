//! Forward and backward of each op, as plain functions over [`Buf`]s. The graph interpreter in
//! [`crate::autograd`] calls them; the finite-difference tests check each against its forward.

pub mod act;
pub mod binary;
pub mod conv;
pub mod linear;
pub mod norm;
pub mod pool;
pub mod shape;

/// A dense f32 tensor in row-major order: what flows through training.
#[derive(Clone, Debug, PartialEq)]
pub struct Buf {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Buf {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Buf { shape, data }
    }

    pub fn zeros(shape: &[usize]) -> Self {
        Buf {
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product()],
        }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// `(n, c, spatial)` of an `[N, C, ...]` tensor.
    pub fn ncs(&self) -> (usize, usize, usize) {
        let n = self.shape.first().copied().unwrap_or(1);
        let c = self.shape.get(1).copied().unwrap_or(1);
        (n, c, self.shape.iter().skip(2).product())
    }
}

/// Accumulate `src` into `dst` (`dst += src`).
pub fn accumulate(dst: &mut [f32], src: &[f32]) {
    dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
}

/// Split `n` items into at most `parts` contiguous ranges of near-equal size. The split depends
/// only on `n` and `parts`, so reductions over the ranges are deterministic.
pub(crate) fn ranges(n: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.clamp(1, n.max(1));
    (0..parts)
        .map(|i| (i * n / parts)..((i + 1) * n / parts))
        .filter(|r| !r.is_empty())
        .collect()
}

/// How many fixed partial sums a batch reduction uses.
pub(crate) const REDUCE_PARTS: usize = 8;
