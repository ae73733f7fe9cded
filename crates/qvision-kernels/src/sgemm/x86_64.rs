//! x86_64 micro-kernels: B rows are loaded (masked at the right edge), A values broadcast, and
//! the accumulators live in registers for the whole K loop.

use super::{finish_tile, generic, Tile};
use crate::act::Activation;
use std::arch::x86_64::*;

const MR512: usize = 12;
const MR256: usize = 6;

/// # Safety
/// The CPU supports AVX-512F. The tile must be in bounds: `rows <= 12`, `cols <= 32`, A holds
/// `k * 12` values, B has `cols` readable values at every `kk * ldb`, C and the residual have
/// `cols` writable/readable values at every `i * ldc` below `rows`, offset by `c_off`.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn tile_avx512(t: &Tile<'_>) {
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
    let mut acc = [[_mm512_setzero_ps(); 2]; MR512];
    let a = t.a.as_ptr();
    let b = t.b.as_ptr();
    for kk in 0..t.k {
        // SAFETY: row kk of B has `cols` values from this tile's first column (caller contract);
        // masked-off lanes are not read.
        let (b0, b1) = unsafe {
            let bp = b.add(kk * t.ldb);
            (
                _mm512_maskz_loadu_ps(m0, bp),
                _mm512_maskz_loadu_ps(m1, bp.add(16)),
            )
        };
        // SAFETY: the panel holds k * 12 values.
        let ap = unsafe { a.add(kk * MR512) };
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: i < 12, inside this k step of the panel.
            let av = _mm512_set1_ps(unsafe { *ap.add(i) });
            row[0] = _mm512_fmadd_ps(av, b0, row[0]);
            row[1] = _mm512_fmadd_ps(av, b1, row[1]);
        }
    }
    let zero = _mm512_setzero_ps();
    let six = _mm512_set1_ps(6.0);
    for (i, row) in acc.iter().enumerate().take(t.rows) {
        let (mut v0, mut v1) = (row[0], row[1]);
        if let Some(bias) = t.bias {
            let bv = _mm512_set1_ps(bias[i]);
            v0 = _mm512_add_ps(v0, bv);
            v1 = _mm512_add_ps(v1, bv);
        }
        if let Some(r) = t.residual {
            // SAFETY: residual row i has `cols` values (masked).
            unsafe {
                let rp = r.as_ptr().add(i * t.ldc);
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, rp));
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, rp.add(16)));
            }
        }
        match t.act {
            Some(Activation::Relu) => {
                v0 = _mm512_max_ps(v0, zero);
                v1 = _mm512_max_ps(v1, zero);
            }
            Some(Activation::Relu6) => {
                v0 = _mm512_min_ps(_mm512_max_ps(v0, zero), six);
                v1 = _mm512_min_ps(_mm512_max_ps(v1, zero), six);
            }
            _ => {}
        }
        // SAFETY: row i of the tile in C has `cols` writable values (masked), written by this
        // tile only.
        unsafe {
            let cp = t.c.add(t.c_off + i * t.ldc);
            _mm512_mask_storeu_ps(cp, m0, v0);
            _mm512_mask_storeu_ps(cp.add(16), m1, v1);
        }
    }
    finish_tile(t, true);
}

/// # Safety
/// The CPU supports AVX2 and FMA; the tile is in bounds as for [`tile_avx512`] with
/// `rows <= 6`, `cols <= 16`, and A holding `k * 6` values.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn tile_avx2(t: &Tile<'_>) {
    if t.cols < 16 {
        // right-edge tiles take the portable path (AVX2 has no cheap masked load)
        return generic::tile(t, MR256);
    }
    let mut acc = [[_mm256_setzero_ps(); 2]; MR256];
    let a = t.a.as_ptr();
    let b = t.b.as_ptr();
    for kk in 0..t.k {
        // SAFETY: row kk of B has 16 values from this tile's first column.
        let (b0, b1) = unsafe {
            let bp = b.add(kk * t.ldb);
            (_mm256_loadu_ps(bp), _mm256_loadu_ps(bp.add(8)))
        };
        // SAFETY: the panel holds k * 6 values.
        let ap = unsafe { a.add(kk * MR256) };
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: i < 6, inside this k step of the panel.
            let av = _mm256_set1_ps(unsafe { *ap.add(i) });
            row[0] = _mm256_fmadd_ps(av, b0, row[0]);
            row[1] = _mm256_fmadd_ps(av, b1, row[1]);
        }
    }
    let zero = _mm256_setzero_ps();
    let six = _mm256_set1_ps(6.0);
    for (i, row) in acc.iter().enumerate().take(t.rows) {
        let (mut v0, mut v1) = (row[0], row[1]);
        if let Some(bias) = t.bias {
            let bv = _mm256_set1_ps(bias[i]);
            v0 = _mm256_add_ps(v0, bv);
            v1 = _mm256_add_ps(v1, bv);
        }
        if let Some(r) = t.residual {
            // SAFETY: residual row i has 16 values.
            unsafe {
                let rp = r.as_ptr().add(i * t.ldc);
                v0 = _mm256_add_ps(v0, _mm256_loadu_ps(rp));
                v1 = _mm256_add_ps(v1, _mm256_loadu_ps(rp.add(8)));
            }
        }
        match t.act {
            Some(Activation::Relu) => {
                v0 = _mm256_max_ps(v0, zero);
                v1 = _mm256_max_ps(v1, zero);
            }
            Some(Activation::Relu6) => {
                v0 = _mm256_min_ps(_mm256_max_ps(v0, zero), six);
                v1 = _mm256_min_ps(_mm256_max_ps(v1, zero), six);
            }
            _ => {}
        }
        // SAFETY: row i of the tile in C has 16 writable values, written by this tile only.
        unsafe {
            let cp = t.c.add(t.c_off + i * t.ldc);
            _mm256_storeu_ps(cp, v0);
            _mm256_storeu_ps(cp.add(8), v1);
        }
    }
    finish_tile(t, true);
}
