//! Portable micro-kernel: the scalar reference the SIMD tiles are tested against.

use super::{finish_tile, Tile};

pub(crate) fn tile(t: &Tile<'_>, mr: usize) {
    let mut acc = [0.0f32; 16 * 32];
    let acc = &mut acc[..t.rows * t.cols];
    for kk in 0..t.k {
        let a = &t.a[kk * mr..kk * mr + mr];
        let b = &t.b[kk * t.ldb..kk * t.ldb + t.cols];
        for i in 0..t.rows {
            let row = &mut acc[i * t.cols..(i + 1) * t.cols];
            for (r, bv) in row.iter_mut().zip(b) {
                *r += a[i] * bv;
            }
        }
    }
    for i in 0..t.rows {
        for j in 0..t.cols {
            let mut v = acc[i * t.cols + j];
            if let Some(b) = t.bias {
                v += b[i];
            }
            if let Some(r) = t.residual {
                v += r[i * t.ldc + j];
            }
            // SAFETY: (i, j) lies inside this tile of C, which `sgemm` bounds-checked and no
            // other tile writes.
            unsafe { *t.c.add(t.c_off + i * t.ldc + j) = v };
        }
    }
    finish_tile(t, false);
}
