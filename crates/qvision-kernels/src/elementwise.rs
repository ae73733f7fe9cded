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
    let (mid, inner) = one_run(out_shape, small_shape)??;
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

/// How `small` (left-padded with 1s) broadcasts to `full`: `Some(None)` where the shapes are
/// equal, `Some(Some((mid, inner)))` where it is 1 along one contiguous run of axes and equals
/// `full` elsewhere (`mid`: the run's size, `inner`: the size of the axes after it; `small`
/// then holds `outer x inner` values), `None` for any other pattern.
fn one_run(full: &[usize], small: &[usize]) -> Option<Option<(usize, usize)>> {
    let pad = full.len().checked_sub(small.len())?;
    let s: Vec<usize> = std::iter::repeat_n(1, pad)
        .chain(small.iter().copied())
        .collect();
    let differ: Vec<usize> = (0..full.len()).filter(|&d| s[d] != full[d]).collect();
    let (Some(&i), Some(&j)) = (differ.first(), differ.last()) else {
        return Some(None);
    };
    if differ.len() != j - i + 1 || differ.iter().any(|&d| s[d] != 1) {
        return None;
    }
    Some(Some((
        full[i..=j].iter().product(),
        full[j + 1..].iter().product(),
    )))
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

/// `a = op(a, b)` in place where `b` broadcasts to `a`'s shape along one contiguous run of
/// axes (a squeeze-excitation scale `[n, c, 1, 1]` or its blocked `[n, c/16, 1, 1, 16]`, a
/// per-channel constant). Returns `Ok(false)`, leaving `a` untouched, for any other pattern.
pub fn binary_broadcast_in_place(
    op: BinaryOp,
    a: &mut [f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
) -> Result<bool, KernelError> {
    if a.len() != a_shape.iter().product::<usize>() || b.len() != b_shape.iter().product::<usize>()
    {
        return Err(shape_err("binary", "data does not fill its shape"));
    }
    if broadcast_shape(a_shape, b_shape)? != a_shape {
        return Ok(false);
    }
    let (mid, inner) = match one_run(a_shape, b_shape) {
        None => return Ok(false),
        Some(None) => {
            binary_in_place(op, a, b)?;
            return Ok(true);
        }
        Some(Some(run)) => run,
    };
    if a.is_empty() || mid == 0 || inner == 0 {
        return Ok(true);
    }
    let isa = crate::isa::current();
    // `b` holds `outer x inner` values; each outer slab of `a` is `mid` rows of `inner`
    let slab = mid * inner;
    let outer = a.len() / slab;
    if outer >= 2 * rayon::current_num_threads() {
        a.par_chunks_mut(slab).enumerate().for_each(|(o, x)| {
            broadcast_rows(isa, op, x, &b[o * inner..(o + 1) * inner]);
        });
    } else {
        for (o, x) in a.chunks_mut(slab).enumerate() {
            let y = &b[o * inner..(o + 1) * inner];
            x.par_chunks_mut(inner * 1024usize.div_ceil(inner).max(1))
                .for_each(|x| broadcast_rows(isa, op, x, y));
        }
    }
    Ok(true)
}

/// `x[r][k] = op(x[r][k], y[k])` over rows of `y.len()` (one value: every element).
#[inline(always)]
fn broadcast_rows_body(op: BinaryOp, x: &mut [f32], y: &[f32]) {
    macro_rules! rows {
        ($f:expr) => {
            if let [v] = y {
                x.iter_mut().for_each(|a| *a = $f(*a, *v));
            } else {
                for row in x.chunks_exact_mut(y.len()) {
                    for (a, v) in row.iter_mut().zip(y) {
                        *a = $f(*a, *v);
                    }
                }
            }
        };
    }
    match op {
        BinaryOp::Add => rows!(|a: f32, b: f32| a + b),
        BinaryOp::Mul => rows!(|a: f32, b: f32| a * b),
        BinaryOp::Sub => rows!(|a: f32, b: f32| a - b),
        BinaryOp::Div => rows!(|a: f32, b: f32| a / b),
    }
}
crate::isa::multiversion!(fn broadcast_rows(op: BinaryOp, x: &mut [f32], y: &[f32]) => broadcast_rows_body);

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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        /// In place: equal to the naive broadcast wherever the pattern is taken, and
        /// `a` untouched where it is not.
        #[test]
        fn in_place_broadcast_matches_naive(dims in proptest::collection::vec(1usize..10, 1..6), mask_b in any::<u8>(), drop in 0usize..3, seed in any::<u64>()) {
            let sa = dims.clone();
            let sb: Vec<usize> = dims.iter().enumerate().map(|(i, &d)| if mask_b >> i & 1 == 1 { 1 } else { d }).skip(drop.min(dims.len() - 1)).collect();
            let a = pseudo_random(sa.iter().product(), seed);
            let b = pseudo_random(sb.iter().product(), seed ^ 3);
            for op in [BinaryOp::Add, BinaryOp::Mul, BinaryOp::Sub, BinaryOp::Div] {
                let want = naive(op, &a, &sa, &b, &sb);
                let mut got = a.clone();
                if binary_broadcast_in_place(op, &mut got, &sa, &b, &sb).unwrap() {
                    prop_assert_eq!(&got, &want);
                } else {
                    prop_assert_eq!(&got, &a);
                }
            }
        }
    }

    #[test]
    fn in_place_broadcast_takes_the_squeeze_excitation_shapes() {
        // blocked [n, c/16, h, w, 16] x [n, c/16, 1, 1, 16], NCHW x [n, c, 1, 1], x [c, 1, 1]
        for (sa, sb) in [
            (vec![2, 3, 5, 7, 16], vec![2, 3, 1, 1, 16]),
            (vec![2, 24, 5, 7], vec![2, 24, 1, 1]),
            (vec![1, 24, 5, 7], vec![24, 1, 1]),
            (vec![1, 8, 300, 300], vec![1]),
        ] {
            let a = pseudo_random(sa.iter().product(), 1);
            let b = pseudo_random(sb.iter().product(), 2);
            let mut got = a.clone();
            assert!(binary_broadcast_in_place(BinaryOp::Mul, &mut got, &sa, &b, &sb).unwrap());
            assert_eq!(
                got,
                naive(BinaryOp::Mul, &a, &sa, &b, &sb),
                "{sa:?} x {sb:?}"
            );
        }
        // the output would be larger than `a`: not in place
        let mut a = vec![1.0; 3];
        assert!(
            !binary_broadcast_in_place(BinaryOp::Add, &mut a, &[3, 1], &[0.0; 2], &[2]).unwrap()
        );
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
