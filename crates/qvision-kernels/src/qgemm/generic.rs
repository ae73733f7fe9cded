//! Portable int8 micro-kernel: the reference for the SIMD tiles (and, compiled with AVX2
//! enabled, the AVX2 path).

use super::{QTile, MR, NR};

#[inline(always)]
pub(crate) fn tile_body(t: &QTile<'_>) {
    let mut acc = [[0i32; NR]; MR];
    for g in 0..t.kp / 4 {
        let a = &t.a[g * MR * 4..(g + 1) * MR * 4];
        let b = &t.b[g * NR * 4..(g + 1) * NR * 4];
        for (i, row) in acc.iter_mut().enumerate() {
            let ai = &a[i * 4..i * 4 + 4];
            for (j, r) in row.iter_mut().enumerate() {
                let bj = &b[j * 4..j * 4 + 4];
                *r += ai[0] as i32 * bj[0] as i32
                    + ai[1] as i32 * bj[1] as i32
                    + ai[2] as i32 * bj[2] as i32
                    + ai[3] as i32 * bj[3] as i32;
            }
        }
    }
    for (i, row) in acc.iter().enumerate().take(t.rows) {
        let r = t.row0 + i;
        for (j, &v) in row.iter().enumerate().take(t.cols) {
            // the residual is laid out like C
            let res = t.rq.residual.map(|q| q.data[t.c_off + i * t.ldc + j]);
            let q = t.rq.apply(v, r, t.row_sums[r], res);
            // SAFETY: (i, j) lies inside this tile of C, bounds-checked by `qgemm`; no other
            // tile writes it.
            unsafe { *t.c.add(t.c_off + i * t.ldc + j) = q };
        }
    }
}

pub(crate) fn tile(t: &QTile<'_>) {
    tile_body(t)
}
