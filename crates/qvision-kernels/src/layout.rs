//! Data movement: concat, split and permute, generic over the element type.

use crate::{shape_err, KernelError};

/// Concatenate along `axis`; all other dims must agree.
pub fn concat<T: Copy>(
    parts: &[(&[T], &[usize])],
    axis: usize,
) -> Result<(Vec<T>, Vec<usize>), KernelError> {
    let (_, first) = parts
        .first()
        .ok_or_else(|| shape_err("concat", "no inputs"))?;
    if axis >= first.len() {
        return Err(shape_err(
            "concat",
            format!("axis {axis} out of range for rank {}", first.len()),
        ));
    }
    let mut shape = first.to_vec();
    shape[axis] = 0;
    for (data, s) in parts {
        if s.len() != first.len()
            || s.iter()
                .zip(first.iter())
                .enumerate()
                .any(|(d, (a, b))| d != axis && a != b)
        {
            return Err(shape_err(
                "concat",
                format!("shape {s:?} does not match {first:?} off axis {axis}"),
            ));
        }
        if data.len() != s.iter().product::<usize>() {
            return Err(shape_err("concat", "data does not fill its shape"));
        }
        shape[axis] += s[axis];
    }
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let mut out = Vec::with_capacity(shape.iter().product());
    for o in 0..outer {
        for (data, s) in parts {
            let block = s[axis] * inner;
            out.extend_from_slice(&data[o * block..(o + 1) * block]);
        }
    }
    Ok((out, shape))
}

/// Data with its shape.
pub type Shaped<T> = (Vec<T>, Vec<usize>);

/// Split along `axis` into pieces of the given sizes.
pub fn split<T: Copy>(
    x: &[T],
    shape: &[usize],
    axis: usize,
    sizes: &[usize],
) -> Result<Vec<Shaped<T>>, KernelError> {
    if axis >= shape.len() || sizes.iter().sum::<usize>() != shape[axis] {
        return Err(shape_err(
            "split",
            format!("sizes {sizes:?} do not split axis {axis} of {shape:?}"),
        ));
    }
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let mut outs = Vec::with_capacity(sizes.len());
    let mut start = 0;
    for &sz in sizes {
        let mut s = shape.to_vec();
        s[axis] = sz;
        let mut data = Vec::with_capacity(outer * sz * inner);
        for o in 0..outer {
            let base = (o * shape[axis] + start) * inner;
            data.extend_from_slice(&x[base..base + sz * inner]);
        }
        outs.push((data, s));
        start += sz;
    }
    Ok(outs)
}

/// Reorder dims: output dim `i` is input dim `perm[i]`.
pub fn permute<T: Copy + Default>(
    x: &[T],
    shape: &[usize],
    perm: &[usize],
) -> Result<(Vec<T>, Vec<usize>), KernelError> {
    let n = shape.len();
    let mut seen = vec![false; n];
    if perm.len() != n
        || perm
            .iter()
            .any(|&p| p >= n || std::mem::replace(&mut seen[p], true))
    {
        return Err(shape_err(
            "permute",
            format!("{perm:?} is not a permutation of rank {n}"),
        ));
    }
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let mut in_strides = vec![1; n];
    for i in (0..n.saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * shape[i + 1];
    }
    let strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let total = x.len();
    let mut out = vec![T::default(); total];
    if total == 0 {
        return Ok((out, out_shape));
    }
    // Iterate output in order with an odometer over the output coordinates.
    let mut coord = vec![0usize; n];
    let mut src = 0usize;
    let last = n - 1;
    let inner = out_shape[last];
    let inner_stride = strides[last];
    let mut o = 0;
    while o < total {
        for i in 0..inner {
            out[o + i] = x[src + i * inner_stride];
        }
        o += inner;
        // advance the odometer on dims [0..last)
        let mut d = last;
        while d > 0 {
            d -= 1;
            coord[d] += 1;
            src += strides[d];
            if coord[d] < out_shape[d] {
                break;
            }
            src -= strides[d] * out_shape[d];
            coord[d] = 0;
        }
    }
    Ok((out, out_shape))
}

/// ShuffleNet's channel shuffle over NCHW: view as (n, groups, c/groups, hw), swap the two
/// channel dims. Output channel `j*groups + g` is input channel `g*(c/groups) + j`.
pub fn channel_shuffle<T: Copy>(
    x: &[T],
    n: usize,
    c: usize,
    hw: usize,
    groups: usize,
) -> Result<Vec<T>, KernelError> {
    if groups == 0 || !c.is_multiple_of(groups) || x.len() != n * c * hw {
        return Err(shape_err(
            "channel_shuffle",
            format!("{c} channels do not split into {groups} groups"),
        ));
    }
    let cpg = c / groups;
    let mut out = Vec::with_capacity(x.len());
    for b in 0..n {
        for j in 0..cpg {
            for g in 0..groups {
                let src = (b * c + g * cpg + j) * hw;
                out.extend_from_slice(&x[src..src + hw]);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_rejects_mismatched_dims() {
        let a: Vec<i64> = (0..12).collect();
        let b: Vec<i64> = (100..106).collect();
        assert!(concat(&[(&a, &[2, 3, 2]), (&b, &[2, 1, 3])], 1).is_err());
    }

    #[test]
    fn concat_split_inverse() {
        let a: Vec<i64> = (0..12).collect();
        let b: Vec<i64> = (100..104).collect();
        let (c, s) = concat(&[(&a, &[2, 3, 2]), (&b, &[2, 1, 2])], 1).unwrap();
        assert_eq!(s, vec![2, 4, 2]);
        assert_eq!(&c[..8], &[0, 1, 2, 3, 4, 5, 100, 101]);
        let parts = split(&c, &s, 1, &[3, 1]).unwrap();
        assert_eq!(parts[0].0, a);
        assert_eq!(parts[1].0, b);
    }

    #[test]
    fn channel_shuffle_is_reshape_transpose() {
        let x: Vec<i64> = (0..2 * 6 * 2).collect();
        let got = channel_shuffle(&x, 2, 6, 2, 2).unwrap();
        let (want, _) = permute(&x, &[2, 2, 3, 2], &[0, 2, 1, 3]).unwrap();
        assert_eq!(got, want);
        assert!(channel_shuffle(&x, 2, 6, 2, 4).is_err());
    }

    #[test]
    fn permute_matches_index_formula() {
        let shape = [2, 3, 4, 5];
        let x: Vec<i64> = (0..120).collect();
        let perm = [0, 2, 3, 1];
        let (y, ys) = permute(&x, &shape, &perm).unwrap();
        assert_eq!(ys, vec![2, 4, 5, 3]);
        for n in 0..2 {
            for h in 0..4 {
                for w in 0..5 {
                    for c in 0..3 {
                        assert_eq!(
                            y[((n * 4 + h) * 5 + w) * 3 + c],
                            x[((n * 3 + c) * 4 + h) * 5 + w]
                        );
                    }
                }
            }
        }
        assert!(permute(&x, &shape, &[0, 0, 1, 2]).is_err());
    }
}
