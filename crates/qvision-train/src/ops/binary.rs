//! Element-wise binary ops with NumPy broadcasting (forward on the engine's kernel) and their
//! gradients (summed back over the broadcast dims).

use super::Buf;
use qvision_kernels::elementwise::{binary, broadcast_shape, BinaryOp};

/// Strides of `shape` aligned to `out` (right-aligned), 0 where broadcast.
fn aligned_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let mut st = vec![0; out.len()];
    let off = out.len() - shape.len();
    let mut s = 1;
    for i in (0..shape.len()).rev() {
        st[off + i] = if shape[i] == 1 { 0 } else { s };
        s *= shape[i];
    }
    st
}

/// Visit every output index with the offsets into `a` and `b`.
fn for_each_index(
    out: &[usize],
    sa: &[usize],
    sb: &[usize],
    mut f: impl FnMut(usize, usize, usize),
) {
    let total: usize = out.iter().product();
    if total == 0 {
        return;
    }
    let nd = out.len();
    let mut idx = vec![0usize; nd];
    let (mut oa, mut ob) = (0usize, 0usize);
    for o in 0..total {
        f(o, oa, ob);
        for d in (0..nd).rev() {
            idx[d] += 1;
            oa += sa[d];
            ob += sb[d];
            if idx[d] < out[d] {
                break;
            }
            oa -= sa[d] * out[d];
            ob -= sb[d] * out[d];
            idx[d] = 0;
        }
    }
}

/// `op(a, b)` with broadcasting (the inference engine's kernel).
pub fn forward(op: BinaryOp, a: &Buf, b: &Buf) -> Result<Buf, String> {
    let (data, shape) =
        binary(op, &a.data, &a.shape, &b.data, &b.shape).map_err(|e| e.to_string())?;
    Ok(Buf::new(shape, data))
}

/// `(da, db)`, each shaped like its input.
pub fn backward(op: BinaryOp, a: &Buf, b: &Buf, dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    if a.shape == b.shape && op == BinaryOp::Add {
        return (dy.to_vec(), dy.to_vec());
    }
    let out = broadcast_shape(&a.shape, &b.shape).unwrap_or_else(|_| a.shape.clone());
    let (sa, sb) = (
        aligned_strides(&a.shape, &out),
        aligned_strides(&b.shape, &out),
    );
    let mut da = vec![0.0; a.len()];
    let mut db = vec![0.0; b.len()];
    for_each_index(&out, &sa, &sb, |o, ia, ib| {
        let (x, y, g) = (a.data[ia], b.data[ib], dy[o]);
        let (ga, gb) = match op {
            BinaryOp::Add => (g, g),
            BinaryOp::Sub => (g, -g),
            BinaryOp::Mul => (g * y, g * x),
            BinaryOp::Div => (g / y, -g * x / (y * y)),
        };
        da[ia] += ga;
        db[ib] += gb;
    });
    (da, db)
}
