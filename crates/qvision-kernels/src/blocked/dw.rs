//! Depthwise convolution in NCHW16c straight from the unpadded input: taps that fall in the
//! padding are skipped instead of copying the image into a zero border. Interior pixels run in
//! register-blocked SIMD; border pixels take a checked path.

use super::B;
use crate::conv::Conv2dParams;
use crate::isa::Isa;

/// One output row chunk of one channel block.
pub(crate) struct DwRow<'a> {
    pub p: &'a Conv2dParams,
    /// The input block plane, `h x w x 16`, unpadded.
    pub x: &'a [f32],
    pub h: usize,
    pub w: usize,
    /// `kh x kw x 16` weights of this block.
    pub wk: &'a [f32],
    pub bias: &'a [f32; B],
    pub oy: usize,
    /// First output column of this chunk.
    pub x0: usize,
    /// Output columns `[lo, hi)` whose taps are all inside the row horizontally.
    pub lo: usize,
    pub hi: usize,
}

/// Valid `(ky, iy)` taps of output row `oy`.
fn rows(r: &DwRow<'_>) -> ([(usize, usize); 16], usize) {
    let p = r.p;
    let mut out = [(0, 0); 16];
    let mut n = 0;
    for ky in 0..p.kernel[0].min(16) {
        let iy = (r.oy * p.stride[0] + ky * p.dilation[0]) as isize - p.padding[0] as isize;
        if iy >= 0 && (iy as usize) < r.h {
            out[n] = (ky, iy as usize);
            n += 1;
        }
    }
    (out, n)
}

/// One output pixel with every tap checked (the reference, and the border path).
fn pixel_checked(r: &DwRow<'_>, ky_rows: &[(usize, usize)], ox: usize, out: &mut [f32; B]) {
    let p = r.p;
    let kw = p.kernel[1];
    *out = *r.bias;
    for &(ky, iy) in ky_rows {
        for kx in 0..kw {
            let ix = (ox * p.stride[1] + kx * p.dilation[1]) as isize - p.padding[1] as isize;
            if ix < 0 || ix as usize >= r.w {
                continue;
            }
            let xv = &r.x[(iy * r.w + ix as usize) * B..][..B];
            let wv = &r.wk[(ky * kw + kx) * B..][..B];
            for l in 0..B {
                out[l] += xv[l] * wv[l];
            }
        }
    }
}

/// Compute `dst` (this chunk's pixels) for one output row (bias only; the caller adds the
/// residual and applies the activation).
pub(crate) fn row(isa: Isa, r: &DwRow<'_>, dst: &mut [f32]) {
    let (ky_rows, nk) = rows(r);
    let ky_rows = &ky_rows[..nk];
    let n = dst.len() / B;
    let mut i = 0;
    while i < n {
        let ox = r.x0 + i;
        let run = if ox >= r.lo && ox < r.hi {
            (r.hi - ox).min(n - i)
        } else {
            0
        };
        let done = if run > 0 {
            interior(isa, r, ky_rows, ox, run, &mut dst[i * B..(i + run) * B])
        } else {
            0
        };
        if done == 0 {
            let mut a = [0.0f32; B];
            pixel_checked(r, ky_rows, ox, &mut a);
            dst[i * B..(i + 1) * B].copy_from_slice(&a);
            i += 1;
        } else {
            i += done;
        }
    }
}

/// Interior pixels `ox..ox + run` (all taps horizontally in bounds); returns how many it did.
fn interior(
    isa: Isa,
    r: &DwRow<'_>,
    ky_rows: &[(usize, usize)],
    ox: usize,
    run: usize,
    dst: &mut [f32],
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        let p = r.p;
        // every tap of these pixels: iy < h (from `rows`), 0 <= ix < w (interior bounds)
        let last = (ox + run - 1) * p.stride[1] + (p.kernel[1] - 1) * p.dilation[1] - p.padding[1];
        assert!(last < r.w && ox * p.stride[1] >= p.padding[1] && r.x.len() >= r.h * r.w * B);
        assert!(r.wk.len() >= p.kernel[0] * p.kernel[1] * B && dst.len() >= run * B);
        // SAFETY: AVX-512F was detected (isa); the asserts bound every load and store.
        return unsafe { x86::interior(r, ky_rows, ox, run, dst) };
    }
    let _ = isa;
    for i in 0..run {
        let mut a = [0.0f32; B];
        pixel_checked(r, ky_rows, ox + i, &mut a);
        dst[i * B..(i + 1) * B].copy_from_slice(&a);
    }
    run
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{DwRow, B};
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX-512F is available and the caller checked that every tap of pixels `ox..ox+run` lies
    /// inside `r.x`, the weights inside `r.wk`, and `dst` holds `run * 16` values.
    pub(super) unsafe fn interior(
        r: &DwRow<'_>,
        ky_rows: &[(usize, usize)],
        ox: usize,
        run: usize,
        dst: &mut [f32],
    ) -> usize {
        // SAFETY (every arm): `N` is at most `run` (see `run_len`).
        unsafe { super::super::by_run_len!(super::super::run_len(run), px(r, ky_rows, ox, dst)) }
    }

    /// # Safety
    /// As [`interior`], with `N <= run`.
    #[target_feature(enable = "avx512f")]
    unsafe fn px<const N: usize>(
        r: &DwRow<'_>,
        ky_rows: &[(usize, usize)],
        ox: usize,
        dst: &mut [f32],
    ) -> usize {
        let p = r.p;
        let kw = p.kernel[1];
        let (sw, dw, pw) = (p.stride[1], p.dilation[1], p.padding[1]);
        // SAFETY: 16 floats.
        let bv = unsafe { _mm512_loadu_ps(r.bias.as_ptr()) };
        let mut acc = [bv; N];
        let xp = r.x.as_ptr();
        for &(ky, iy) in ky_rows {
            for kx in 0..kw {
                // SAFETY: weight (ky, kx) lies in `wk`.
                let wv = unsafe { _mm512_loadu_ps(r.wk.as_ptr().add((ky * kw + kx) * B)) };
                let ix0 = ox * sw + kx * dw - pw;
                let base = (iy * r.w + ix0) * B;
                for (i, a) in acc.iter_mut().enumerate() {
                    // SAFETY: pixel ox + i, tap kx is inside the row (checked by the caller).
                    let xv = unsafe { _mm512_loadu_ps(xp.add(base + i * sw * B)) };
                    *a = _mm512_fmadd_ps(xv, wv, *a);
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            // SAFETY: i < N <= run, and dst holds run * 16 values.
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr().add(i * B), *a) };
        }
        N
    }
}
