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
    /// ReLU / ReLU6 applied as the outputs are stored (`(lo, hi)`).
    pub clamp: Option<(f32, f32)>,
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
    if let Some((lo, hi)) = r.clamp {
        out.iter_mut().for_each(|v| *v = v.max(lo).min(hi));
    }
}

/// Compute `dst` (this chunk's pixels) for one output row: bias, then `r.clamp` (the caller adds
/// a residual and applies any other activation).
pub(crate) fn row(isa: Isa, r: &DwRow<'_>, dst: &mut [f32]) {
    let (ky_rows, nk) = rows(r);
    let ky_rows = &ky_rows[..nk];
    let n = dst.len() / B;
    // the bounds the AVX-512 border kernel relies on, checked once per row
    let plane_ok = r.x.len() >= r.h * r.w * B && r.wk.len() >= r.p.kernel[0] * r.p.kernel[1] * B;
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
            #[cfg(target_arch = "x86_64")]
            if isa == Isa::Avx512 {
                assert!(plane_ok, "depthwise plane and weights sizes");
                // SAFETY: AVX-512F was detected (isa); the assert bounds the plane and the
                // weights, and the border kernel reads only in-bounds taps.
                unsafe { x86::border(r, ky_rows, ox, &mut dst[i * B..(i + 1) * B]) };
                i += 1;
                continue;
            }
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
        let p = r.p;
        let n = super::super::run_len(run);
        if p.stride[1] == 1 && p.dilation[1] == 1 && matches!(p.kernel[1], 3 | 5 | 7) {
            // SAFETY (every arm): `N` is at most `run` (see `run_len`), the kernel `KW` wide.
            return unsafe {
                match p.kernel[1] {
                    3 => super::super::by_run_len!(n, px_s1::<_, 3>(r, ky_rows, ox, dst)),
                    5 => super::super::by_run_len!(n, px_s1::<_, 5>(r, ky_rows, ox, dst)),
                    _ => super::super::by_run_len!(n, px_s1::<_, 7>(r, ky_rows, ox, dst)),
                }
            };
        }
        if p.stride[1] == 2 && p.dilation[1] == 1 && p.kernel[1] == 3 {
            // SAFETY (every arm): `N` is at most `run` (see `run_len`), 3 taps at stride 2.
            return unsafe { super::super::by_run_len!(n, px_s2_3(r, ky_rows, ox, dst)) };
        }
        // SAFETY (every arm): `N` is at most `run` (see `run_len`).
        unsafe { super::super::by_run_len!(n, px(r, ky_rows, ox, dst)) }
    }

    /// One border pixel (some taps in the padding, skipped), as [`super::pixel_checked`].
    ///
    /// # Safety
    /// AVX-512F is available; `r.x` holds the `h x w x 16` plane and `r.wk` the `kh x kw x 16`
    /// weights; every `(ky, iy)` of `ky_rows` has `iy < h`; `dst` holds 16 values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn border(
        r: &DwRow<'_>,
        ky_rows: &[(usize, usize)],
        ox: usize,
        dst: &mut [f32],
    ) {
        let p = r.p;
        let kw = p.kernel[1];
        let ix0 = (ox * p.stride[1]) as isize - p.padding[1] as isize;
        // SAFETY: 16 floats.
        let mut acc = unsafe { _mm512_loadu_ps(r.bias.as_ptr()) };
        for &(ky, iy) in ky_rows {
            for kx in 0..kw {
                let ix = ix0 + (kx * p.dilation[1]) as isize;
                if ix < 0 || ix as usize >= r.w {
                    continue;
                }
                // SAFETY: (iy, ix) lies in the plane and (ky, kx) in the weights (the contract).
                acc = unsafe {
                    let xv = _mm512_loadu_ps(r.x.as_ptr().add((iy * r.w + ix as usize) * B));
                    let wv = _mm512_loadu_ps(r.wk.as_ptr().add((ky * kw + kx) * B));
                    _mm512_fmadd_ps(xv, wv, acc)
                };
            }
        }
        // SAFETY: dst holds 16 values.
        unsafe { store(r, &[acc], dst) };
    }

    /// Store a run's accumulators, clamped as `r.clamp` says.
    ///
    /// # Safety
    /// AVX-512F is available; `dst` holds `N * 16` values.
    #[inline(always)]
    unsafe fn store<const N: usize>(r: &DwRow<'_>, acc: &[__m512; N], dst: &mut [f32]) {
        let clamp = r
            .clamp
            .map(|(lo, hi)| (_mm512_set1_ps(lo), _mm512_set1_ps(hi)));
        for (i, &a) in acc.iter().enumerate() {
            let v = match clamp {
                Some((lo, hi)) => _mm512_min_ps(_mm512_max_ps(a, lo), hi),
                None => a,
            };
            // SAFETY: i < N, and dst holds N * 16 values.
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr().add(i * B), v) };
        }
    }

    /// [`px`] for `KW` taps across at stride 1 (MobileNet's 3x3, EfficientNet's 5x5, ConvNeXt's
    /// 7x7 depthwise): per kernel row the `N + KW - 1` input pixels are loaded once and shared by
    /// the taps.
    ///
    /// # Safety
    /// As [`interior`], with `N <= run`, a kernel `KW` wide, stride and dilation 1 across.
    #[target_feature(enable = "avx512f")]
    unsafe fn px_s1<const N: usize, const KW: usize>(
        r: &DwRow<'_>,
        ky_rows: &[(usize, usize)],
        ox: usize,
        dst: &mut [f32],
    ) -> usize {
        let p = r.p;
        // SAFETY: 16 floats.
        let bv = unsafe { _mm512_loadu_ps(r.bias.as_ptr()) };
        let mut acc = [bv; N];
        let xp = r.x.as_ptr();
        for &(ky, iy) in ky_rows {
            let base = (iy * r.w + ox - p.padding[1]) * B;
            let mut xs = [_mm512_setzero_ps(); 18];
            for (j, v) in xs.iter_mut().enumerate().take(N + KW - 1) {
                // SAFETY: input pixels ox - pad .. ox - pad + N + KW - 1 of row iy are the taps
                // of pixels ox..ox + N, inside the row (checked by the caller).
                *v = unsafe { _mm512_loadu_ps(xp.add(base + j * B)) };
            }
            for kx in 0..KW {
                // SAFETY: weight (ky, kx) lies in `wk`.
                let w = unsafe { _mm512_loadu_ps(r.wk.as_ptr().add((ky * KW + kx) * B)) };
                for (i, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(xs[i + kx], w, *a);
                }
            }
        }
        // SAFETY: N <= run, and dst holds run * 16 values.
        unsafe { store(r, &acc, dst) };
        N
    }

    /// [`px`] for 3 taps across at stride 2 (MobileNet's downsampling depthwise): output `i`
    /// reads input pixels `2i`, `2i + 1`, `2i + 2`, so the even pixels are loaded once and
    /// shared by the first and last taps of neighbouring outputs.
    ///
    /// # Safety
    /// As [`interior`], with `N <= run`, a kernel 3 wide, stride 2 and dilation 1 across.
    #[target_feature(enable = "avx512f")]
    unsafe fn px_s2_3<const N: usize>(
        r: &DwRow<'_>,
        ky_rows: &[(usize, usize)],
        ox: usize,
        dst: &mut [f32],
    ) -> usize {
        let p = r.p;
        // SAFETY: 16 floats.
        let bv = unsafe { _mm512_loadu_ps(r.bias.as_ptr()) };
        let mut acc = [bv; N];
        let xp = r.x.as_ptr();
        for &(ky, iy) in ky_rows {
            let base = (iy * r.w + 2 * ox - p.padding[1]) * B;
            // SAFETY: weights (ky, 0..3) lie in `wk`.
            let w = unsafe {
                [0, 1, 2].map(|kx| _mm512_loadu_ps(r.wk.as_ptr().add((ky * 3 + kx) * B)))
            };
            let mut even = [_mm512_setzero_ps(); 13];
            for (j, v) in even.iter_mut().enumerate().take(N + 1) {
                // SAFETY: input pixels 2(ox + j) - pad, j <= N, are taps of pixels ox..ox + N
                // (the last one tap 2 of pixel ox + N - 1), inside the row (checked by the
                // caller).
                *v = unsafe { _mm512_loadu_ps(xp.add(base + 2 * j * B)) };
            }
            for (i, a) in acc.iter_mut().enumerate() {
                // SAFETY: input pixel 2(ox + i) + 1 - pad, tap 1 of pixel ox + i.
                let odd = unsafe { _mm512_loadu_ps(xp.add(base + (2 * i + 1) * B)) };
                *a = _mm512_fmadd_ps(even[i], w[0], *a);
                *a = _mm512_fmadd_ps(odd, w[1], *a);
                *a = _mm512_fmadd_ps(even[i + 1], w[2], *a);
            }
        }
        // SAFETY: N <= run, and dst holds run * 16 values.
        unsafe { store(r, &acc, dst) };
        N
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
        // SAFETY: N <= run, and dst holds run * 16 values.
        unsafe { store(r, &acc, dst) };
        N
    }
}
