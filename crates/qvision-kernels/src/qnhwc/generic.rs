//! Portable int8 micro-kernel: the scalar reference for the VNNI tile, and (compiled with AVX2
//! enabled) the AVX2 path. Exact i32 accumulation, no `vpmaddubsw` saturation.

use super::{TileRows, MR, NBLK};

#[inline(always)]
pub(crate) fn tile_body(a: &TileRows<'_>, b: &[i8], nb: usize, acc: &mut [i32; MR * NBLK]) {
    let (rows, cin) = (a.rows, a.cin);
    let quads = cin.div_ceil(4);
    let width = nb * 16;
    acc.fill(0);
    for t in (0..a.taps).filter(|&t| a.live(t)) {
        let bt = &b[t * quads * width * 4..(t + 1) * quads * width * 4];
        for i in 0..a.valid {
            // SAFETY: the drivers give every tap of every row `cin` readable bytes.
            let xs = unsafe { std::slice::from_raw_parts(rows[t * MR + i].0, cin) };
            let row = &mut acc[i * NBLK..i * NBLK + width];
            for q in 0..quads {
                let bq = &bt[q * width * 4..(q + 1) * width * 4];
                for k in 0..4.min(cin - q * 4) {
                    let av = xs[q * 4 + k] as i32;
                    for (j, r) in row.iter_mut().enumerate() {
                        *r += av * bq[j * 4 + k] as i32;
                    }
                }
            }
        }
    }
}

pub(crate) fn tile(a: &TileRows<'_>, b: &[i8], nb: usize, acc: &mut [i32; MR * NBLK]) {
    tile_body(a, b, nb, acc)
}

/// # Safety
/// The CPU supports AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn tile_avx2(a: &TileRows<'_>, b: &[i8], nb: usize, acc: &mut [i32; MR * NBLK]) {
    tile_body(a, b, nb, acc)
}
