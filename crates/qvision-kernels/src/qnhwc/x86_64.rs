//! AVX-512 VNNI int8 micro-kernel: `MR` output pixels x `NB` vectors of 16 output channels.

use super::{Fused, TileRows, MR, NBLK};
use std::arch::x86_64::*;

/// A smooth activation in real units on 16 lanes of output units: `f(y * s) / s`, through
/// the portable loop (vectorised here), the same sequence as `requant_row_body`.
#[inline(always)]
fn smooth_act(y: __m512, act: Option<(crate::Activation, f32)>) -> __m512 {
    let Some((a, s)) = act else { return y };
    let mut buf = [0f32; 16];
    // SAFETY: 16 floats fit `buf`.
    unsafe { _mm512_storeu_ps(buf.as_mut_ptr(), y) };
    let inv = 1.0 / s;
    buf.iter_mut().for_each(|v| *v *= s);
    crate::act::apply_slice_body(&mut buf, a);
    buf.iter_mut().for_each(|v| *v *= inv);
    // SAFETY: as above.
    unsafe { _mm512_loadu_ps(buf.as_ptr()) }
}

/// Requantize 16 accumulators (already shifted) into output units (as i32):
/// `y = a * mult [+ (r - zr) * mr]`, the smooth activation, clamp, round half to even, + zo.
/// Without `LO` the lower clamp is left to the caller's saturating narrowing (valid where the
/// lower bound is the zero point's, `-zo`: rounding and adding `zo` keeps every value below it
/// at or below 0).
///
/// # Safety
/// AVX-512F/BW/VL (and FMA for the activation) are available; the residual has the masked
/// lanes' bytes.
#[inline(always)]
unsafe fn requant<const LO: bool>(
    a: __m512i,
    mult: __m512,
    residual: Option<(*const u8, i32, f32)>,
    act: Option<(crate::Activation, f32)>,
    (lo, hi, zo): (__m512, __m512, __m512i),
    m: __mmask16,
) -> __m512i {
    let mut y = _mm512_mul_ps(_mm512_cvtepi32_ps(a), mult);
    if let Some((r, zr, mr)) = residual {
        // SAFETY: the caller guarantees the residual's masked bytes.
        let rb = unsafe { _mm_maskz_loadu_epi8(m, r.cast()) };
        let rv = _mm512_sub_epi32(_mm512_cvtepu8_epi32(rb), _mm512_set1_epi32(zr));
        y = _mm512_add_ps(y, _mm512_mul_ps(_mm512_cvtepi32_ps(rv), _mm512_set1_ps(mr)));
    }
    let y = smooth_act(y, act);
    let y = if LO { _mm512_max_ps(y, lo) } else { y };
    _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_min_ps(y, hi)), zo)
}

/// [`requant`] with both clamps, then store the bytes of the `m` lanes.
///
/// # Safety
/// As [`requant`]; the output has the masked lanes' bytes.
#[inline(always)]
unsafe fn requant_store(
    a: __m512i,
    mult: __m512,
    residual: Option<(*const u8, i32, f32)>,
    act: Option<(crate::Activation, f32)>,
    bounds: (__m512, __m512, __m512i),
    m: __mmask16,
    out: *mut u8,
) {
    // SAFETY: the caller's contract.
    let q = unsafe { requant::<true>(a, mult, residual, act, bounds, m) };
    // SAFETY: the caller guarantees the output's masked bytes.
    unsafe { _mm_mask_storeu_epi8(out.cast(), m, _mm512_cvtusepi32_epi8(q)) };
}

/// Four vectors of output units as 64 bytes in column order, saturated to 0..=255 (two
/// signed packs, one unsigned pack and a lane permute instead of four narrowing moves).
///
/// # Safety
/// AVX-512F/BW are available.
#[inline(always)]
unsafe fn narrow4(q: [__m512i; 4]) -> __m512i {
    // SAFETY: register-only intrinsics of features the caller guarantees.
    unsafe {
        // per 128-bit lane l the packs give the dwords q0[4l..], q1[4l..], q2[4l..], q3[4l..]
        let lo = _mm512_packs_epi32(q[0], q[1]);
        let hi = _mm512_packs_epi32(q[2], q[3]);
        let p = _mm512_packus_epi16(lo, hi);
        let idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        _mm512_permutexvar_epi32(idx, p)
    }
}

/// Four activation bytes as one i32 lane value; the last quad of a tap may be partial (its
/// weights are zero, but only `len` bytes may be read).
#[inline(always)]
unsafe fn quad(p: *const u8, len: usize) -> i32 {
    // SAFETY: the caller guarantees `len` (1..=4) readable bytes at `p`.
    unsafe {
        if len >= 4 {
            (p as *const i32).read_unaligned()
        } else {
            let mut v = [0u8; 4];
            std::ptr::copy_nonoverlapping(p, v.as_mut_ptr(), len);
            i32::from_le_bytes(v)
        }
    }
}

/// [`tile_vnni`] for `R` wanted rows, on a block of `nb` (1..=4) vectors.
///
/// # Safety
/// As [`tile_vnni`], with `a.valid == R`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
pub(crate) unsafe fn tile_vnni_rows<const R: usize>(
    a: &TileRows<'_>,
    b: &[i8],
    nb: usize,
    acc: &mut [i32; MR * NBLK],
    fused: Option<&Fused>,
) {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        match nb {
            1 => tile_vnni::<R, 1>(a, b, acc, fused),
            2 => tile_vnni::<R, 2>(a, b, acc, fused),
            3 => tile_vnni::<R, 3>(a, b, acc, fused),
            _ => tile_vnni::<R, 4>(a, b, acc, fused),
        }
    }
}

/// `R` rows x `NB` vectors of 16 output channels: per group of four input channels, `NB`
/// weight loads, `R` broadcasts and `R * NB` `vpdpbusd`; skipped taps are passed over.
///
/// # Safety
/// The CPU supports AVX-512F/BW/VL/VNNI; `a.rows[t * MR + i]` has `a.cin` readable bytes for
/// every live tap `t < a.taps` and row `i < R`; `b` holds `a.taps * ceil(cin/4) * NB * 64`
/// packed bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
#[inline(never)]
unsafe fn tile_vnni<const R: usize, const NB: usize>(
    a: &TileRows<'_>,
    b: &[i8],
    acc: &mut [i32; MR * NBLK],
    fused: Option<&Fused>,
) {
    let mut c = [[_mm512_setzero_si512(); NB]; R];
    if let Some(f) = fused {
        // start from the per-column shift (`bias - za·colsum`), which the epilogue would add
        for j in 0..NB {
            // SAFETY: the mask limits the load to the `width` valid columns of `shift`.
            let sv = unsafe {
                _mm512_maskz_loadu_epi32(lane_mask(f.width, j), f.shift.add(j * 16).cast())
            };
            for ci in c.iter_mut() {
                ci[j] = sv;
            }
        }
    }
    let TileRows {
        rows, taps, cin, ..
    } = *a;
    let full = cin / 4;
    let tail = cin % 4;
    let tap_bytes = cin.div_ceil(4) * NB * 64;
    let mut bp = b.as_ptr();
    for t in 0..taps {
        if !a.live(t) {
            // SAFETY: the next tap's groups start inside (or one past) the packed block.
            bp = unsafe { bp.add(tap_bytes) };
            continue;
        }
        let mut r = [std::ptr::null::<u8>(); R];
        for (i, p) in r.iter_mut().enumerate() {
            *p = rows[t * MR + i].0;
        }
        for g in 0..full + usize::from(tail > 0) {
            let len = if g < full { 4 } else { tail };
            let mut bv = [_mm512_setzero_si512(); NB];
            for (j, v) in bv.iter_mut().enumerate() {
                // SAFETY: group g of tap t lies inside the packed block (see the contract).
                *v = unsafe { _mm512_loadu_si512(bp.add(j * 64).cast()) };
            }
            for i in 0..R {
                // SAFETY: bytes 4g..4g+len of tap t of row i are readable.
                let x = _mm512_set1_epi32(unsafe { quad(r[i].add(4 * g), len) });
                for j in 0..NB {
                    c[i][j] = _mm512_dpbusd_epi32(c[i][j], x, bv[j]);
                }
            }
            // SAFETY: stays within (or one past) the packed block.
            bp = unsafe { bp.add(NB * 64) };
        }
    }
    if let Some(f) = fused {
        // SAFETY: same CPU features; `f` describes the R valid output rows (see `Fused`).
        unsafe { epilogue::<R, NB>(c, f) };
        return;
    }
    for (i, ci) in c.iter().enumerate() {
        for (j, v) in ci.iter().enumerate() {
            // SAFETY: row i, vector j lies inside the `MR x NBLK` accumulator array.
            unsafe { _mm512_storeu_si512(acc.as_mut_ptr().add(i * NBLK + j * 16).cast(), *v) };
        }
    }
}

/// The lanes of 16-column vector `j` that fall inside `width` columns.
#[inline(always)]
fn lane_mask(width: usize, j: usize) -> __mmask16 {
    let valid = width.saturating_sub(j * 16).min(16);
    if valid == 16 {
        0xffff
    } else {
        ((1u32 << valid) - 1) as u16
    }
}

/// The requantization of a tile's accumulators (which started from the shift), straight from
/// the registers.
///
/// # Safety
/// AVX-512F/BW/VL are available; `f`'s pointers have `f.width` valid columns for `R` rows.
#[inline(always)]
unsafe fn epilogue<const R: usize, const NB: usize>(c: [[__m512i; NB]; R], f: &Fused) {
    // The same IEEE sequence as `requant_row_body`: (acc + shift) * mult (the shift is already
    // in the accumulators) [+ (r - zr) * mr], clamp, round half to even (MXCSR default), + zo.
    debug_assert_eq!(f.rows, R);
    let (lo, hi) = (_mm512_set1_ps(f.lo), _mm512_set1_ps(f.hi));
    let zo = _mm512_set1_epi32(f.zo);
    let mut masks = [0u16; NB];
    let mut mult = [_mm512_setzero_ps(); NB];
    for j in 0..NB {
        masks[j] = lane_mask(f.width, j);
        // SAFETY: the mask limits the load to the `width` valid columns of mult.
        mult[j] = unsafe { _mm512_maskz_loadu_ps(masks[j], f.mult.add(j * 16)) };
    }
    if NB == 4 && f.width == NBLK && f.lo == -(f.zo as f32) {
        // a whole block whose lower clamp is the narrowing's saturation at 0: each row's 64
        // bytes in one store
        for (i, ci) in c.iter().enumerate() {
            let mut q = [_mm512_setzero_si512(); 4];
            // the row's residual pointer, read once (mapping the whole `Fused::residual` per
            // vector copied its pointer array through the stack)
            let rrow = f.residual.as_ref().map(|&(ref r, zr, mr)| (r[i], zr, mr));
            for j in 0..4 {
                let res = rrow.map(|(r, zr, mr)| (r.wrapping_add(j * 16), zr, mr));
                // SAFETY: residual row i has `width` = 64 valid bytes at this offset.
                q[j] = unsafe { requant::<false>(ci[j], mult[j], res, f.act, (lo, hi, zo), !0) };
            }
            // SAFETY: output row i has 64 valid bytes here, owned by this tile.
            unsafe { _mm512_storeu_si512(f.out[i].cast(), narrow4(q)) };
        }
        return;
    }
    for (i, ci) in c.iter().enumerate() {
        let rrow = f.residual.as_ref().map(|&(ref r, zr, mr)| (r[i], zr, mr));
        for j in 0..NB {
            let res = rrow.map(|(r, zr, mr)| (r.wrapping_add(j * 16), zr, mr));
            // SAFETY: output (and residual) row i has `width` valid bytes at this offset, owned
            // by this tile; the mask limits the accesses to them.
            unsafe {
                requant_store(
                    ci[j],
                    mult[j],
                    res,
                    f.act,
                    (lo, hi, zo),
                    masks[j],
                    f.out[i].add(j * 16),
                )
            };
        }
    }
}

/// One output pixel of a depthwise conv, all channels: `taps[t]` points at the input pixel of
/// tap `t` (channel 0), or at a buffer of the input zero point for padding, so the full
/// zero-point correction sits in `shift`.
pub(crate) struct DwPixel<'a> {
    pub taps: &'a [*const u8],
    pub c: usize,
    /// `[tap][channel]` weights.
    pub w: &'a [i32],
    /// `bias - za * sum over taps of w`.
    pub shift: &'a [i32],
    pub mult: &'a [f32],
    pub lo: f32,
    pub hi: f32,
    pub zo: i32,
    pub residual: Option<(*const u8, i32, f32)>,
    /// A smooth activation and the output scale (ReLU / ReLU6 are in `lo` / `hi`).
    pub act: Option<(crate::Activation, f32)>,
    pub out: *mut u8,
}

/// # Safety
/// AVX-512F/BW/VL are available; every tap pointer has `c` readable bytes, `w` holds
/// `taps.len() * c` values, `shift`/`mult` `c` values, `out` (and the residual) `c` bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(crate) unsafe fn dw_pixel(p: &DwPixel<'_>) {
    let (lo, hi) = (_mm512_set1_ps(p.lo), _mm512_set1_ps(p.hi));
    let zo = _mm512_set1_epi32(p.zo);
    let mut c0 = 0;
    while c0 < p.c {
        let valid = (p.c - c0).min(16);
        let m: __mmask16 = if valid == 16 {
            0xffff
        } else {
            ((1u32 << valid) - 1) as u16
        };
        // SAFETY (all loads and stores below): the mask limits every access to the `valid`
        // channels from c0, inside the ranges the caller guarantees.
        unsafe {
            let mut a = _mm512_maskz_loadu_epi32(m, p.shift.as_ptr().add(c0).cast());
            for (t, &x) in p.taps.iter().enumerate() {
                let xv = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, x.add(c0).cast()));
                let wv = _mm512_maskz_loadu_epi32(m, p.w.as_ptr().add(t * p.c + c0).cast());
                a = _mm512_add_epi32(a, _mm512_mullo_epi32(xv, wv));
            }
            let mv = _mm512_maskz_loadu_ps(m, p.mult.as_ptr().add(c0));
            let res = p.residual.map(|(r, zr, mr)| (r.add(c0), zr, mr));
            requant_store(a, mv, res, p.act, (lo, hi, zo), m, p.out.add(c0));
        }
        c0 += 16;
    }
}

/// A run of interior output pixels of one depthwise output row (every tap inside the input
/// columns): `rows[ky]` is the start of input row `ky` (or of a zero-point row for padding).
pub(crate) struct DwRun<'a> {
    pub rows: [*const u8; 7],
    pub c: usize,
    pub stride: usize,
    pub dilation: usize,
    pub pad: usize,
    pub ox0: usize,
    pub ox1: usize,
    /// `[tap][channel]` weights.
    pub w: &'a [i32],
    /// `bias - za * sum over taps of w`.
    pub shift: &'a [i32],
    pub mult: &'a [f32],
    pub lo: f32,
    pub hi: f32,
    pub zo: i32,
    /// Start of the residual's output row.
    pub residual: Option<(*const u8, i32, f32)>,
    pub act: Option<(crate::Activation, f32)>,
    /// Start of the output row.
    pub out: *mut u8,
}

/// # Safety
/// AVX-512F/BW/VL, AVX2 and FMA are available; `K <= 7`; every row pointer has a full input
/// row (`(ox1 - 1) * stride + (K - 1) * dilation - pad < width` pixels of `c` bytes) for
/// `ox0 * stride >= pad`; `w` holds `K * K * c` values, `shift`/`mult` `c`, and the output and
/// residual rows `ox1 * c` bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(crate) unsafe fn dw_run<const K: usize>(p: &DwRun<'_>) {
    let (lo, hi) = (_mm512_set1_ps(p.lo), _mm512_set1_ps(p.hi));
    let zo = _mm512_set1_epi32(p.zo);
    let c = p.c;
    let mut c0 = 0;
    while c0 < c {
        let valid = (c - c0).min(16);
        let m: __mmask16 = if valid == 16 {
            0xffff
        } else {
            ((1u32 << valid) - 1) as u16
        };
        // SAFETY (all loads and stores below): the mask keeps every access inside the `valid`
        // channels from c0 of the ranges the caller guarantees.
        unsafe {
            let mut wv = [[_mm512_setzero_si512(); K]; K];
            for (ky, row) in wv.iter_mut().enumerate() {
                for (kx, v) in row.iter_mut().enumerate() {
                    *v = _mm512_maskz_loadu_epi32(
                        m,
                        p.w.as_ptr().add((ky * K + kx) * c + c0).cast(),
                    );
                }
            }
            let shift = _mm512_maskz_loadu_epi32(m, p.shift.as_ptr().add(c0).cast());
            let mv = _mm512_maskz_loadu_ps(m, p.mult.as_ptr().add(c0));
            for ox in p.ox0..p.ox1 {
                let mut a = shift;
                let base = ox * p.stride - p.pad;
                for (ky, row) in wv.iter().enumerate() {
                    for (kx, wk) in row.iter().enumerate() {
                        let at = (base + kx * p.dilation) * c + c0;
                        let xv = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(
                            m,
                            p.rows[ky].add(at).cast(),
                        ));
                        a = _mm512_add_epi32(a, _mm512_mullo_epi32(xv, *wk));
                    }
                }
                let res = p.residual.map(|(r, zr, mr)| (r.add(ox * c + c0), zr, mr));
                requant_store(a, mv, res, p.act, (lo, hi, zo), m, p.out.add(ox * c + c0));
            }
        }
        c0 += 16;
    }
}

/// The AVX-VNNI tile: the same work as [`tile_vnni`] on 256-bit registers, one group of 16
/// output channels (two vectors) at a time, 6 rows x 2 accumulators; the portable epilogue
/// requantizes the stored sums.
///
/// # Safety
/// The CPU supports AVX-VNNI and AVX2; `a.rows[t * MR + i]` has `a.cin` readable bytes for every
/// live tap and row; `b` holds the block: `taps * ceil(cin/4)` groups of `nb * 16` columns x 4
/// bytes.
#[target_feature(enable = "avxvnni,avx2,fma")]
pub(crate) unsafe fn tile_avxvnni(
    a: &TileRows<'_>,
    b: &[i8],
    nb: usize,
    acc: &mut [i32; MR * NBLK],
) {
    let cin = a.cin;
    let (full, tail) = (cin / 4, cin % 4);
    let quads = cin.div_ceil(4);
    let width = nb * 16;
    for v in 0..nb {
        let mut c = [[_mm256_setzero_si256(); 2]; MR];
        for t in (0..a.taps).filter(|&t| a.live(t)) {
            let mut r = [std::ptr::null::<u8>(); MR];
            for (i, p) in r.iter_mut().enumerate() {
                *p = a.rows[t * MR + i].0;
            }
            for g in 0..quads {
                let len = if g < full { 4 } else { tail };
                // SAFETY: group (t, g), columns v*16..v*16+16 lie inside the packed block.
                let (b0, b1) = unsafe {
                    let bp = b.as_ptr().add(((t * quads + g) * width + v * 16) * 4);
                    (
                        _mm256_loadu_si256(bp.cast()),
                        _mm256_loadu_si256(bp.add(32).cast()),
                    )
                };
                for (i, ci) in c.iter_mut().enumerate().take(a.valid) {
                    // SAFETY: bytes 4g..4g+len of tap t of row i are readable.
                    let x = _mm256_set1_epi32(unsafe { quad(r[i].add(4 * g), len) });
                    ci[0] = _mm256_dpbusd_avx_epi32(ci[0], x, b0);
                    ci[1] = _mm256_dpbusd_avx_epi32(ci[1], x, b1);
                }
            }
        }
        for (i, ci) in c.iter().enumerate() {
            for (h, x) in ci.iter().enumerate() {
                // SAFETY: row i, columns v*16 + h*8 .. +8 lie inside the accumulator array.
                unsafe {
                    _mm256_storeu_si256(acc.as_mut_ptr().add(i * NBLK + v * 16 + h * 8).cast(), *x)
                };
            }
        }
    }
}

/// Depthwise weights for [`dw_run_paired`]: taps in pairs, 32 channels per chunk, in the lane
/// order `vpunpck{l,h}wd` + `vpmaddwd` produce (lo: channels 8L..8L+3 of each 128-bit lane L,
/// hi: 8L+4..8L+7), with the shift and multiplier in the same order.
#[derive(Debug)]
pub(crate) struct PairedDw {
    pub chunks: usize,
    pub pairs: usize,
    /// `[chunk][pair][lo 32 | hi 32]` i16: (w[t0][c], w[t1][c]) interleaved.
    pub w: Vec<i16>,
    /// `[chunk][lo 16 | hi 16]`.
    pub shift: Vec<i32>,
    pub mult: Vec<f32>,
}

impl PairedDw {
    /// The channel of lane `k` (0..16) of the lo (`hi = false`) or hi vector.
    fn channel(k: usize, hi: bool) -> usize {
        8 * (k / 4) + k % 4 + if hi { 4 } else { 0 }
    }

    /// From `[tap][channel]` weights and per-channel shift / multiplier.
    pub fn new(w: &[i32], taps: usize, c: usize, shift: &[i32], mult: &[f32]) -> Self {
        let chunks = c.div_ceil(32);
        let pairs = taps.div_ceil(2);
        let mut pw = vec![0i16; chunks * pairs * 64];
        let mut ps = vec![0i32; chunks * 32];
        let mut pm = vec![0f32; chunks * 32];
        for ch in 0..chunks {
            for (h, hi) in [false, true].into_iter().enumerate() {
                for k in 0..16 {
                    let cc = ch * 32 + Self::channel(k, hi);
                    if cc >= c {
                        continue;
                    }
                    ps[ch * 32 + h * 16 + k] = shift[cc];
                    pm[ch * 32 + h * 16 + k] = mult[cc];
                    for p in 0..pairs {
                        let at = (ch * pairs + p) * 64 + h * 32 + 2 * k;
                        pw[at] = w[(2 * p) * c + cc] as i16;
                        if 2 * p + 1 < taps {
                            pw[at + 1] = w[(2 * p + 1) * c + cc] as i16;
                        }
                    }
                }
            }
        }
        PairedDw {
            chunks,
            pairs,
            w: pw,
            shift: ps,
            mult: pm,
        }
    }
}

/// [`dw_run`] with two taps per `vpmaddwd` (u8 inputs widened to i16, s8 weights as i16: exact
/// i32 sums), 32 channels per chunk.
///
/// # Safety
/// As [`dw_run`]; `pd` was built for this conv's weights, taps (`K * K`) and channels.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(crate) unsafe fn dw_run_paired<const K: usize>(p: &DwRun<'_>, pd: &PairedDw) {
    let (lo, hi) = (_mm512_set1_ps(p.lo), _mm512_set1_ps(p.hi));
    let zo = _mm512_set1_epi32(p.zo);
    let c = p.c;
    let taps = K * K;
    let zero = _mm512_setzero_si512();
    for ch in 0..pd.chunks {
        let c0 = ch * 32;
        let valid = (c - c0).min(32);
        let m: __mmask32 = if valid == 32 { !0 } else { (1u32 << valid) - 1 };
        // SAFETY (all accesses below): the chunk's packed weights, shifts and multipliers lie in
        // `pd`; input, residual and output accesses are masked to the `valid` channels of rows
        // the caller guarantees.
        unsafe {
            let wb = pd.w.as_ptr().add(ch * pd.pairs * 64);
            let sl = _mm512_loadu_si512(pd.shift.as_ptr().add(ch * 32).cast());
            let sh = _mm512_loadu_si512(pd.shift.as_ptr().add(ch * 32 + 16).cast());
            let ml = _mm512_loadu_ps(pd.mult.as_ptr().add(ch * 32));
            let mh = _mm512_loadu_ps(pd.mult.as_ptr().add(ch * 32 + 16));
            // the tap loop's bounds are compile-time (K), so it unrolls and each tap's row and
            // column offset is a constant multiple of the dilation step
            debug_assert_eq!(pd.pairs, (K * K).div_ceil(2));
            let dc = p.dilation * c;
            for ox in p.ox0..p.ox1 {
                let at0 = (ox * p.stride - p.pad) * c + c0;
                let tap = |t: usize| {
                    let at = at0 + (t % K) * dc;
                    _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(m, p.rows[t / K].add(at).cast()))
                };
                let (mut al, mut ah) = (sl, sh);
                for pi in 0..(K * K).div_ceil(2) {
                    let xa = tap(2 * pi);
                    let xb = if 2 * pi + 1 < taps {
                        tap(2 * pi + 1)
                    } else {
                        zero
                    };
                    let wl = _mm512_loadu_si512(wb.add(pi * 64).cast());
                    let wh = _mm512_loadu_si512(wb.add(pi * 64 + 32).cast());
                    al = _mm512_add_epi32(al, _mm512_madd_epi16(_mm512_unpacklo_epi16(xa, xb), wl));
                    ah = _mm512_add_epi32(ah, _mm512_madd_epi16(_mm512_unpackhi_epi16(xa, xb), wh));
                }
                let mut yl = _mm512_mul_ps(_mm512_cvtepi32_ps(al), ml);
                let mut yh = _mm512_mul_ps(_mm512_cvtepi32_ps(ah), mh);
                if let Some((r, zr, mr)) = p.residual {
                    let r16 =
                        _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(m, r.add(ox * c + c0).cast()));
                    let (zr, mr) = (_mm512_set1_epi32(zr), _mm512_set1_ps(mr));
                    let rl = _mm512_sub_epi32(_mm512_unpacklo_epi16(r16, zero), zr);
                    let rh = _mm512_sub_epi32(_mm512_unpackhi_epi16(r16, zero), zr);
                    yl = _mm512_add_ps(yl, _mm512_mul_ps(_mm512_cvtepi32_ps(rl), mr));
                    yh = _mm512_add_ps(yh, _mm512_mul_ps(_mm512_cvtepi32_ps(rh), mr));
                }
                let yl = _mm512_min_ps(_mm512_max_ps(smooth_act(yl, p.act), lo), hi);
                let yh = _mm512_min_ps(_mm512_max_ps(smooth_act(yh, p.act), lo), hi);
                let ql = _mm512_add_epi32(_mm512_cvtps_epi32(yl), zo);
                let qh = _mm512_add_epi32(_mm512_cvtps_epi32(yh), zo);
                // per lane: lo's 4 channels then hi's 4 = channels 8L..8L+7 in order
                let q16 = _mm512_packs_epi32(ql, qh);
                _mm256_mask_storeu_epi8(
                    p.out.add(ox * c + c0).cast(),
                    m,
                    _mm512_cvtepi16_epi8(q16),
                );
            }
        }
    }
}

/// Weights of a grouped conv whose groups have `cg` = 4 or 8 input and output channels
/// (ResNeXt's first two stages) for [`grouped_pixels`]: per 16 output channels (`v`), tap and
/// quad `q` of the group's input channels, one vector whose lane `l` holds the four weights of
/// output channel `16v + l` against input channels `4q..4q + 4` of its group. One `vpdpbusd`
/// then does a whole tap of four groups (`cg` = 4) instead of the super-group GEMM's four
/// block-diagonal ones.
#[derive(Debug)]
pub(crate) struct GroupedW {
    pub cg: usize,
    pub taps: usize,
    /// `[v][tap][q][64]`.
    pub w: Vec<i8>,
}

impl GroupedW {
    /// From PyTorch-layout weights `[co][ci (cg)][tap]` of `c` channels (`c % 16 == 0`).
    pub fn new(weight: &[i8], c: usize, cg: usize, taps: usize) -> Self {
        debug_assert!(matches!(cg, 4 | 8) && c.is_multiple_of(16));
        let quads = cg / 4;
        let mut w = vec![0i8; c / 16 * taps * quads * 64];
        for co in 0..c {
            let (v, l) = (co / 16, co % 16);
            for t in 0..taps {
                for q in 0..quads {
                    for j in 0..4 {
                        let ci = 4 * q + j;
                        w[((v * taps + t) * quads + q) * 64 + 4 * l + j] =
                            weight[(co * cg + ci) * taps + t];
                    }
                }
            }
        }
        GroupedW { cg, taps, w }
    }
}

/// `P` output pixels of a grouped conv with [`GroupedW`] weights, all `c` channels: pixel `p`'s
/// tap `t` reads `c` bytes at `taps[p * ntaps + t]` (the input pixel, channel 0, or a buffer of
/// the input zero point for padding, whose correction is in `shift`).
pub(crate) struct GroupedPixels<'a, const P: usize> {
    pub taps: &'a [*const u8],
    pub c: usize,
    pub gw: &'a GroupedW,
    /// `bias - za * sum of the channel's weights`.
    pub shift: &'a [i32],
    pub mult: &'a [f32],
    pub lo: f32,
    pub hi: f32,
    pub zo: i32,
    /// The pixels' residual bytes (channel 0) with its zero point and scale ratio.
    pub residual: Option<([*const u8; P], i32, f32)>,
    pub act: Option<(crate::Activation, f32)>,
    pub out: [*mut u8; P],
}

/// The four-byte quads of 16 input channels that the lanes of a [`GroupedW`] vector need for
/// quad `q`: lane `l` takes quad `(l / cg) * cg / 4 + q`.
#[inline(always)]
fn group_quads(cg: usize, q: usize) -> __m512i {
    let mut idx = [0i32; 16];
    for (l, v) in idx.iter_mut().enumerate() {
        *v = ((l / cg) * (cg / 4) + q) as i32;
    }
    // SAFETY: 16 i32.
    unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) }
}

/// # Safety
/// AVX-512F/BW/VL/VNNI, AVX2 and FMA are available; `c % 16 == 0`; every tap pointer has `c`
/// readable bytes and `taps.len() == P * gw.taps`; `shift` / `mult` hold `c` values; each
/// output (and residual) pointer has `c` bytes; `gw.cg` is 4 or 8.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
pub(crate) unsafe fn grouped_pixels<const P: usize>(a: &GroupedPixels<'_, P>) {
    let (lo, hi) = (_mm512_set1_ps(a.lo), _mm512_set1_ps(a.hi));
    let zo = _mm512_set1_epi32(a.zo);
    let (nt, quads) = (a.gw.taps, a.gw.cg / 4);
    let idx = [group_quads(a.gw.cg, 0), group_quads(a.gw.cg, 1)];
    let wp = a.gw.w.as_ptr();
    for v in 0..a.c / 16 {
        // SAFETY (all accesses below): vector v's 16 channels lie inside the `c` bytes / values
        // the caller guarantees for every pointer and slice; the weights hold
        // `c / 16 * taps * quads` vectors.
        unsafe {
            let shift = _mm512_loadu_si512(a.shift.as_ptr().add(16 * v).cast());
            let mut acc = [shift; P];
            for t in 0..nt {
                let mut xin = [_mm512_setzero_si512(); P];
                for (p, x) in xin.iter_mut().enumerate() {
                    let bytes = _mm_loadu_si128(a.taps[p * nt + t].add(16 * v).cast());
                    *x = _mm512_zextsi128_si512(bytes);
                }
                for (q, iq) in idx.iter().enumerate().take(quads) {
                    let wv = _mm512_loadu_si512(wp.add(((v * nt + t) * quads + q) * 64).cast());
                    for (ap, x) in acc.iter_mut().zip(&xin) {
                        *ap = _mm512_dpbusd_epi32(*ap, _mm512_permutexvar_epi32(*iq, *x), wv);
                    }
                }
            }
            let mv = _mm512_loadu_ps(a.mult.as_ptr().add(16 * v));
            for (p, &ap) in acc.iter().enumerate() {
                let res = a.residual.map(|(r, zr, mr)| (r[p].add(16 * v), zr, mr));
                requant_store(ap, mv, res, a.act, (lo, hi, zo), !0, a.out[p].add(16 * v));
            }
        }
    }
}
