//! Data-movement ops on [`Buf`]s: concat, split, permute, channel shuffle, through the
//! inference engine's `qvision_kernels::layout`. Each backward is the inverse movement of the
//! gradient (split for concat, the inverse permutation, the shuffle with `c / groups` groups).

use super::Buf;
use crate::TrainError;
use qvision_kernels::layout;

fn err(e: qvision_kernels::KernelError) -> TrainError {
    TrainError::Graph(e.to_string())
}

pub fn concat(xs: &[&Buf], axis: usize) -> Result<Buf, TrainError> {
    let parts: Vec<(&[f32], &[usize])> = xs.iter().map(|x| (&x.data[..], &x.shape[..])).collect();
    let (data, shape) = layout::concat(&parts, axis).map_err(err)?;
    Ok(Buf::new(shape, data))
}

/// Split `x` along `axis` into pieces of `sizes` (also the backward of concat).
pub fn split(x: &Buf, axis: usize, sizes: &[usize]) -> Result<Vec<Buf>, TrainError> {
    Ok(layout::split(&x.data, &x.shape, axis, sizes)
        .map_err(err)?
        .into_iter()
        .map(|(data, shape)| Buf::new(shape, data))
        .collect())
}

/// Output dim `i` is input dim `perm[i]`.
pub fn permute(x: &Buf, perm: &[usize]) -> Result<Buf, TrainError> {
    let (data, shape) = layout::permute(&x.data, &x.shape, perm).map_err(err)?;
    Ok(Buf::new(shape, data))
}

/// The permutation that undoes `perm`.
pub fn inverse_perm(perm: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    inv
}

/// ShuffleNet's channel shuffle; `inverse` undoes it (the backward): shuffling with
/// `c / groups` groups restores the order a shuffle with `groups` made.
pub fn channel_shuffle(x: &Buf, groups: usize, inverse: bool) -> Result<Buf, TrainError> {
    let (n, c, s) = x.ncs();
    let g = if inverse { c / groups.max(1) } else { groups };
    let data = layout::channel_shuffle(&x.data, n, c, s, g).map_err(err)?;
    Ok(Buf::new(x.shape.clone(), data))
}
