//! Broadcasting binary ops (NumPy rules) and softmax.

use crate::{shape_err, KernelError};
use qvision_tensor::pool;
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum BinaryOp {
    Add,
    Mul,
    Sub,
    Div,
}

impl BinaryOp {
    #[inline]
    fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Mul => a * b,
            BinaryOp::Sub => a - b,
            BinaryOp::Div => a / b,
        }
    }
}

/// NumPy broadcast of two shapes.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>, KernelError> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(shape_err(
                    "broadcast",
                    format!("shapes {a:?} and {b:?} do not broadcast"),
                ))
            }
        };
    }
    Ok(out)
}

/// `op(a, b)` with broadcasting; returns the output and its shape.
pub fn binary(
    op: BinaryOp,
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
) -> Result<(Vec<f32>, Vec<usize>), KernelError> {
    let shape = broadcast_shape(a_shape, b_shape)?;
    let total: usize = shape.iter().product();
    if a.len() != a_shape.iter().product::<usize>() || b.len() != b_shape.iter().product::<usize>()
    {
        return Err(shape_err("binary", "data does not fill its shape"));
    }
    if a_shape == b_shape {
        let mut out = pool::take(a.len());
        out.par_iter_mut()
            .with_min_len(4096)
            .zip(a.par_iter().zip(b))
            .for_each(|(o, (x, y))| *o = op.apply(*x, *y));
        return Ok((out, shape));
    }
    // Fast path: one side is a per-"row" scalar over trailing contiguous blocks
    // (e.g. N,C,H,W op N,C,1,1 for squeeze-excitation, or C,1,1 layer scales).
    if let Some(out) = row_broadcast(op, a, a_shape, b, b_shape, &shape, false)
        .or_else(|| row_broadcast(op, b, b_shape, a, a_shape, &shape, true))
        .or_else(|| middle_broadcast(op, a, a_shape, b, b_shape, &shape, false))
        .or_else(|| middle_broadcast(op, b, b_shape, a, a_shape, &shape, true))
    {
        return Ok((out, shape));
    }
    let sa = strides_for(a_shape, &shape);
    let sb = strides_for(b_shape, &shape);
    let out_strides = contiguous_strides(&shape);
    let mut out = pool::take(total);
    out.par_iter_mut()
        .with_min_len(4096)
        .enumerate()
        .for_each(|(i, o)| {
            let (mut ia, mut ib, mut rem) = (0, 0, i);
            for d in 0..shape.len() {
                let q = rem / out_strides[d];
                rem %= out_strides[d];
                ia += q * sa[d];
                ib += q * sb[d];
            }
            *o = op.apply(a[ia], b[ib]);
        });
    Ok((out, shape))
}

/// `full` has the output shape; `small` equals it on a leading prefix and is 1 afterwards.
fn row_broadcast(
    op: BinaryOp,
    full: &[f32],
    full_shape: &[usize],
    small: &[f32],
    small_shape: &[usize],
    out_shape: &[usize],
    swapped: bool,
) -> Option<Vec<f32>> {
    if full_shape != out_shape {
        return None;
    }
    let pad = out_shape.len() - small_shape.len();
    let s: Vec<usize> = std::iter::repeat_n(1, pad)
        .chain(small_shape.iter().copied())
        .collect();
    // `small` must equal the output on dims [first..k) and be 1 elsewhere.
    let k = s.iter().rposition(|&d| d != 1).map_or(0, |p| p + 1);
    let first = s[..k].iter().position(|&d| d != 1).unwrap_or(k);
    if !s[first..k]
        .iter()
        .zip(&out_shape[first..k])
        .all(|(a, b)| a == b)
    {
        return None;
    }
    let block: usize = out_shape[k..].iter().product();
    let mut out = pool::take(full.len());
    out.par_chunks_mut(block.max(1))
        .zip(full.par_chunks(block.max(1)))
        .enumerate()
        .for_each(|(r, (chunk, src))| {
            let v = small[r % small.len().max(1)];
            if swapped {
                chunk
                    .iter_mut()
                    .zip(src)
                    .for_each(|(o, x)| *o = op.apply(v, *x));
            } else {
                chunk
                    .iter_mut()
                    .zip(src)
                    .for_each(|(o, x)| *o = op.apply(*x, v));
            }
        });
    Some(out)
}

/// `full` has the output shape; `small` equals it except on one contiguous run of dims where it
/// is 1 (e.g. `[n, c/16, 1, 1, 16]` scales over `[n, c/16, h, w, 16]`).
fn middle_broadcast(
    op: BinaryOp,
    full: &[f32],
    full_shape: &[usize],
    small: &[f32],
    small_shape: &[usize],
    out_shape: &[usize],
    swapped: bool,
) -> Option<Vec<f32>> {
    if full_shape != out_shape || small_shape.len() != out_shape.len() {
        return None;
    }
    let differ: Vec<usize> = (0..out_shape.len())
        .filter(|&d| small_shape[d] != out_shape[d])
        .collect();
    let (&i, &j) = (differ.first()?, differ.last()?);
    if differ.len() != j - i + 1 || differ.iter().any(|&d| small_shape[d] != 1) {
        return None;
    }
    let mid: usize = out_shape[i..=j].iter().product();
    let inner: usize = out_shape[j + 1..].iter().product();
    if inner == 0 || mid == 0 {
        return None;
    }
    let mut out = pool::take(full.len());
    out.par_chunks_mut(mid * inner)
        .zip(full.par_chunks(mid * inner))
        .enumerate()
        .for_each(|(o, (dst, src))| {
            let sm = &small[o * inner..(o + 1) * inner];
            for (d, s) in dst.chunks_mut(inner).zip(src.chunks(inner)) {
                for ((dv, sv), v) in d.iter_mut().zip(s).zip(sm) {
                    *dv = if swapped {
                        op.apply(*v, *sv)
                    } else {
                        op.apply(*sv, *v)
                    };
                }
            }
        });
    Some(out)
}

fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

fn strides_for(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let pad = out.len() - shape.len();
    let own = contiguous_strides(shape);
    (0..out.len())
        .map(|d| {
            if d < pad || shape[d - pad] == 1 {
                0
            } else {
                own[d - pad]
            }
        })
        .collect()
}

/// `a = op(a, b)` in place for equal shapes.
pub fn binary_in_place(op: BinaryOp, a: &mut [f32], b: &[f32]) -> Result<(), KernelError> {
    if a.len() != b.len() {
        return Err(shape_err("binary", "in-place operands differ in size"));
    }
    a.par_iter_mut()
        .with_min_len(4096)
        .zip(b)
        .for_each(|(x, y)| *x = op.apply(*x, *y));
    Ok(())
}

/// Softmax over the last axis of rows of length `len`.
pub fn softmax_rows(x: &mut [f32], len: usize) {
    for row in x.chunks_mut(len.max(1)) {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        row.iter_mut().for_each(|v| {
            *v = (*v - m).exp();
            sum += *v;
        });
        row.iter_mut().for_each(|v| *v /= sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::pseudo_random;
    use proptest::prelude::*;

    fn naive(op: BinaryOp, a: &[f32], sa: &[usize], b: &[f32], sb: &[usize]) -> Vec<f32> {
        let shape = broadcast_shape(sa, sb).unwrap();
        let total: usize = shape.iter().product();
        let idx = |s: &[usize], coord: &[usize]| {
            let pad = coord.len() - s.len();
            let mut i = 0;
            for d in 0..s.len() {
                i = i * s[d] + if s[d] == 1 { 0 } else { coord[d + pad] };
            }
            i
        };
        (0..total)
            .map(|mut i| {
                let mut coord = vec![0; shape.len()];
                for d in (0..shape.len()).rev() {
                    coord[d] = i % shape[d];
                    i /= shape[d];
                }
                op.apply(a[idx(sa, &coord)], b[idx(sb, &coord)])
            })
            .collect()
    }

    proptest! {
        #[test]
        fn broadcasting_matches_naive(dims in proptest::collection::vec(1usize..4, 1..5), mask_a in any::<u8>(), mask_b in any::<u8>(), drop in 0usize..3, seed in any::<u64>()) {
            let sa: Vec<usize> = dims.iter().enumerate().map(|(i, &d)| if mask_a >> i & 1 == 1 { 1 } else { d }).collect();
            let sb: Vec<usize> = dims.iter().enumerate().map(|(i, &d)| if mask_b >> i & 1 == 1 { 1 } else { d }).skip(drop.min(dims.len() - 1)).collect();
            let a = pseudo_random(sa.iter().product(), seed);
            let b = pseudo_random(sb.iter().product(), seed ^ 3);
            for op in [BinaryOp::Add, BinaryOp::Mul, BinaryOp::Sub] {
                let (got, _) = binary(op, &a, &sa, &b, &sb).unwrap();
                prop_assert_eq!(got, naive(op, &a, &sa, &b, &sb));
                let (got, _) = binary(op, &b, &sb, &a, &sa).unwrap();
                prop_assert_eq!(got, naive(op, &b, &sb, &a, &sa));
            }
        }
    }

    #[test]
    fn incompatible_shapes_are_errors() {
        assert!(binary(BinaryOp::Add, &[0.0; 6], &[2, 3], &[0.0; 2], &[2]).is_err());
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x = vec![1.0, 2.0, 3.0, 1000.0, 1000.0, 1000.0];
        softmax_rows(&mut x, 3);
        assert!((x[..3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((x[3] - 1.0 / 3.0).abs() < 1e-6);
    }
}
