//! Int8 convolution and linear layers on NHWC u8 activations.
//!
//! In NHWC a pixel's channels are contiguous, so a convolution is a GEMM whose rows are output
//! pixels and whose K runs over the taps, each tap reading one contiguous run of input channels:
//! the im2col is a list of row pointers, never a copy. Padding taps point at a buffer filled with
//! the input zero point (a real zero). Weights (s8) are packed once into blocks of up to 64
//! output channels, K grouped by 4 (the VNNI layout), so the AVX-512 VNNI micro-kernel
//! broadcasts four activation bytes and issues one `vpdpbusd` per 16 output channels.
//!
//! The epilogue is shared by every path, so all ISAs agree bit for bit with the scalar
//! reference: `t = (acc - za·colsum + bias)·m`, plus a residual `(r - zr)·mr`, an activation in
//! real units, a clamp, round half to even, plus the output zero point.
//!
//! Small groups (ResNeXt, RegNet) are merged into "super-groups" of at least 16 output channels
//! with block-diagonal weights; depthwise convs run a direct kernel over channel vectors.

mod amx;
mod conv;
mod generic;
#[cfg(target_arch = "x86_64")]
mod x86_64;

pub use conv::{PreparedQConv, QConvOutput};

/// Whether the hardware AMX tile path matches the scalar kernel (run once at detection).
#[cfg(target_arch = "x86_64")]
pub(crate) fn amx_hardware_agrees() -> bool {
    amx::hardware_agrees()
}

use crate::isa::{Int8Isa, Isa};
use crate::Activation;

/// Output pixels per micro-tile.
pub const MR: usize = 6;
/// Output channels per packed block (four 16-lane vectors).
pub const NBLK: usize = 64;

/// s8 weights of one (super-)group, packed for the micro-kernels: blocks of up to 64 output
/// channels, each `[tap][k/4][cols rounded to 16][4]`.
#[derive(Clone, Debug)]
pub(crate) struct PackedQB {
    pub n: usize,
    /// `(first column, vectors of 16 columns, offset into data)` per block.
    pub blocks: Vec<(usize, usize, usize)>,
    pub data: Vec<i8>,
    /// Sum over K of each column's weights (for the input zero point).
    pub col_sums: Vec<i32>,
}

impl PackedQB {
    /// Pack `n` columns of `taps x cin` weights given by `w(col, tap, ci)`.
    pub fn new(n: usize, taps: usize, cin: usize, w: impl Fn(usize, usize, usize) -> i8) -> Self {
        let quads = cin.div_ceil(4);
        let mut blocks = vec![];
        let mut data = vec![];
        let mut col0 = 0;
        while col0 < n {
            let width = (n - col0).min(NBLK);
            let nb = width.div_ceil(16);
            let off = data.len();
            data.resize(off + taps * quads * nb * 64, 0);
            for t in 0..taps {
                for q in 0..quads {
                    for j in 0..width {
                        for b in 0..4 {
                            let ci = q * 4 + b;
                            if ci < cin {
                                data[off + ((t * quads + q) * nb * 16 + j) * 4 + b] =
                                    w(col0 + j, t, ci);
                            }
                        }
                    }
                }
            }
            blocks.push((col0, nb, off));
            col0 += width;
        }
        let col_sums = (0..n)
            .map(|c| {
                (0..taps)
                    .flat_map(|t| (0..cin).map(move |ci| (t, ci)))
                    .map(|(t, ci)| w(c, t, ci) as i32)
                    .sum()
            })
            .collect();
        PackedQB {
            n,
            blocks,
            data,
            col_sums,
        }
    }
}

/// Per-row requantization of i32 accumulators (see the module docs).
#[derive(Clone, Copy)]
pub(crate) struct Epilogue<'a> {
    /// Per column: `bias - za·colsum`.
    pub shift: &'a [i32],
    /// Per column `s_in·s_w / s_out`.
    pub mult: &'a [f32],
    /// A residual row laid out like the output: `(data, zero point, s_r / s_out)`.
    pub residual: Option<(&'a [u8], i32, f32)>,
    /// Activation in real units, and `s_out` to get there (ReLU / ReLU6 are clamps).
    pub act: Option<Activation>,
    pub out_scale: f32,
    pub zo: i32,
}

impl Epilogue<'_> {
    /// Clamp bounds in output units (before the zero point).
    pub(crate) fn bounds(&self) -> (f32, f32) {
        let lo = -(self.zo as f32);
        let hi = 255.0 - self.zo as f32;
        match self.act {
            Some(Activation::Relu) => (lo.max(0.0), hi),
            Some(Activation::Relu6) => (lo.max(0.0), hi.min(6.0 / self.out_scale)),
            _ => (lo, hi),
        }
    }
}

/// Requantize one row: `acc[j]` for columns `shift/mult[j]` into `out[j]`; `tmp` is scratch of
/// the same length. The residual slice starts at the same column.
#[inline(always)]
pub(crate) fn requant_row_body(acc: &[i32], e: &Epilogue<'_>, tmp: &mut [f32], out: &mut [u8]) {
    let len = out.len();
    let (acc, shift, mult, tmp) = (
        &acc[..len],
        &e.shift[..len],
        &e.mult[..len],
        &mut tmp[..len],
    );
    for j in 0..len {
        tmp[j] = (acc[j] + shift[j]) as f32 * mult[j];
    }
    if let Some((r, zr, mr)) = e.residual {
        let r = &r[..len];
        for j in 0..len {
            tmp[j] += (r[j] as i32 - zr) as f32 * mr;
        }
    }
    if let Some(a) = e
        .act
        .filter(|a| !matches!(a, Activation::Relu | Activation::Relu6))
    {
        let (s, inv) = (e.out_scale, 1.0 / e.out_scale);
        tmp.iter_mut().for_each(|v| *v *= s);
        crate::act::apply_slice_body(tmp, a);
        tmp.iter_mut().for_each(|v| *v *= inv);
    }
    let (lo, hi) = e.bounds();
    for j in 0..len {
        out[j] = crate::round_u8(tmp[j].max(lo).min(hi), e.zo);
    }
}

/// The float ISA whose `target_feature`s cover an int8 level (for the portable loops).
pub(crate) fn float_isa(isa: Int8Isa) -> Isa {
    match isa {
        Int8Isa::Scalar => Isa::Scalar,
        Int8Isa::Avx2 | Int8Isa::AvxVnni => Isa::Avx2,
        Int8Isa::Avx512Vnni | Int8Isa::Amx => Isa::Avx512,
    }
}

pub(crate) use crate::OutPtr;

/// Raw row pointers into the input (read only).
#[derive(Clone, Copy)]
pub(crate) struct RowPtr(pub *const u8);
// SAFETY: read-only pointers into an input that outlives the parallel loop.
unsafe impl Send for RowPtr {}
// SAFETY: as above.
unsafe impl Sync for RowPtr {}

/// A requantization done inside the SIMD tile: output and residual row pointers and the column parameters, `width` valid columns.
pub(crate) struct Fused {
    pub out: [*mut u8; MR],
    pub residual: Option<([*const u8; MR], i32, f32)>,
    pub rows: usize,
    pub width: usize,
    pub shift: *const i32,
    pub mult: *const f32,
    pub lo: f32,
    pub hi: f32,
    pub zo: i32,
    /// A smooth activation and the output scale (ReLU / ReLU6 are in `lo` / `hi`).
    pub act: Option<(Activation, f32)>,
}

impl Epilogue<'_> {
    /// The activation that is not a clamp, with the output scale.
    pub(crate) fn smooth(&self) -> Option<(Activation, f32)> {
        self.act
            .filter(|a| !matches!(a, Activation::Relu | Activation::Relu6))
            .map(|a| (a, self.out_scale))
    }
}

/// The A side of one micro-tile: `rows[t*MR + i]` points at `cin` readable bytes (tap `t` of
/// row `i`). Only the first `valid` rows are wanted (the others repeat a valid row); taps whose
/// bit is set in `skip` are padding for every wanted row and are not multiplied (their
/// zero-point share must be in the shift the caller uses).
#[derive(Clone, Copy)]
pub(crate) struct TileRows<'a> {
    pub rows: &'a [RowPtr],
    pub valid: usize,
    pub taps: usize,
    pub skip: u64,
    pub cin: usize,
}

impl TileRows<'_> {
    /// Whether tap `t` is multiplied.
    #[inline(always)]
    pub fn live(&self, t: usize) -> bool {
        t >= 64 || self.skip >> t & 1 == 0
    }
}

/// Run one micro-tile over packed block `b` of `nb` vectors: accumulators land in `acc` (row
/// stride [`NBLK`]), or, where the ISA has a fused epilogue and `fused` is given, the
/// requantized bytes land in the output directly (returns `true`).
pub(crate) fn run_tile(
    isa: Int8Isa,
    a: &TileRows<'_>,
    b: &[i8],
    nb: usize,
    acc: &mut [i32; MR * NBLK],
    fused: Option<&Fused>,
) -> bool {
    debug_assert!(a.rows.len() >= a.taps * MR && (1..=MR).contains(&a.valid));
    debug_assert!(b.len() >= a.taps * a.cin.div_ceil(4) * nb * 64);
    #[cfg(target_arch = "x86_64")]
    if isa >= Int8Isa::Avx512Vnni {
        // (AMX runs its own driver; a 6-row tile asked of it, e.g. a linear layer's f32
        // output, takes the VNNI kernel the AMX level includes)
        // SAFETY: AVX-512 F/BW/VL/VNNI were detected (`isa` never exceeds `best_int8`); every
        // row pointer has `cin` readable bytes per tap and `b` holds the block (checked above
        // in debug builds, guaranteed by the packing and the drivers).
        unsafe {
            match a.valid {
                1 => x86_64::tile_vnni_rows::<1>(a, b, nb, acc, fused),
                2 => x86_64::tile_vnni_rows::<2>(a, b, nb, acc, fused),
                3 => x86_64::tile_vnni_rows::<3>(a, b, nb, acc, fused),
                4 => x86_64::tile_vnni_rows::<4>(a, b, nb, acc, fused),
                5 => x86_64::tile_vnni_rows::<5>(a, b, nb, acc, fused),
                _ => x86_64::tile_vnni_rows::<MR>(a, b, nb, acc, fused),
            }
        }
        return fused.is_some();
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Int8Isa::AvxVnni {
        // SAFETY: AVX-VNNI and AVX2 were detected (`supports_int8`); the same contract as the
        // AVX-512 tile (row pointers with `cin` bytes per tap, a whole packed block).
        unsafe { x86_64::tile_avxvnni(a, b, nb, acc) };
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Int8Isa::Avx2 {
        // SAFETY: AVX2 was detected; the portable body reads only through the checked slices
        // built from the row pointers, as in the scalar path.
        unsafe { generic::tile_avx2(a, b, nb, acc) };
        return false;
    }
    let _ = (isa, fused);
    generic::tile(a, b, nb, acc);
    false
}

#[cfg(test)]
mod tests;
