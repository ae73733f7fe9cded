//! Int8 (u8, affine) kernels besides convolution, on NHWC activations: quantize / dequantize
//! with the layout change, add and multiply with requantization, lookup-table activations and
//! requantization, max / average / adaptive-average pooling, and channel gathers (concat, split,
//! shuffle). Each takes explicit shapes and reports bad ones as errors.
//!
//! A quantized value `q` with `(scale, zero_point)` stands for `(q - zero_point) * scale`; every
//! result is rounded half to even and clamped to `0..=255`.

use crate::isa;
use crate::pool::Pool2dParams;
use crate::round_u8;
use crate::{shape_err, Activation, KernelError};
use rayon::prelude::*;

/// Quantization parameters of a u8 tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Q {
    pub scale: f32,
    pub zero_point: i32,
}

impl Q {
    pub fn new(scale: f32, zero_point: i32) -> Self {
        Q { scale, zero_point }
    }

    #[inline(always)]
    fn quantize(self, v: f32) -> u8 {
        to_byte(v / self.scale, self.zero_point)
    }
}

/// A value already in quantized units (`x / scale`) as a byte: clamped to the u8 range around
/// the zero point, rounded half to even.
#[inline(always)]
fn to_byte(t: f32, zero_point: i32) -> u8 {
    let z = zero_point as f32;
    round_u8(t.max(-z).min(255.0 - z), zero_point)
}

const CHUNK: usize = 1 << 14;

#[inline(always)]
fn quantize_body(x: &[f32], q: Q, out: &mut [u8]) {
    let inv = 1.0 / q.scale;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = to_byte(v * inv, q.zero_point);
    }
}
crate::isa::multiversion!(fn quantize_slice(x: &[f32], q: Q, out: &mut [u8]) => quantize_body);

#[inline(always)]
fn dequantize_body(x: &[u8], q: Q, out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v as i32 - q.zero_point) as f32 * q.scale;
    }
}
crate::isa::multiversion!(fn dequantize_slice(x: &[u8], q: Q, out: &mut [f32]) => dequantize_body);

/// f32 to u8 keeping the layout (`x * (1/scale)`, as PyTorch's `quantize_per_tensor`).
pub fn quantize(x: &[f32], q: Q) -> Vec<u8> {
    let isa = isa::current();
    let mut out = qvision_tensor::pool::take_u8(x.len());
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, s)| quantize_slice(isa, s, q, o));
    out
}

/// u8 to f32 keeping the layout.
pub fn dequantize(x: &[u8], q: Q) -> Vec<f32> {
    let isa = isa::current();
    let mut out = qvision_tensor::pool::take(x.len());
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, s)| dequantize_slice(isa, s, q, o));
    out
}

/// One row of a [`layer_norm`]: the mean and variance from exact integer sums of the bytes (in
/// f64), then per element `((q - mean_q) * s_in / sigma) * gamma + beta`, quantized.
#[inline(always)]
fn layer_norm_row_body(x: &[u8], a: &LnArgs<'_>, out: &mut [u8]) {
    let len = x.len();
    let s1: u64 = x.iter().map(|&v| v as u64).sum();
    let s2: u64 = x.iter().map(|&v| (v as u32 * v as u32) as u64).sum();
    let n = len as f64;
    let mean_q = s1 as f64 / n;
    let var_q = (s2 as f64 / n - mean_q * mean_q).max(0.0);
    let si = a.input.scale as f64;
    let k = (si / (si * si * var_q + a.eps as f64).sqrt()) as f32;
    let mq = mean_q as f32;
    let inv = 1.0 / a.output.scale;
    for (((o, &v), &g), &b) in out.iter_mut().zip(x).zip(a.gamma).zip(a.beta) {
        let y = (v as f32 - mq) * k * g + b;
        *o = to_byte(y * inv, a.output.zero_point);
    }
}

/// The affine and quantization of a [`layer_norm`].
struct LnArgs<'a> {
    gamma: &'a [f32],
    beta: &'a [f32],
    eps: f32,
    input: Q,
    output: Q,
}

crate::isa::multiversion!(fn layer_norm_row(x: &[u8], a: &LnArgs<'_>, out: &mut [u8]) => layer_norm_row_body);

/// LayerNorm over the last axis (rows of `gamma.len()` bytes) from u8 to u8, PyTorch's biased
/// variance: ConvNeXt's channels-last norm without a float copy of the tensor.
pub fn layer_norm(
    x: &[u8],
    input: Q,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    output: Q,
) -> Result<Vec<u8>, KernelError> {
    let len = gamma.len();
    if len == 0 || beta.len() != len || !x.len().is_multiple_of(len) {
        return Err(shape_err(
            "layer_norm (int8)",
            format!("normalised size {len} does not match the input or affine"),
        ));
    }
    let isa = isa::current();
    let a = LnArgs {
        gamma,
        beta,
        eps,
        input,
        output,
    };
    let mut out = qvision_tensor::pool::take_u8(x.len());
    let rows = (CHUNK / len).max(1);
    out.par_chunks_mut(rows * len)
        .zip(x.par_chunks(rows * len))
        .for_each(|(o, s)| {
            for (or, sr) in o.chunks_exact_mut(len).zip(s.chunks_exact(len)) {
                layer_norm_row(isa, sr, &a, or);
            }
        });
    Ok(out)
}

/// NCHW f32 to NHWC u8.
pub fn quantize_to_nhwc(
    x: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    q: Q,
) -> Result<Vec<u8>, KernelError> {
    if x.len() != n * c * hw {
        return Err(shape_err(
            "quantize",
            format!("input has {} values, want {n}x{c}x{hw}", x.len()),
        ));
    }
    let mut out = qvision_tensor::pool::take_u8(x.len());
    if out.is_empty() {
        return Ok(out);
    }
    let isa = isa::current();
    // parallel runs of 1024 pixels of one image, each transposed in tiles of 64 pixels
    const RUN: usize = 1024;
    out.par_chunks_mut(hw * c).enumerate().for_each(|(b, ob)| {
        let xb = &x[b * c * hw..(b + 1) * c * hw];
        ob.par_chunks_mut(RUN * c).enumerate().for_each(|(r, o)| {
            let t = NhwcTile {
                x: xb,
                hw,
                c,
                p0: r * RUN,
                q,
            };
            quantize_tile(isa, &t, o);
        });
    });
    Ok(out)
}

/// Pixels `p0..` of one NCHW image (`c` planes of `hw`), for [`quantize_to_nhwc`].
struct NhwcTile<'a> {
    x: &'a [f32],
    hw: usize,
    c: usize,
    p0: usize,
    q: Q,
}

#[inline(always)]
fn quantize_tile_body(t: &NhwcTile<'_>, out: &mut [u8]) {
    match t.c {
        3 => quantize_planes::<3>(t, out),
        4 => quantize_planes::<4>(t, out),
        1 => quantize_planes::<1>(t, out),
        _ => {
            let c = t.c;
            let len = out.len() / c;
            // per channel: quantize a contiguous run (vectorised), then scatter it to every
            // c-th byte
            let mut run = [0u8; TP];
            for a in (0..len).step_by(TP) {
                let b = (a + TP).min(len);
                for ch in 0..c {
                    let q = &mut run[..b - a];
                    t.quantize_run(ch, a, q);
                    for (k, &v) in q.iter().enumerate() {
                        out[(a + k) * c + ch] = v;
                    }
                }
            }
        }
    }
}

impl NhwcTile<'_> {
    /// Channel `ch`'s pixels `a..a + dst.len()` of the tile, quantized into `dst`.
    #[inline(always)]
    fn quantize_run(&self, ch: usize, a: usize, dst: &mut [u8]) {
        let inv = 1.0 / self.q.scale;
        let at = ch * self.hw + self.p0 + a;
        let src = &self.x[at..at + dst.len()];
        for (o, &v) in dst.iter_mut().zip(src) {
            *o = to_byte(v * inv, self.q.zero_point);
        }
    }
}

/// Pixels per transposed tile of [`quantize_to_nhwc`].
const TP: usize = 64;

/// [`quantize_tile_body`] for `C` channels known at compile time (images): the channels'
/// runs are quantized, then a whole tile's pixels interleaved with fixed strides (shuffles, not
/// one byte store per value).
#[inline(always)]
fn quantize_planes<const C: usize>(t: &NhwcTile<'_>, out: &mut [u8]) {
    let len = out.len() / C;
    let mut run = [[0u8; TP]; C];
    for a in (0..len).step_by(TP) {
        let b = (a + TP).min(len);
        for (ch, r) in run.iter_mut().enumerate() {
            t.quantize_run(ch, a, &mut r[..b - a]);
        }
        let o = &mut out[a * C..b * C];
        if b - a == TP {
            // fixed trip counts: the compiler lays the interleave out as shuffles
            let o = &mut o[..TP * C];
            for k in 0..TP {
                for ch in 0..C {
                    o[k * C + ch] = run[ch][k];
                }
            }
        } else {
            for (k, px) in o.chunks_exact_mut(C).enumerate() {
                for (ch, v) in px.iter_mut().enumerate() {
                    *v = run[ch][k];
                }
            }
        }
    }
}
crate::isa::multiversion!(fn quantize_tile(t: &NhwcTile<'_>, out: &mut [u8]) => quantize_tile_body);

/// Blocked `[n, ceil(c/16), h, w, 16]` f32 to NHWC u8 (the padding channels are dropped).
pub fn quantize_blocked_to_nhwc(
    x: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    q: Q,
) -> Result<Vec<u8>, KernelError> {
    let cb = c.div_ceil(16);
    if x.len() != n * cb * hw * 16 {
        return Err(shape_err(
            "quantize",
            format!(
                "blocked input has {} values, want {n}x{cb}x{hw}x16",
                x.len()
            ),
        ));
    }
    let mut out = qvision_tensor::pool::take_u8(n * hw * c);
    if out.is_empty() {
        return Ok(out);
    }
    let isa = isa::current();
    let rows = (CHUNK / c).max(1);
    out.par_chunks_mut(rows * c).enumerate().for_each(|(r, o)| {
        for (k, px) in o.chunks_mut(c).enumerate() {
            let (b, p) = ((r * rows + k) / hw, (r * rows + k) % hw);
            for (j, d) in px.chunks_mut(16).enumerate() {
                let at = ((b * cb + j) * hw + p) * 16;
                quantize_slice(isa, &x[at..at + d.len()], q, d);
            }
        }
    });
    Ok(out)
}

/// NHWC u8 to NCHW f32.
pub fn dequantize_from_nhwc(
    x: &[u8],
    n: usize,
    c: usize,
    hw: usize,
    q: Q,
) -> Result<Vec<f32>, KernelError> {
    if x.len() != n * c * hw {
        return Err(shape_err(
            "dequantize",
            format!("input has {} values, want {n}x{hw}x{c}", x.len()),
        ));
    }
    let mut out = qvision_tensor::pool::take(x.len());
    if out.is_empty() {
        return Ok(out);
    }
    out.par_chunks_mut(hw).enumerate().for_each(|(bc, o)| {
        let (b, ch) = (bc / c, bc % c);
        for (p, v) in o.iter_mut().enumerate() {
            *v = (x[(b * hw + p) * c + ch] as i32 - q.zero_point) as f32 * q.scale;
        }
    });
    Ok(out)
}

/// The table of `u -> quantize_out(f(dequantize_in(u)))` for every byte: a requantization, with
/// an optional activation (PyTorch's quantized hardswish / sigmoid / ... are such maps).
pub fn requant_table(input: Q, output: Q, act: Option<Activation>) -> [u8; 256] {
    let mut t = [0u8; 256];
    for (i, v) in t.iter_mut().enumerate() {
        let x = (i as i32 - input.zero_point) as f32 * input.scale;
        *v = output.quantize(act.map_or(x, |a| a.apply_scalar(x)));
    }
    t
}

/// Apply a byte table.
pub fn lut(x: &[u8], table: &[u8; 256]) -> Vec<u8> {
    let isa = isa::current_int8();
    let mut out = qvision_tensor::pool::take_u8(x.len());
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, s)| lut_into(isa, s, table, o));
    out
}

/// `dst[i] = table[src[i]]`: on AVX-512 VBMI (from the VNNI level) 64 bytes per two
/// `vpermi2b` and a blend, else one lookup per byte.
pub(crate) fn lut_into(isa: isa::Int8Isa, src: &[u8], table: &[u8; 256], dst: &mut [u8]) {
    assert_eq!(src.len(), dst.len(), "table lookup lengths");
    #[cfg(target_arch = "x86_64")]
    if isa >= isa::Int8Isa::Avx512Vnni && has_vbmi() {
        // SAFETY: AVX-512 F/BW and VBMI were detected; the lengths are equal (asserted).
        unsafe { lut_vbmi(src, table, dst) };
        return;
    }
    let _ = isa;
    lut_scalar(src, table, dst);
}

/// The scalar reference of [`lut_into`].
fn lut_scalar(src: &[u8], table: &[u8; 256], dst: &mut [u8]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        *d = table[v as usize];
    }
}

#[cfg(target_arch = "x86_64")]
fn has_vbmi() -> bool {
    static VBMI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VBMI.get_or_init(|| {
        std::is_x86_feature_detected!("avx512bw") && std::is_x86_feature_detected!("avx512vbmi")
    })
}

/// # Safety
/// AVX-512 F/BW and VBMI are available; `dst.len() == src.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn lut_vbmi(src: &[u8], table: &[u8; 256], dst: &mut [u8]) {
    use std::arch::x86_64::*;
    // SAFETY: the table's four 64-byte quarters.
    let t = unsafe { [0, 64, 128, 192].map(|o| _mm512_loadu_si512(table.as_ptr().add(o).cast())) };
    let mut i = 0;
    while i < src.len() {
        let m: __mmask64 = if src.len() - i >= 64 {
            !0
        } else {
            (1u64 << (src.len() - i)) - 1
        };
        // SAFETY: the mask keeps the load and store inside both slices (equal lengths).
        unsafe {
            let x = _mm512_maskz_loadu_epi8(m, src.as_ptr().add(i).cast());
            // entries 0..127 and 128..255 by the low seven bits, chosen by the top one
            let lo = _mm512_permutex2var_epi8(t[0], x, t[1]);
            let hi = _mm512_permutex2var_epi8(t[2], x, t[3]);
            let y = _mm512_mask_blend_epi8(_mm512_movepi8_mask(x), lo, hi);
            _mm512_mask_storeu_epi8(dst.as_mut_ptr().add(i).cast(), m, y);
        }
        i += 64;
    }
}

/// Which element-wise op.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum QBinary {
    Add,
    Mul,
}

#[derive(Clone, Copy)]
struct BinArgs {
    op: QBinary,
    a: Q,
    b: Q,
    out: Q,
    relu: bool,
}

#[inline(always)]
fn binary_body(x: &[u8], y: &[u8], p: &BinArgs, o: &mut [u8]) {
    let (za, zb) = (p.a.zero_point, p.b.zero_point);
    let zo = p.out.zero_point as f32;
    let lo = if p.relu { 0.0f32.max(-zo) } else { -zo };
    let hi = 255.0 - zo;
    let len = o.len();
    let (x, y) = (&x[..len], &y[..len]);
    match p.op {
        QBinary::Add => {
            let (ma, mb) = (p.a.scale / p.out.scale, p.b.scale / p.out.scale);
            for j in 0..len {
                let t = (x[j] as i32 - za) as f32 * ma + (y[j] as i32 - zb) as f32 * mb;
                o[j] = round_u8(t.max(lo).min(hi), p.out.zero_point);
            }
        }
        QBinary::Mul => {
            let m = p.a.scale * p.b.scale / p.out.scale;
            for j in 0..len {
                let t = ((x[j] as i32 - za) * (y[j] as i32 - zb)) as f32 * m;
                o[j] = round_u8(t.max(lo).min(hi), p.out.zero_point);
            }
        }
    }
}
crate::isa::multiversion!(fn binary_slice(x: &[u8], y: &[u8], p: &BinArgs, o: &mut [u8]) => binary_body);

/// `a (op) b` requantized to `out`. `b` is either shaped like `a` or one value per
/// (image, channel) of an NHWC `a` with `c` channels (a squeeze-excitation scale); `relu`
/// clamps at zero.
#[allow(clippy::too_many_arguments)]
pub fn binary(
    op: QBinary,
    a: &[u8],
    qa: Q,
    b: &[u8],
    qb: Q,
    out: Q,
    relu: bool,
    channels: usize,
) -> Result<Vec<u8>, KernelError> {
    let p = BinArgs {
        op,
        a: qa,
        b: qb,
        out,
        relu,
    };
    let isa = isa::current();
    let mut o = qvision_tensor::pool::take_u8(a.len());
    if b.len() == a.len() {
        o.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(o, (x, y))| binary_slice(isa, x, y, &p, o));
        return Ok(o);
    }
    let images = b.len().checked_div(channels).unwrap_or(0);
    if channels == 0
        || b.len() != images * channels
        || images == 0
        || !a.len().is_multiple_of(images * channels)
    {
        return Err(shape_err(
            "quantized binary",
            format!(
                "cannot broadcast {} values over {} (channels {channels})",
                b.len(),
                a.len()
            ),
        ));
    }
    let per_image = a.len() / images;
    // chunks of whole pixels inside one image
    let rows = (CHUNK / channels).max(1) * channels;
    o.par_chunks_mut(per_image)
        .zip(a.par_chunks(per_image))
        .enumerate()
        .for_each(|(i, (o, x))| {
            let y = &b[i * channels..(i + 1) * channels];
            o.par_chunks_mut(rows)
                .zip(x.par_chunks(rows))
                .for_each(|(o, x)| scale_channels(isa, x, y, &p, o));
        });
    Ok(o)
}

/// `x (op) b[c]` per channel of NHWC pixels (a squeeze-excitation scale): one float factor
/// per channel, `(b - zb) * sa * sb / so` for a product, `(b - zb) * sb / so` for a sum.
#[inline(always)]
fn scale_channels_body(x: &[u8], b: &[u8], p: &BinArgs, o: &mut [u8]) {
    let c = b.len();
    let add = p.op == QBinary::Add;
    let ma = p.a.scale / p.out.scale;
    let m = if add {
        p.b.scale
    } else {
        p.a.scale * p.b.scale
    } / p.out.scale;
    let f: Vec<f32> = b
        .iter()
        .map(|&v| (v as i32 - p.b.zero_point) as f32 * m)
        .collect();
    let za = p.a.zero_point;
    let zo = p.out.zero_point as f32;
    let (lo, hi) = (if p.relu { 0.0f32.max(-zo) } else { -zo }, 255.0 - zo);
    for (op, xp) in o.chunks_mut(c).zip(x.chunks(c)) {
        let (op, xp, f) = (&mut op[..c], &xp[..c], &f[..c]);
        if add {
            for j in 0..c {
                let t = (xp[j] as i32 - za) as f32 * ma + f[j];
                op[j] = round_u8(t.max(lo).min(hi), p.out.zero_point);
            }
        } else {
            for j in 0..c {
                let t = (xp[j] as i32 - za) as f32 * f[j];
                op[j] = round_u8(t.max(lo).min(hi), p.out.zero_point);
            }
        }
    }
}
crate::isa::multiversion!(fn scale_channels(x: &[u8], b: &[u8], p: &BinArgs, o: &mut [u8]) => scale_channels_body);

/// Per-channel affine map of NHWC pixels (an unfolded BatchNorm, e.g. DenseNet's pre-activation
/// BN): `y = x * scale[c] + shift[c]` in real units, requantized from `input` to `out`, with an
/// optional ReLU.
pub fn channel_affine(
    x: &[u8],
    input: Q,
    scale: &[f32],
    shift: &[f32],
    out: Q,
    relu: bool,
) -> Result<Vec<u8>, KernelError> {
    let c = scale.len();
    if c == 0 || shift.len() != c || !x.len().is_multiple_of(c) {
        return Err(shape_err(
            "channel_affine",
            format!(
                "{} values do not split into pixels of {c} channels",
                x.len()
            ),
        ));
    }
    // t = (x - zx) * f[c] + g[c], in output units
    let f: Vec<f32> = scale.iter().map(|s| input.scale * s / out.scale).collect();
    let g: Vec<f32> = shift.iter().map(|s| s / out.scale).collect();
    let isa = isa::current();
    let mut o = qvision_tensor::pool::take_u8(x.len());
    let rows = (CHUNK / c).max(1) * c;
    o.par_chunks_mut(rows)
        .zip(x.par_chunks(rows))
        .for_each(|(o, x)| affine_rows(isa, x, &f, &g, input.zero_point, out.zero_point, relu, o));
    Ok(o)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn affine_body(x: &[u8], f: &[f32], g: &[f32], zx: i32, zo: i32, relu: bool, o: &mut [u8]) {
    let c = f.len();
    let zf = zo as f32;
    let (lo, hi) = (if relu { 0.0f32.max(-zf) } else { -zf }, 255.0 - zf);
    for (op, xp) in o.chunks_mut(c).zip(x.chunks(c)) {
        let (op, xp, f, g) = (&mut op[..c], &xp[..c], &f[..c], &g[..c]);
        for j in 0..c {
            let t = (xp[j] as i32 - zx) as f32 * f[j] + g[j];
            op[j] = round_u8(t.max(lo).min(hi), zo);
        }
    }
}
crate::isa::multiversion!(fn affine_rows(x: &[u8], f: &[f32], g: &[f32], zx: i32, zo: i32, relu: bool, o: &mut [u8]) => affine_body);

/// NHWC max pooling (the output keeps the input's quantization).
pub fn max_pool(
    p: &Pool2dParams,
    x: &[u8],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
) -> Result<(Vec<u8>, usize, usize), KernelError> {
    let (oh, ow) = p.output_size(h, w)?;
    check(x, n * h * w * c, "max_pool2d")?;
    let mut out = qvision_tensor::pool::take_u8(n * oh * ow * c);
    let isa = isa::current();
    let geom = PoolRow { p, x, h, w, c, oh };
    out.par_chunks_mut((ow * c).max(1))
        .enumerate()
        .for_each(|(r, o)| max_row(isa, &geom, r, o));
    Ok((out, oh, ow))
}

/// What every output row of [`max_pool`] reads.
struct PoolRow<'a> {
    p: &'a Pool2dParams,
    x: &'a [u8],
    h: usize,
    w: usize,
    c: usize,
    oh: usize,
}

/// Output row `r` (image `r / oh`): each pixel the max over its in-bounds taps (a window always
/// holds one: the output size guarantees it), compiled per ISA as a whole so the per-tap max
/// over the channels inlines.
#[inline(always)]
fn max_row_body(g: &PoolRow<'_>, r: usize, o: &mut [u8]) {
    let (p, c) = (g.p, g.c);
    let (b, oy) = (r / g.oh, r % g.oh);
    o.fill(0);
    let [kh, kw] = p.kernel;
    let [dh, dw] = p.dilation;
    let iy0 = (oy * p.stride[0]) as isize - p.padding[0] as isize;
    let rows_inside = iy0 >= 0 && iy0 as usize + (kh - 1) * dh < g.h;
    let span = ((kw - 1) * dw + 1) * c;
    for (ox, d) in o.chunks_exact_mut(c.max(1)).enumerate() {
        let ix0 = (ox * p.stride[1]) as isize - p.padding[1] as isize;
        if rows_inside && ix0 >= 0 && ix0 as usize + (kw - 1) * dw < g.w {
            // the whole window inside the image (most pixels): no per-tap bounds, and 32
            // channels at a time kept in registers over all taps
            let at0 = ((b * g.h + iy0 as usize) * g.w + ix0 as usize) * c;
            let window = &g.x[at0..at0 + (kh - 1) * dh * g.w * c + span];
            let mut ch = 0;
            while ch + LANES <= c {
                let mut acc = [0u8; LANES];
                for ky in 0..kh {
                    let row = &window[ky * dh * g.w * c + ch..];
                    for kx in 0..kw {
                        let v: &[u8; LANES] =
                            row[kx * dw * c..][..LANES].try_into().expect("LANES bytes");
                        max_into(&mut acc, v);
                    }
                }
                d[ch..ch + LANES].copy_from_slice(&acc);
                ch += LANES;
            }
            if ch < c {
                for ky in 0..kh {
                    let row = &window[ky * dh * g.w * c..];
                    for kx in 0..kw {
                        max_into(&mut d[ch..], &row[kx * dw * c + ch..][..c - ch]);
                    }
                }
            }
            continue;
        }
        for ky in 0..p.kernel[0] {
            let iy = (oy * p.stride[0] + ky * p.dilation[0]) as isize - p.padding[0] as isize;
            if iy < 0 || iy as usize >= g.h {
                continue;
            }
            for kx in 0..p.kernel[1] {
                let ix = (ox * p.stride[1] + kx * p.dilation[1]) as isize - p.padding[1] as isize;
                if ix < 0 || ix as usize >= g.w {
                    continue;
                }
                let at = ((b * g.h + iy as usize) * g.w + ix as usize) * c;
                max_into(d, &g.x[at..at + c]);
            }
        }
    }
}
crate::isa::multiversion!(fn max_row(g: &PoolRow<'_>, r: usize, o: &mut [u8]) => max_row_body);

/// Channels of a [`max_row`] interior window reduced together (one AVX2 register).
const LANES: usize = 32;

/// `d = max(d, s)` byte by byte (inlined into each ISA's [`max_row`]).
#[inline(always)]
fn max_into(d: &mut [u8], s: &[u8]) {
    for (a, &v) in d.iter_mut().zip(s) {
        *a = (*a).max(v);
    }
}

#[inline(always)]
fn sum_body(acc: &mut [i32], s: &[u8]) {
    for (a, &b) in acc.iter_mut().zip(s) {
        *a += b as i32;
    }
}
crate::isa::multiversion!(fn sum_into(acc: &mut [i32], s: &[u8]) => sum_body);

/// Average over windows `[hs, he) x [ws, we)` with a divisor, requantized to `out`.
fn avg_windows(
    x: &[u8],
    (n, h, w, c): (usize, usize, usize, usize),
    (oh, ow): (usize, usize),
    window: impl Fn(usize, usize) -> (usize, usize, usize, usize, f32) + Sync,
    input: Q,
    out: Q,
) -> Vec<u8> {
    let mut y = qvision_tensor::pool::take_u8(n * oh * ow * c);
    if y.is_empty() {
        return y;
    }
    let isa = isa::current();
    y.par_chunks_mut(c).enumerate().for_each(|(px, o)| {
        let (b, r) = (px / (oh * ow), px % (oh * ow));
        let (oy, ox) = (r / ow, r % ow);
        let (hs, he, ws, we, div) = window(oy, ox);
        let mut acc = vec![0i32; c];
        for iy in hs..he {
            for ix in ws..we {
                let at = ((b * h + iy) * w + ix) * c;
                sum_into(isa, &mut acc, &x[at..at + c]);
            }
        }
        let count = ((he - hs) * (we - ws)) as i32;
        let m = input.scale / (out.scale * div);
        let zo = out.zero_point as f32;
        for (d, &s) in o.iter_mut().zip(&acc) {
            let t = (s - count * input.zero_point) as f32 * m;
            *d = round_u8(t.max(-zo).min(255.0 - zo), out.zero_point);
        }
    });
    y
}

/// NHWC average pooling with PyTorch's divisor rule, requantized from `input` to `out`.
#[allow(clippy::too_many_arguments)]
pub fn avg_pool(
    p: &Pool2dParams,
    count_include_pad: bool,
    x: &[u8],
    (n, h, w, c): (usize, usize, usize, usize),
    input: Q,
    out: Q,
) -> Result<(Vec<u8>, usize, usize), KernelError> {
    if p.dilation != [1, 1] {
        return Err(shape_err("avg_pool2d", "dilation is not supported"));
    }
    let (oh, ow) = p.output_size(h, w)?;
    check(x, n * h * w * c, "avg_pool2d")?;
    let y = avg_windows(
        x,
        (n, h, w, c),
        (oh, ow),
        |oy, ox| {
            let hs = (oy * p.stride[0]) as isize - p.padding[0] as isize;
            let he = (hs + p.kernel[0] as isize).min((h + p.padding[0]) as isize);
            let ws = (ox * p.stride[1]) as isize - p.padding[1] as isize;
            let we = (ws + p.kernel[1] as isize).min((w + p.padding[1]) as isize);
            let pool_size = ((he - hs) * (we - ws)) as f32;
            let (hs, ws) = (hs.max(0) as usize, ws.max(0) as usize);
            let (he, we) = (he.min(h as isize) as usize, we.min(w as isize) as usize);
            let div = if count_include_pad {
                pool_size
            } else {
                ((he - hs) * (we - ws)) as f32
            };
            (hs, he, ws, we, div)
        },
        input,
        out,
    );
    Ok((y, oh, ow))
}

/// NHWC adaptive average pooling (torchvision's bins), requantized from `input` to `out`.
pub fn adaptive_avg_pool(
    x: &[u8],
    (n, h, w, c): (usize, usize, usize, usize),
    (oh, ow): (usize, usize),
    input: Q,
    out: Q,
) -> Result<Vec<u8>, KernelError> {
    check(x, n * h * w * c, "adaptive_avg_pool2d")?;
    if oh == 0 || ow == 0 || h == 0 || w == 0 {
        return Err(shape_err(
            "adaptive_avg_pool2d",
            format!("cannot pool {h}x{w} to {oh}x{ow}"),
        ));
    }
    Ok(avg_windows(
        x,
        (n, h, w, c),
        (oh, ow),
        |oy, ox| {
            let (hs, he) = (oy * h / oh, ((oy + 1) * h).div_ceil(oh));
            let (ws, we) = (ox * w / ow, ((ox + 1) * w).div_ceil(ow));
            (hs, he, ws, we, ((he - hs) * (we - ws)) as f32)
        },
        input,
        out,
    ))
}

/// A piece of a channel gather: `(input, its channel count, first channel, count, optional
/// byte table)`.
pub type ChannelPiece<'a> = (&'a [u8], usize, usize, usize, Option<&'a [u8; 256]>);

/// Build each output pixel's channels from pieces of the inputs' channels: `parts[i]` is
/// `(input, its channel count, first channel, count, optional byte table)`. Concat, split and
/// channel shuffle are all such gathers over NHWC.
pub fn gather_channels(pixels: usize, parts: &[ChannelPiece<'_>]) -> Result<Vec<u8>, KernelError> {
    let c: usize = parts.iter().map(|p| p.3).sum();
    for &(x, cx, first, count, _) in parts {
        if x.len() != pixels * cx || first + count > cx {
            return Err(shape_err(
                "channel gather",
                format!(
                    "input of {} values is not {pixels} pixels x {cx} channels",
                    x.len()
                ),
            ));
        }
        let _ = count;
    }
    let mut out = qvision_tensor::pool::take_u8(pixels * c);
    if out.is_empty() {
        return Ok(out);
    }
    let isa = isa::current_int8();
    let rows = (CHUNK / c).max(1);
    out.par_chunks_mut(rows * c).enumerate().for_each(|(r, o)| {
        for (k, px) in o.chunks_mut(c).enumerate() {
            let p = r * rows + k;
            let mut at = 0;
            for &(x, cx, first, count, table) in parts {
                let src = &x[p * cx + first..p * cx + first + count];
                let dst = &mut px[at..at + count];
                match table {
                    Some(t) => lut_into(isa, src, t, dst),
                    None => dst.copy_from_slice(src),
                }
                at += count;
            }
        }
    });
    Ok(out)
}

/// ShuffleNet's channel shuffle over NHWC: output channel `j*groups + g` is input channel
/// `g*(c/groups) + j`.
pub fn channel_shuffle(
    x: &[u8],
    pixels: usize,
    c: usize,
    groups: usize,
) -> Result<Vec<u8>, KernelError> {
    if groups == 0 || !c.is_multiple_of(groups) || x.len() != pixels * c {
        return Err(shape_err(
            "channel_shuffle",
            format!("{} values, {c} channels, {groups} groups", x.len()),
        ));
    }
    let per = c / groups;
    let mut out = qvision_tensor::pool::take_u8(x.len());
    out.par_chunks_mut(c)
        .zip(x.par_chunks(c))
        .for_each(|(o, s)| {
            for j in 0..per {
                for g in 0..groups {
                    o[j * groups + g] = s[g * per + j];
                }
            }
        });
    Ok(out)
}

fn check(x: &[u8], want: usize, op: &'static str) -> Result<(), KernelError> {
    if x.len() != want {
        return Err(shape_err(
            op,
            format!("input has {} values, want {want}", x.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes(len: usize, seed: u64) -> Vec<u8> {
        crate::reference::pseudo_random(len, seed)
            .iter()
            .map(|v| ((v + 1.0) * 127.9) as u8)
            .collect()
    }

    fn deq(x: &[u8], q: Q) -> Vec<f32> {
        x.iter()
            .map(|&v| (v as i32 - q.zero_point) as f32 * q.scale)
            .collect()
    }

    fn nchw_to_nhwc<T: Copy>(x: &[T], n: usize, c: usize, hw: usize) -> Vec<T> {
        let mut y = x.to_vec();
        for b in 0..n {
            for ch in 0..c {
                for p in 0..hw {
                    y[(b * hw + p) * c + ch] = x[(b * c + ch) * hw + p];
                }
            }
        }
        y
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// The u8 LayerNorm against dequantize, the f64 float LayerNorm and quantize: within one
        /// step everywhere (its statistics come from exact integer sums, the float path's from
        /// rounded f32 values), and equal on nearly every byte.
        #[test]
        fn layer_norm_matches_the_float_path(len in 1usize..400, rows in 1usize..40, zi in 0i32..256, zo in 0i32..256,
                                             si in 1e-3f32..0.2, so in 1e-2f32..0.2, seed in any::<u64>()) {
            let x = bytes(rows * len, seed);
            let g: Vec<f32> = crate::reference::pseudo_random(len, seed ^ 1).iter().map(|v| 1.0 + v).collect();
            let b = crate::reference::pseudo_random(len, seed ^ 2);
            let (qi, qo) = (Q::new(si, zi), Q::new(so, zo));
            let got = layer_norm(&x, qi, &g, &b, 1e-6, qo).unwrap();
            let mut f = deq(&x, qi);
            crate::norm::layer_norm(&mut f, len, &g, &b, 1e-6).unwrap();
            let want = quantize(&f, qo);
            let off: Vec<_> = got.iter().zip(&want).filter(|(a, b)| a != b).collect();
            prop_assert!(off.iter().all(|(a, b)| (**a as i32 - **b as i32).abs() <= 1), "{:?}", off);
            prop_assert!(off.len() * 100 <= got.len().max(100), "{} of {} bytes differ", off.len(), got.len());
        }

        /// The VBMI byte table (where the CPU has it) against the scalar loop: every length
        /// (whole vectors and masked tails), random tables.
        #[test]
        fn byte_tables_match_the_scalar_loop(len in 0usize..300, seed in any::<u64>()) {
            let x = bytes(len, seed);
            let t: [u8; 256] = bytes(256, seed ^ 7).try_into().unwrap();
            let mut want = vec![0u8; len];
            lut_scalar(&x, &t, &mut want);
            for isa in isa::available_int8() {
                let mut got = vec![0u8; len];
                lut_into(isa, &x, &t, &mut got);
                prop_assert_eq!(&got, &want, "{:?}", isa);
            }
            prop_assert_eq!(lut(&x, &t), want);
        }

        #[test]
        fn layout_changes_round_trip(n in 1usize..3, c in prop_oneof![Just(3usize), Just(1), Just(4), 1usize..40], hw in 1usize..300, z in 0i32..256, seed in any::<u64>()) {
            let q = Q::new(0.02, z);
            let x: Vec<f32> = crate::reference::pseudo_random(n * c * hw, seed).iter().map(|v| v * 3.0).collect();
            let nhwc = quantize_to_nhwc(&x, n, c, hw, q).unwrap();
            prop_assert_eq!(&nhwc, &nchw_to_nhwc(&quantize(&x, q), n, c, hw));
            let blocked = crate::blocked::to_blocked(&x, n, c, hw);
            prop_assert_eq!(&quantize_blocked_to_nhwc(&blocked, n, c, hw, q).unwrap(), &nhwc);
            let back = dequantize_from_nhwc(&nhwc, n, c, hw, q).unwrap();
            prop_assert_eq!(back, deq(&quantize(&x, q), q));
        }

        #[test]
        fn binary_ops_match_the_float_formula(len in 1usize..3000, za in 0i32..256, zb in 0i32..256, zo in 0i32..256,
                                              sa in 1e-3f32..0.1, sb in 1e-3f32..0.1, so in 1e-3f32..0.2,
                                              mul in any::<bool>(), relu in any::<bool>(), bcast in any::<bool>(), seed in any::<u64>()) {
            let (qa, qb, qo) = (Q::new(sa, za), Q::new(sb, zb), Q::new(so, zo));
            let c = 1 + (len % 17);
            let a = bytes(len * c, seed);
            let b = if bcast { bytes(c, seed ^ 1) } else { bytes(len * c, seed ^ 1) };
            let op = if mul { QBinary::Mul } else { QBinary::Add };
            let got = binary(op, &a, qa, &b, qb, qo, relu, c).unwrap();
            for (i, &g) in got.iter().enumerate() {
                let (x, y) = ((a[i] as i32 - za) as f32 * sa, (b[if bcast { i % c } else { i }] as i32 - zb) as f32 * sb);
                let mut v = if mul { x * y } else { x + y };
                if relu { v = v.max(0.0); }
                let want = (v / so).round() + zo as f32;
                prop_assert!((g as f32 - want.clamp(0.0, 255.0)).abs() <= 1.0, "{} vs {}", g, want);
            }
        }

        #[test]
        fn pools_match_float_pools(n in 1usize..3, c in prop_oneof![1usize..20, 30usize..100], h in 2usize..12, w in 2usize..12, k in 1usize..4,
                                   s in 1usize..3, pad in 0usize..2, cip in any::<bool>(), seed in any::<u64>()) {
            let p = Pool2dParams { kernel: [k, k], stride: [s, s], padding: [pad.min(k / 2); 2], dilation: [1, 1], ceil_mode: false };
            let (h, w) = (h.max(k), w.max(k));
            let qi = Q::new(0.05, 100);
            let qo = Q::new(0.04, 90);
            let x = bytes(n * h * w * c, seed);
            let nchw: Vec<f32> = {
                let f = deq(&x, qi);
                let mut y = f.clone();
                for b in 0..n { for ch in 0..c { for px in 0..h * w { y[(b * c + ch) * h * w + px] = f[(b * h * w + px) * c + ch]; } } }
                y
            };
            let (mx, oh, ow) = max_pool(&p, &x, n, h, w, c).unwrap();
            let (fm, _, _) = crate::pool::max_pool2d(&p, &nchw, n * c, h, w).unwrap();
            prop_assert_eq!(deq(&mx, qi), nchw_to_nhwc(&fm, n, c, oh * ow));
            let (av, _, _) = avg_pool(&p, cip, &x, (n, h, w, c), qi, qo).unwrap();
            let (fa, _, _) = crate::pool::avg_pool2d(&p, cip, &nchw, n * c, h, w).unwrap();
            for (g, f) in av.iter().zip(nchw_to_nhwc(&fa, n, c, oh * ow)) {
                prop_assert!((*g as f32 - (f / qo.scale + 90.0).clamp(0.0, 255.0)).abs() <= 0.5 + 1e-3, "{} vs {}", g, f);
            }
            let ad = adaptive_avg_pool(&x, (n, h, w, c), (2, 3), qi, qo).unwrap();
            let fa = crate::pool::adaptive_avg_pool2d(&nchw, n * c, h, w, 2, 3).unwrap();
            for (g, f) in ad.iter().zip(nchw_to_nhwc(&fa, n, c, 6)) {
                prop_assert!((*g as f32 - (f / qo.scale + 90.0).clamp(0.0, 255.0)).abs() <= 0.5 + 1e-3, "{} vs {}", g, f);
            }
        }

        #[test]
        fn shuffle_and_gather_match_the_nchw_kernels(n in 1usize..3, g in 1usize..5, per in 1usize..6, hw in 1usize..20, seed in any::<u64>()) {
            let c = g * per;
            let x = bytes(n * c * hw, seed);
            let want = crate::layout::channel_shuffle(&x, n, c, hw, g).unwrap();
            let got = channel_shuffle(&nchw_to_nhwc(&x, n, c, hw), n * hw, c, g).unwrap();
            prop_assert_eq!(got, nchw_to_nhwc(&want, n, c, hw));
            let t = requant_table(Q::new(0.1, 5), Q::new(0.2, 7), None);
            let y = gather_channels(n * hw, &[(&x, c, 0, c, None), (&x, c, c - 1, 1, Some(&t))]).unwrap();
            for p in 0..n * hw {
                prop_assert_eq!(&y[p * (c + 1)..p * (c + 1) + c], &x[p * c..(p + 1) * c]);
                prop_assert_eq!(y[p * (c + 1) + c], t[x[p * c + c - 1] as usize]);
            }
        }
    }

    #[test]
    fn channel_affine_matches_the_float_formula() {
        let (qi, qo) = (Q::new(0.05, 100), Q::new(0.03, 20));
        let (scale, shift) = ([0.5f32, -1.0, 2.0], [0.1f32, 0.0, -0.3]);
        let x = bytes(3 * 50, 3);
        for relu in [false, true] {
            let y = channel_affine(&x, qi, &scale, &shift, qo, relu).unwrap();
            for (i, (&a, &b)) in x.iter().zip(&y).enumerate() {
                let mut v = (a as f32 - 100.0) * 0.05 * scale[i % 3] + shift[i % 3];
                if relu {
                    v = v.max(0.0);
                }
                let want = ((v / 0.03).round() + 20.0).clamp(0.0, 255.0);
                assert!((b as f32 - want).abs() <= 1.0, "{b} vs {want}");
            }
        }
        assert!(channel_affine(&x[..7], qi, &scale, &shift, qo, false).is_err());
    }

    #[test]
    fn tables_apply_the_activation() {
        let (qi, qo) = (Q::new(0.05, 128), Q::new(0.03, 10));
        let t = requant_table(qi, qo, Some(Activation::Hardswish));
        for (i, &v) in t.iter().enumerate() {
            let x = (i as f32 - 128.0) * 0.05;
            let want = (x * (x + 3.0).clamp(0.0, 6.0) / 6.0 / 0.03).round_ties_even() + 10.0;
            assert_eq!(v as f32, want.clamp(0.0, 255.0));
        }
        assert_eq!(lut(&[0, 128, 255], &t), vec![t[0], t[128], t[255]]);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let q = Q::new(1.0, 0);
        assert!(binary(QBinary::Add, &[1; 10], q, &[1; 3], q, q, false, 4).is_err());
        assert!(quantize_to_nhwc(&[0.0; 5], 1, 2, 3, q).is_err());
        assert!(channel_shuffle(&[0; 6], 2, 3, 2).is_err());
        assert!(gather_channels(2, &[(&[0; 5], 3, 0, 3, None)]).is_err());
    }
}
