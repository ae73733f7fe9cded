//! x86_64 int8 micro-kernels.

use super::{generic, QTile, MR};
use std::arch::x86_64::*;

/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn tile_avx2(t: &QTile<'_>) {
    generic::tile_body(t)
}

/// # Safety
/// The CPU supports AVX-512F/BW/VNNI. `t.a` holds `kp/4` groups of `MR x 4` bytes, `t.b` holds
/// `kp/4` groups of `32 x 4` bytes, and C has `cols` writable bytes at `c_off + i * ldc` for
/// every `i < rows`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn tile_vnni(t: &QTile<'_>) {
    let mut acc = [[_mm512_setzero_si512(); 2]; MR];
    let a = t.a.as_ptr();
    let b = t.b.as_ptr();
    for g in 0..t.kp / 4 {
        // SAFETY: group g of the B tile is 128 bytes inside `t.b`.
        let (b0, b1) = unsafe {
            let bp = b.add(g * 128);
            (
                _mm512_loadu_si512(bp.cast()),
                _mm512_loadu_si512(bp.add(64).cast()),
            )
        };
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: group g, row i: 4 bytes inside `t.a`.
            let w = unsafe { (a.add((g * MR + i) * 4) as *const i32).read_unaligned() };
            let av = _mm512_set1_epi32(w);
            row[0] = _mm512_dpbusd_epi32(row[0], b0, av);
            row[1] = _mm512_dpbusd_epi32(row[1], b1, av);
        }
    }
    let rq = t.rq;
    let lo = _mm512_set1_ps(rq.qmin as f32 - rq.zo as f32);
    let hi = _mm512_set1_ps(rq.qmax as f32 - rq.zo as f32);
    let zo = _mm512_set1_epi32(rq.zo);
    let m0: __mmask16 = if t.cols >= 16 {
        0xffff
    } else {
        (1u16 << t.cols) - 1
    };
    let m1: __mmask16 = match t.cols {
        c if c >= 32 => 0xffff,
        c if c > 16 => (1u16 << (c - 16)) - 1,
        _ => 0,
    };
    for (i, row) in acc.iter().enumerate().take(t.rows) {
        let r = t.row0 + i;
        let shift = rq.bias.map_or(0, |b| b[r]) - rq.za * t.row_sums[r];
        let sv = _mm512_set1_epi32(shift);
        let mv = _mm512_set1_ps(rq.multiplier[r]);
        for (h, mask) in [(0usize, m0), (1, m1)] {
            if mask == 0 {
                continue;
            }
            let v = _mm512_add_epi32(row[h], sv);
            let mut y = _mm512_mul_ps(_mm512_cvtepi32_ps(v), mv);
            if let Some(res) = rq.residual {
                // SAFETY: the residual is laid out like C and `qgemm` checked its size; the mask
                // limits the load to this tile's valid columns.
                let rb = unsafe {
                    _mm_maskz_loadu_epi8(
                        mask,
                        res.data.as_ptr().add(t.c_off + i * t.ldc + h * 16).cast(),
                    )
                };
                let rv =
                    _mm512_sub_epi32(_mm512_cvtepu8_epi32(rb), _mm512_set1_epi32(res.zero_point));
                y = _mm512_add_ps(
                    y,
                    _mm512_mul_ps(_mm512_cvtepi32_ps(rv), _mm512_set1_ps(res.multiplier)),
                );
            }
            let y = _mm512_min_ps(_mm512_max_ps(y, lo), hi);
            // round half to even (the default MXCSR mode), as `round_ties_even` in the reference
            let q = _mm512_add_epi32(_mm512_cvtps_epi32(y), zo);
            let bytes = _mm512_cvtusepi32_epi8(q);
            // SAFETY: the mask limits the store to the tile's valid columns of row i.
            unsafe {
                _mm_mask_storeu_epi8(t.c.add(t.c_off + i * t.ldc + h * 16).cast(), mask, bytes)
            };
        }
    }
}
