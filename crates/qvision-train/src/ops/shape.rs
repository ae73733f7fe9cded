//! Data-movement ops: concat, split, permute, channel shuffle. Each backward is the inverse
//! movement of the gradient.

use super::Buf;

fn outer_inner(shape: &[usize], axis: usize) -> (usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis + 1..].iter().product(),
    )
}

pub fn concat(xs: &[&Buf], axis: usize) -> Buf {
    let mut shape = xs[0].shape.clone();
    shape[axis] = xs.iter().map(|x| x.shape[axis]).sum();
    let (outer, inner) = outer_inner(&shape, axis);
    let mut y = Vec::with_capacity(shape.iter().product());
    for o in 0..outer {
        for x in xs {
            let len = x.shape[axis] * inner;
            y.extend_from_slice(&x.data[o * len..(o + 1) * len]);
        }
    }
    Buf::new(shape, y)
}

/// Split `x` along `axis` into pieces of `sizes` (also the backward of concat).
pub fn split(x: &Buf, axis: usize, sizes: &[usize]) -> Vec<Buf> {
    let (outer, inner) = outer_inner(&x.shape, axis);
    let total = x.shape[axis];
    let mut start = 0;
    sizes
        .iter()
        .map(|&s| {
            let mut data = Vec::with_capacity(outer * s * inner);
            for o in 0..outer {
                let base = (o * total + start) * inner;
                data.extend_from_slice(&x.data[base..base + s * inner]);
            }
            start += s;
            let mut shape = x.shape.clone();
            shape[axis] = s;
            Buf::new(shape, data)
        })
        .collect()
}

/// Output dim `i` is input dim `perm[i]`.
pub fn permute(x: &Buf, perm: &[usize]) -> Buf {
    let nd = x.shape.len();
    let out: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let mut in_strides = vec![1; nd];
    for i in (0..nd.saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * x.shape[i + 1];
    }
    let st: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let total = x.len();
    let mut y = Vec::with_capacity(total);
    let mut idx = vec![0usize; nd];
    let mut off = 0usize;
    for _ in 0..total {
        y.push(x.data[off]);
        for d in (0..nd).rev() {
            idx[d] += 1;
            off += st[d];
            if idx[d] < out[d] {
                break;
            }
            off -= st[d] * out[d];
            idx[d] = 0;
        }
    }
    Buf::new(out, y)
}

/// The permutation that undoes `perm`.
pub fn inverse_perm(perm: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    inv
}

/// ShuffleNet's channel shuffle; `inverse` undoes it (the backward).
pub fn channel_shuffle(x: &Buf, groups: usize, inverse: bool) -> Buf {
    let (n, c, s) = x.ncs();
    let per = c / groups;
    let mut y = vec![0.0; x.len()];
    for i in 0..n {
        for g in 0..groups {
            for k in 0..per {
                // Forward: output channel k*groups + g reads input channel g*per + k.
                let (dst, src) = if inverse {
                    (g * per + k, k * groups + g)
                } else {
                    (k * groups + g, g * per + k)
                };
                y[(i * c + dst) * s..][..s].copy_from_slice(&x.data[(i * c + src) * s..][..s]);
            }
        }
    }
    Buf::new(x.shape.clone(), y)
}
