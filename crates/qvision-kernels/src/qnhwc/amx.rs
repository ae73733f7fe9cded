//! AMX-INT8 path for the dense and grouped GEMM convs (Intel Sapphire Rapids and later).
//!
//! A work item takes 32 output pixels at a time. Their taps are gathered once into an A panel
//! `[tap][K chunk][32 rows][64 bytes]` (K in chunks of 64 input channels, zero-filled past the
//! end), then every pair of 16-column vectors of a packed weight block is a 2x2 grid of i32
//! C tiles (`tmm0..3`) fed by two A tiles (`tmm4`, `tmm5`: rows 0-15 and 16-31) and two B tiles
//! (`tmm6`, `tmm7`). B tiles are read straight from the VNNI packing of [`PackedQB`]
//! (`[tap][k/4][cols][4]`: 16 quads of one 16-column vector are 16 rows of 64 bytes, one block
//! width apart), except a tap's last partial chunk, which is copied into a zero-padded scratch
//! tile. The C tiles are stored to an i32 buffer and requantized by the shared epilogue, so the
//! results equal the scalar reference bit for bit.
//!
//! The instructions go through [`TileUnit`]: [`Hardware`] issues them as inline asm, and
//! [`Emulator`] carries out each instruction's semantics in plain Rust. The differential tests
//! run this driver's whole instruction stream on the emulator on every CPU; on a CPU with AMX
//! the hardware path is checked against the scalar reference once, when it is first detected,
//! and also joins the every-ISA tests.

use super::conv::{requant_row, Geom, PreparedQConv, Src};
use super::{OutPtr, PackedQB, RowPtr, NBLK};
use rayon::prelude::*;

/// Output pixels per AMX block (two 16-row tiles).
pub(crate) const AMX_MR: usize = 32;
/// Bytes of K per tile row (16 quads of 4).
const KC: usize = 64;
/// Rows of every tile.
const TROWS: usize = 16;

/// The 64-byte operand of `ldtilecfg` (palette 1).
#[repr(C, align(64))]
pub(crate) struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    /// Bytes per row of each tile.
    colsb: [u16; 16],
    /// Rows of each tile.
    rows: [u8; 16],
}

/// Tiles 0-7 are all 16 rows x 64 bytes; 8-15 do not exist in palette 1 and must be zero.
static CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// The AMX instructions the kernel uses, one method per instruction.
///
/// # Safety
/// Callers `configure` before any other call on the same thread and `release` when done;
/// `load` reads and `store` writes 16 rows of 64 bytes, `stride` bytes apart.
pub(crate) trait TileUnit {
    /// `ldtilecfg` with [`CONFIG`].
    unsafe fn configure(&mut self);
    /// `tilezero tmmT`.
    unsafe fn zero<const T: u8>(&mut self);
    /// `tileloadd tmmT, [p + stride]`.
    unsafe fn load<const T: u8>(&mut self, p: *const u8, stride: usize);
    /// `tdpbusd tmmC, tmmA, tmmB`: `C[m][n] += Σ_k Σ_i A[m][4k+i] (u8) · B[k][4n+i] (s8)`.
    unsafe fn dpbusd<const C: u8, const A: u8, const B: u8>(&mut self);
    /// `tilestored [p + stride], tmmT`.
    unsafe fn store<const T: u8>(&mut self, p: *mut u8, stride: usize);
    /// `tilerelease`.
    unsafe fn release(&mut self);
}

/// The tile instructions themselves. Only constructed where the CPU has AMX-TILE and
/// AMX-INT8 and the OS granted this process the tile state (`isa::supports_int8`).
#[cfg(target_arch = "x86_64")]
pub(crate) struct Hardware;

#[cfg(target_arch = "x86_64")]
impl TileUnit for Hardware {
    #[inline(always)]
    unsafe fn configure(&mut self) {
        // SAFETY: AMX is present and enabled (the only way to build `Hardware`); CONFIG is a
        // valid palette-1 configuration (rows <= 16, bytes per row <= 64, reserved zero).
        unsafe {
            std::arch::asm!("ldtilecfg [{c}]", c = in(reg) &CONFIG as *const TileConfig,
                            options(nostack, readonly))
        }
    }
    #[inline(always)]
    unsafe fn zero<const T: u8>(&mut self) {
        // SAFETY: tiles are configured (trait contract); touches no memory.
        unsafe { std::arch::asm!("tilezero tmm{t}", t = const T, options(nostack, nomem)) }
    }
    #[inline(always)]
    unsafe fn load<const T: u8>(&mut self, p: *const u8, stride: usize) {
        // SAFETY: the caller guarantees 16 readable rows of 64 bytes, `stride` apart.
        unsafe {
            std::arch::asm!("tileloadd tmm{t}, [{p} + {s}*1]", t = const T, p = in(reg) p,
                            s = in(reg) stride, options(nostack, readonly))
        }
    }
    #[inline(always)]
    unsafe fn dpbusd<const C: u8, const A: u8, const B: u8>(&mut self) {
        // SAFETY: configured tiles of matching shapes (16x64 each); registers only.
        unsafe {
            std::arch::asm!("tdpbusd tmm{c}, tmm{a}, tmm{b}", c = const C, a = const A,
                            b = const B, options(nostack, nomem))
        }
    }
    #[inline(always)]
    unsafe fn store<const T: u8>(&mut self, p: *mut u8, stride: usize) {
        // SAFETY: the caller guarantees 16 writable rows of 64 bytes, `stride` apart.
        unsafe {
            std::arch::asm!("tilestored [{p} + {s}*1], tmm{t}", t = const T, p = in(reg) p,
                            s = in(reg) stride, options(nostack))
        }
    }
    #[inline(always)]
    unsafe fn release(&mut self) {
        // SAFETY: returns the tile state to its initial state; no memory.
        unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) }
    }
}

/// Plain-Rust AMX: eight tile registers and the instructions' semantics (Intel SDM, palette 1),
/// including their preconditions, which panic here where the CPU would fault.
pub(crate) struct Emulator {
    tiles: [[u8; 1024]; 8],
    configured: bool,
}

impl Emulator {
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        Emulator {
            tiles: [[0; 1024]; 8],
            configured: false,
        }
    }

    fn shape(&self, t: u8) -> (usize, usize) {
        assert!(self.configured, "AMX instruction before ldtilecfg");
        let t = t as usize;
        assert!(t < 8, "tmm{t} does not exist");
        (CONFIG.rows[t] as usize, CONFIG.colsb[t] as usize)
    }
}

impl TileUnit for Emulator {
    unsafe fn configure(&mut self) {
        assert_eq!(CONFIG.palette, 1);
        assert!(CONFIG.reserved.iter().all(|&b| b == 0) && CONFIG.start_row == 0);
        for t in 0..16 {
            let (r, c) = (CONFIG.rows[t] as usize, CONFIG.colsb[t] as usize);
            assert!(r <= 16 && c <= 64 && (t < 8 || r + c == 0) && (r == 0) == (c == 0));
        }
        // ldtilecfg zeroes every tile
        self.tiles = [[0; 1024]; 8];
        self.configured = true;
    }
    unsafe fn zero<const T: u8>(&mut self) {
        self.shape(T);
        self.tiles[T as usize].fill(0);
    }
    unsafe fn load<const T: u8>(&mut self, p: *const u8, stride: usize) {
        let (rows, colsb) = self.shape(T);
        let tile = &mut self.tiles[T as usize];
        tile.fill(0);
        for r in 0..rows {
            // SAFETY: the caller guarantees `rows` readable rows of `colsb` bytes.
            let src = unsafe { std::slice::from_raw_parts(p.add(r * stride), colsb) };
            tile[r * 64..r * 64 + colsb].copy_from_slice(src);
        }
    }
    unsafe fn dpbusd<const C: u8, const A: u8, const B: u8>(&mut self) {
        let ((cr, cc), (ar, ac), (br, bc)) = (self.shape(C), self.shape(A), self.shape(B));
        assert!(
            C != A && C != B && A != B,
            "tdpbusd needs three different tiles"
        );
        assert!(cr == ar && cc == bc && ac == 4 * br && cc % 4 == 0 && ac % 4 == 0);
        let (a, b) = (self.tiles[A as usize], self.tiles[B as usize]);
        let c = &mut self.tiles[C as usize];
        for m in 0..cr {
            for n in 0..cc / 4 {
                let at = m * 64 + 4 * n;
                let mut acc = i32::from_le_bytes(c[at..at + 4].try_into().unwrap());
                for k in 0..ac / 4 {
                    for i in 0..4 {
                        let prod =
                            a[m * 64 + 4 * k + i] as i32 * b[k * 64 + 4 * n + i] as i8 as i32;
                        acc = acc.wrapping_add(prod);
                    }
                }
                c[at..at + 4].copy_from_slice(&acc.to_le_bytes());
            }
        }
    }
    unsafe fn store<const T: u8>(&mut self, p: *mut u8, stride: usize) {
        let (rows, colsb) = self.shape(T);
        for r in 0..rows {
            // SAFETY: the caller guarantees `rows` writable rows of `colsb` bytes.
            let dst = unsafe { std::slice::from_raw_parts_mut(p.add(r * stride), colsb) };
            dst.copy_from_slice(&self.tiles[T as usize][r * 64..r * 64 + colsb]);
        }
    }
    unsafe fn release(&mut self) {
        self.configured = false;
        self.tiles = [[0; 1024]; 8];
    }
}

impl PreparedQConv {
    /// The GEMM conv on AMX tiles through `unit` (one per work item; see the module docs).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemm_amx<U: TileUnit>(
        &self,
        unit: impl Fn() -> U + Sync,
        p: &crate::conv::Conv2dParams,
        src: &Src<'_>,
        g: &Geom,
        per: usize,
        packed: &[PackedQB],
        residual: Option<(&[u8], i32, f32)>,
        y: &mut [u8],
    ) {
        let plan = self.plan(p, g, (per, packed), AMX_MR, false);
        let (cin_sg, cout_sg, taps, m, zbuf) =
            (plan.cin_sg, plan.cout_sg, plan.taps, plan.m, &plan.zbuf);
        let chunks = cin_sg.div_ceil(KC);
        let quads = cin_sg.div_ceil(4);
        let nk = taps * chunks;
        let out = OutPtr(y.as_mut_ptr());
        let fisa = crate::isa::current();
        plan.items.par_iter().for_each(|&(s, c, k)| {
            let pb = &packed[s];
            let my_blocks = plan.blocks(pb, k);
            let mut rows = vec![RowPtr(zbuf.as_ptr()); taps * AMX_MR];
            let mut scratch = super::conv::RowScratch::default();
            let mut panel = vec![0u8; nk * AMX_MR * KC];
            let mut btail = vec![0u8; 2 * TROWS * KC];
            let mut acc = vec![0i32; AMX_MR * NBLK];
            let mut tmp = [0f32; NBLK];
            let mut u = unit();
            // SAFETY: first tile instruction of this work item on this thread.
            unsafe { u.configure() };
            for tile in plan.run(c) {
                let p0 = tile * AMX_MR;
                let valid = AMX_MR.min(m - p0);
                src.rows(
                    g,
                    p,
                    zbuf,
                    s * cin_sg,
                    cin_sg,
                    p0,
                    AMX_MR,
                    &mut rows,
                    &mut scratch,
                );
                for t in 0..taps {
                    for ch in 0..chunks {
                        let k0 = ch * KC;
                        let len = (cin_sg - k0).min(KC);
                        let dst = &mut panel[(t * chunks + ch) * AMX_MR * KC..][..AMX_MR * KC];
                        for (i, d) in dst.chunks_exact_mut(KC).enumerate() {
                            // SAFETY: every row pointer has `cin_sg` readable bytes (an input
                            // pixel's group slice or the zero-point buffer), `k0 + len <= cin_sg`.
                            let src = unsafe {
                                std::slice::from_raw_parts(rows[t * AMX_MR + i].0.add(k0), len)
                            };
                            d[..len].copy_from_slice(src);
                            d[len..].fill(0);
                        }
                    }
                }
                for &(col0, nb, off) in my_blocks {
                    let width = (pb.n - col0).min(NBLK);
                    let c0 = s * cout_sg + col0;
                    let bstride = nb * 16 * 4;
                    for jp in (0..nb).step_by(2) {
                        let two = jp + 1 < nb;
                        // SAFETY (this block): tiles are configured; every A tile is 16 rows of
                        // the panel (64 bytes apart); B tiles are 16 rows of one block's packed
                        // vector (`bstride` apart, inside the block because the chunk is whole)
                        // or the zero-padded scratch copy; C tiles are stored into `acc`, whose
                        // rows are NBLK i32 = 256 bytes apart, 32 rows.
                        unsafe {
                            u.zero::<0>();
                            u.zero::<1>();
                            if two {
                                u.zero::<2>();
                                u.zero::<3>();
                            }
                            for t in 0..taps {
                                for ch in 0..chunks {
                                    let a = panel[(t * chunks + ch) * AMX_MR * KC..].as_ptr();
                                    let q0 = ch * 16;
                                    let qn = (quads - q0).min(16);
                                    let b_at = off + ((t * quads + q0) * nb * 16 + jp * 16) * 4;
                                    let (b0, b1, bs) = if qn == TROWS {
                                        let b0 = pb.data[b_at..].as_ptr().cast::<u8>();
                                        (b0, b0.add(64), bstride)
                                    } else {
                                        btail.fill(0);
                                        for r in 0..qn {
                                            for v in 0..1 + two as usize {
                                                let src =
                                                    &pb.data[b_at + r * bstride + v * 64..][..64];
                                                let dst = &mut btail[(v * TROWS + r) * KC
                                                    ..(v * TROWS + r + 1) * KC];
                                                for (d, &w) in dst.iter_mut().zip(src) {
                                                    *d = w as u8;
                                                }
                                            }
                                        }
                                        let b0 = btail.as_ptr();
                                        (b0, b0.add(TROWS * KC), KC)
                                    };
                                    u.load::<4>(a, KC);
                                    u.load::<5>(a.add(TROWS * KC), KC);
                                    u.load::<6>(b0, bs);
                                    u.dpbusd::<0, 4, 6>();
                                    u.dpbusd::<1, 5, 6>();
                                    if two {
                                        u.load::<7>(b1, bs);
                                        u.dpbusd::<2, 4, 7>();
                                        u.dpbusd::<3, 5, 7>();
                                    }
                                }
                            }
                            let cs = NBLK * 4;
                            let c = acc.as_mut_ptr();
                            u.store::<0>(c.add(jp * 16).cast(), cs);
                            u.store::<1>(c.add(TROWS * NBLK + jp * 16).cast(), cs);
                            if two {
                                u.store::<2>(c.add(jp * 16 + 16).cast(), cs);
                                u.store::<3>(c.add(TROWS * NBLK + jp * 16 + 16).cast(), cs);
                            }
                        }
                    }
                    for i in 0..valid {
                        let at = (p0 + i) * g.cout + c0;
                        let e = self.epilogue(c0, residual.map(|(r, z, mr)| (&r[at..], z, mr)));
                        // SAFETY: row p0+i, columns c0..c0+width of the output belong to this
                        // item alone (items partition tiles x super-groups x block ranges).
                        let o = unsafe { std::slice::from_raw_parts_mut(out.get().add(at), width) };
                        requant_row(fisa, &acc[i * NBLK..], &e, &mut tmp[..width], o);
                    }
                }
            }
            // SAFETY: last tile instruction of this work item.
            unsafe { u.release() };
        });
    }
}

/// Check the hardware tile path once against the scalar kernel on a small conv that covers
/// two K chunks with a partial one, an odd number of column vectors, padding, a partial pixel
/// block and a residual. `false` means AMX must not be used.
#[cfg(target_arch = "x86_64")]
pub(crate) fn hardware_agrees() -> bool {
    use super::QConvOutput;
    use crate::conv::Conv2dParams;
    use crate::isa::Int8Isa;
    let p = Conv2dParams {
        in_channels: 100,
        out_channels: 40,
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1, 1],
        dilation: [1, 1],
        groups: 1,
    };
    let (h, w) = (5, 7);
    let byte = |i: usize, s: usize| ((i * 131 + s * 71) % 251) as u8;
    let x: Vec<u8> = (0..h * w * 100).map(|i| byte(i, 1)).collect();
    let wt: Vec<i8> = (0..p.weight_len()).map(|i| byte(i, 2) as i8).collect();
    let r: Vec<u8> = (0..h * w * 40).map(|i| byte(i, 3)).collect();
    let bias: Vec<i32> = (0..40).map(|i| i * 1000 - 20000).collect();
    let out = QConvOutput {
        za: 7,
        multiplier: (0..40).map(|i| 1e-4 * (1.0 + i as f32 / 9.0)).collect(),
        zo: 100,
        out_scale: 0.05,
        act: Some(crate::Activation::Relu),
    };
    let Ok(conv) = PreparedQConv::new(p, &wt, Some(&bias), out) else {
        return false;
    };
    let res = Some((r.as_slice(), 9, 0.3));
    let want = conv.run_isa(Int8Isa::Scalar, &x, 1, h, w, res);
    let got = conv.run_amx_with(|| Hardware, &x, 1, h, w, res);
    matches!((want, got), (Ok(a), Ok(b)) if a == b)
}
