//! Direct depthwise convolution (one input channel per group), any kernel, stride, padding and
//! dilation, with bias and activation fused.
//!
//! Each channel is copied into a zero-padded plane; for stride > 1 each padded row is split into
//! `stride` phases, so every tap reads a contiguous run and the inner loop vectorises. The loops
//! are compiled per ISA ([`crate::isa`]); [`crate::reference::conv2d`] is the scalar reference.

use crate::act::Activation;
use crate::conv::Conv2dParams;
use crate::isa::{self, Isa};
use rayon::prelude::*;

/// One output channel's geometry.
#[derive(Clone, Copy)]
struct Geom {
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    dh: usize,
    dw: usize,
}

/// `y[oc] = act(bias[oc] + sum_k w[oc,k] * x[oc / mult] shifted)`, channels in parallel.
#[allow(clippy::too_many_arguments)]
pub fn depthwise(
    p: &Conv2dParams,
    weight: &[f32],
    bias: Option<&[f32]>,
    act: Option<Activation>,
    x: &[f32],
    h: usize,
    w: usize,
    y: &mut [f32],
    oh: usize,
    ow: usize,
) {
    depthwise_isa(isa::current(), p, weight, bias, act, x, h, w, y, oh, ow)
}

/// [`depthwise`] on a given ISA (for differential tests).
#[allow(clippy::too_many_arguments)]
pub fn depthwise_isa(
    isa: Isa,
    p: &Conv2dParams,
    weight: &[f32],
    bias: Option<&[f32]>,
    act: Option<Activation>,
    x: &[f32],
    h: usize,
    w: usize,
    y: &mut [f32],
    oh: usize,
    ow: usize,
) {
    let g = Geom {
        h,
        w,
        oh,
        ow,
        kh: p.kernel[0],
        kw: p.kernel[1],
        sh: p.stride[0],
        sw: p.stride[1],
        ph: p.padding[0],
        pw: p.padding[1],
        dh: p.dilation[0],
        dw: p.dilation[1],
    };
    let mult = p.out_channels / p.in_channels;
    let k = g.kh * g.kw;
    y.par_chunks_mut((oh * ow).max(1))
        .enumerate()
        .for_each_init(
            || (Vec::new(), Vec::new(), Vec::new()),
            |(padded, phases, bases), (oc, yc)| {
                let ic = oc / mult;
                pad_plane(&x[ic * h * w..(ic + 1) * h * w], &g, padded);
                let b = bias.map_or(0.0, |b| b[oc]);
                channel(
                    isa,
                    &g,
                    padded,
                    phases,
                    bases,
                    &weight[oc * k..(oc + 1) * k],
                    b,
                    act,
                    yc,
                );
            },
        );
}

/// Copy one channel into a zero-bordered `(h + 2ph + extra) x (w + 2pw + extra)` plane. The
/// extra rows/columns keep every tap of every output in bounds for any stride.
fn pad_plane(src: &[f32], g: &Geom, out: &mut Vec<f32>) {
    let (hp, wp) = padded_size(g);
    out.resize(hp * wp, 0.0);
    // only the border needs zeros: the interior is overwritten
    out[..g.ph * wp].fill(0.0);
    out[(g.ph + g.h) * wp..].fill(0.0);
    for y in 0..g.h {
        let r = (y + g.ph) * wp;
        out[r..r + g.pw].fill(0.0);
        out[r + g.pw..r + g.pw + g.w].copy_from_slice(&src[y * g.w..(y + 1) * g.w]);
        out[r + g.pw + g.w..r + wp].fill(0.0);
    }
}

fn padded_size(g: &Geom) -> (usize, usize) {
    let need_h = (g.oh - 1) * g.sh + (g.kh - 1) * g.dh + 1;
    let need_w = (g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1;
    (
        (g.h + 2 * g.ph).max(need_h),
        (g.w + 2 * g.pw).max(need_w).next_multiple_of(g.sw),
    )
}

/// Build the tap planes for one channel and compute every output row.
#[allow(clippy::too_many_arguments)]
fn channel(
    isa: Isa,
    g: &Geom,
    padded: &[f32],
    phases: &mut Vec<f32>,
    bases: &mut Vec<usize>,
    wk: &[f32],
    bias: f32,
    act: Option<Activation>,
    out: &mut [f32],
) {
    let (hp, wp) = padded_size(g);
    let plen = wp / g.sw;
    // Column phases: plane r holds padded[y][j * sw + r], so strided taps read contiguously.
    let planes: &[f32] = if g.sw == 1 {
        padded
    } else {
        phases.clear();
        phases.resize(g.sw * hp * plen, 0.0);
        for y in 0..hp {
            let row = &padded[y * wp..(y + 1) * wp];
            for r in 0..g.sw {
                let dst = &mut phases[(r * hp + y) * plen..(r * hp + y + 1) * plen];
                for (j, d) in dst.iter_mut().enumerate() {
                    *d = row[j * g.sw + r];
                }
            }
        }
        phases
    };
    // Start of each tap's contiguous run for output row 0; row oy adds oy * sh * plen. Every
    // run holds `ow` values.
    bases.clear();
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let off = kx * g.dw;
            bases.push(((off % g.sw) * hp + ky * g.dh) * plen + off / g.sw);
        }
    }
    let last = (g.oh - 1) * g.sh * plen;
    assert!(
        bases.iter().all(|&b| b + last + g.ow <= planes.len()),
        "tap runs stay inside the planes"
    );
    for oy in 0..g.oh {
        let dst = &mut out[oy * g.ow..(oy + 1) * g.ow];
        // SAFETY: the assert above bounds every tap run of every row (oy * sh * plen <= last);
        // `isa` comes from `isa::current()` or `isa::available()`.
        unsafe { row(isa, planes, bases, oy * g.sh * plen, wk, bias, dst) };
        match act {
            Some(Activation::Relu) => dst.iter_mut().for_each(|v| *v = v.max(0.0)),
            Some(Activation::Relu6) => dst.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0)),
            Some(f) => dst.iter_mut().for_each(|v| *v = f.apply_scalar(*v)),
            None => {}
        }
    }
}

/// `dst[ox] = bias + sum_t w[t] * planes[shift + bases[t] + ox]`. Scalar reference for the SIMD
/// rows.
fn row_scalar(
    planes: &[f32],
    bases: &[usize],
    shift: usize,
    w: &[f32],
    bias: f32,
    dst: &mut [f32],
) {
    for (ox, d) in dst.iter_mut().enumerate() {
        let mut a = bias;
        for (b, wt) in bases.iter().zip(w) {
            a += planes[shift + b + ox] * wt;
        }
        *d = a;
    }
}

/// One output row.
///
/// # Safety
/// `shift + bases[t] + dst.len() <= planes.len()` for every tap `t`, and `isa <= isa::best()`.
unsafe fn row(
    isa: Isa,
    planes: &[f32],
    bases: &[usize],
    shift: usize,
    w: &[f32],
    bias: f32,
    dst: &mut [f32],
) {
    debug_assert_eq!(bases.len(), w.len());
    let planes = &planes[shift..];
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: the caller guarantees `isa <= isa::best()` (which detected AVX-512F) and that
        // every tap run `bases[t]..bases[t] + ow` lies inside `planes` (shifted).
        Isa::Avx512 => return unsafe { x86::row_avx512(planes, bases, w, bias, dst) },
        // SAFETY: as above, with AVX2 and FMA detected.
        Isa::Avx2 => return unsafe { x86::row_avx2(planes, bases, w, bias, dst) },
        Isa::Scalar => {}
    }
    let _ = isa;
    row_scalar(planes, bases, 0, w, bias, dst)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU supports AVX-512F, and `bases[t] + dst.len() <= planes.len()` for every tap.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn row_avx512(
        planes: &[f32],
        bases: &[usize],
        w: &[f32],
        bias: f32,
        dst: &mut [f32],
    ) {
        let ow = dst.len();
        let p = planes.as_ptr();
        let d = dst.as_mut_ptr();
        let mut ox = 0;
        while ox + 32 <= ow {
            let mut a0 = _mm512_set1_ps(bias);
            let mut a1 = a0;
            for (&b, &wt) in bases.iter().zip(w) {
                let wv = _mm512_set1_ps(wt);
                // SAFETY: b + ox + 32 <= b + ow <= planes.len().
                let src = unsafe { p.add(b + ox) };
                a0 = _mm512_fmadd_ps(unsafe { _mm512_loadu_ps(src) }, wv, a0);
                a1 = _mm512_fmadd_ps(unsafe { _mm512_loadu_ps(src.add(16)) }, wv, a1);
            }
            // SAFETY: ox + 32 <= ow = dst.len().
            unsafe {
                _mm512_storeu_ps(d.add(ox), a0);
                _mm512_storeu_ps(d.add(ox + 16), a1);
            }
            ox += 32;
        }
        while ox < ow {
            let n = (ow - ox).min(16);
            let m: __mmask16 = if n == 16 { 0xffff } else { (1u16 << n) - 1 };
            let mut a = _mm512_set1_ps(bias);
            for (&b, &wt) in bases.iter().zip(w) {
                // SAFETY: the mask limits the load to lanes below b + ow <= planes.len().
                let v = unsafe { _mm512_maskz_loadu_ps(m, p.add(b + ox)) };
                a = _mm512_fmadd_ps(v, _mm512_set1_ps(wt), a);
            }
            // SAFETY: the mask limits the store to lanes below ow = dst.len().
            unsafe { _mm512_mask_storeu_ps(d.add(ox), m, a) };
            ox += n;
        }
    }

    /// # Safety
    /// The CPU supports AVX2 and FMA, and `bases[t] + dst.len() <= planes.len()` for every tap.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn row_avx2(planes: &[f32], bases: &[usize], w: &[f32], bias: f32, dst: &mut [f32]) {
        let ow = dst.len();
        let p = planes.as_ptr();
        let d = dst.as_mut_ptr();
        let mut ox = 0;
        while ox + 16 <= ow {
            let mut a0 = _mm256_set1_ps(bias);
            let mut a1 = a0;
            for (&b, &wt) in bases.iter().zip(w) {
                let wv = _mm256_set1_ps(wt);
                // SAFETY: b + ox + 16 <= b + ow <= planes.len().
                let src = unsafe { p.add(b + ox) };
                a0 = _mm256_fmadd_ps(unsafe { _mm256_loadu_ps(src) }, wv, a0);
                a1 = _mm256_fmadd_ps(unsafe { _mm256_loadu_ps(src.add(8)) }, wv, a1);
            }
            // SAFETY: ox + 16 <= ow = dst.len().
            unsafe {
                _mm256_storeu_ps(d.add(ox), a0);
                _mm256_storeu_ps(d.add(ox + 8), a1);
            }
            ox += 16;
        }
        while ox < ow {
            let mut a = bias;
            for (&b, &wt) in bases.iter().zip(w) {
                // SAFETY: b + ox < b + ow <= planes.len().
                a += unsafe { *p.add(b + ox) } * wt;
            }
            // SAFETY: ox < ow = dst.len().
            unsafe { *d.add(ox) = a };
            ox += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_isa_matches_reference(c in 1usize..5, mult in 1usize..3, k in 1usize..6, s in 1usize..4,
                                       pad in 0usize..3, dil in 1usize..3, h in 1usize..13, w in 1usize..13,
                                       seed in any::<u64>(), act in 0usize..3) {
            let pad = pad.min(k - 1);
            let h = h.max((dil * (k - 1) + 1).saturating_sub(2 * pad)).max(1);
            let w = w.max((dil * (k - 1) + 1).saturating_sub(2 * pad)).max(1);
            let p = Conv2dParams { in_channels: c, out_channels: c * mult, kernel: [k, k], stride: [s, s],
                                   padding: [pad, pad], dilation: [dil, dil], groups: c };
            let x = reference::pseudo_random(c * h * w, seed);
            let wt = reference::pseudo_random(p.weight_len(), seed ^ 5);
            let b = reference::pseudo_random(c * mult, seed ^ 6);
            let act = [None, Some(Activation::Relu6), Some(Activation::Hardswish)][act];
            let (mut want, oh, ow) = reference::conv2d(&p, &x, 1, h, w, &wt, Some(&b)).unwrap();
            if let Some(a) = act { want.iter_mut().for_each(|v| *v = a.apply_scalar(*v)); }
            for isa in isa::available() {
                let mut y = vec![f32::NAN; want.len()];
                depthwise_isa(isa, &p, &wt, Some(&b), act, &x, h, w, &mut y, oh, ow);
                for (a, b) in y.iter().zip(&want) {
                    prop_assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{isa:?}: {a} vs {b}");
                }
            }
        }
    }
}
