//! `y = x·Wᵀ + b` over the last axis, and its gradients.

use super::Buf;
use qvision_kernels::gemm::{gemm_strided, MatRef};

pub fn forward(x: &Buf, w: &[f32], b: Option<&[f32]>, out_f: usize) -> Buf {
    let in_f = *x.shape.last().unwrap_or(&1);
    let m = x.len() / in_f.max(1);
    let mut y = vec![0.0; m * out_f];
    gemm_strided(
        &mut y,
        MatRef::new(&x.data, m, in_f),
        MatRef::new(w, out_f, in_f).t(),
        0.0,
    )
    .expect("linear shapes agree");
    if let Some(b) = b {
        for row in y.chunks_mut(out_f) {
            row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
        }
    }
    let mut shape = x.shape.clone();
    if let Some(l) = shape.last_mut() {
        *l = out_f;
    }
    Buf::new(shape, y)
}

/// `(dx, dw, db)`.
pub fn backward(x: &Buf, w: &[f32], dy: &[f32], out_f: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let in_f = *x.shape.last().unwrap_or(&1);
    let m = x.len() / in_f.max(1);
    let mut dx = vec![0.0; x.len()];
    gemm_strided(
        &mut dx,
        MatRef::new(dy, m, out_f),
        MatRef::new(w, out_f, in_f),
        0.0,
    )
    .expect("linear dX shapes agree");
    let mut dw = vec![0.0; w.len()];
    gemm_strided(
        &mut dw,
        MatRef::new(dy, m, out_f).t(),
        MatRef::new(&x.data, m, in_f),
        0.0,
    )
    .expect("linear dW shapes agree");
    let mut db = vec![0.0; out_f];
    for row in dy.chunks(out_f) {
        db.iter_mut().zip(row).for_each(|(d, g)| *d += g);
    }
    (dx, dw, db)
}
