//! qvision's own f32 GEMM for convolution shapes: `C[m x n] = A[m x k] · B[k x n]`, with the
//! weights `A` packed once and the activations `B` read in place (row stride `ldb`), so a 1x1
//! convolution over NCHW needs no copy at all. Bias, residual add and ReLU/ReLU6 are fused into
//! the store; other activations run on the tile while it is in L1.
//!
//! Micro-kernels: AVX-512 (12 rows x 32 columns), AVX2+FMA (6 x 16), and a portable scalar
//! reference ([`generic`]). Work is split over `(row panel, column block)` tiles with rayon.

mod generic;
#[cfg(target_arch = "x86_64")]
mod x86_64;

use crate::act::Activation;
use crate::isa::{self, Isa};
use crate::{shape_err, KernelError};
use rayon::prelude::*;

/// Rows per micro-kernel tile for an ISA.
pub fn mr(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 12,
        Isa::Avx2 => 6,
        Isa::Scalar => 4,
    }
}

/// Columns per micro-kernel tile for an ISA.
pub fn nr(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 32,
        Isa::Avx2 => 16,
        Isa::Scalar => 8,
    }
}

/// Weights packed in panels of `mr` rows: for each panel, for each k, `mr` values (zero padded).
#[derive(Clone, Debug)]
pub struct PackedA {
    isa: Isa,
    m: usize,
    k: usize,
    data: Vec<f32>,
}

impl PackedA {
    /// Pack a row-major `m x k` matrix for the current ISA.
    pub fn new(a: &[f32], m: usize, k: usize) -> Result<Self, KernelError> {
        Self::for_isa(isa::current(), a, m, k)
    }

    /// Pack for a given ISA (tests).
    pub fn for_isa(isa: Isa, a: &[f32], m: usize, k: usize) -> Result<Self, KernelError> {
        if a.len() != m * k {
            return Err(shape_err(
                "sgemm",
                format!("weights of {} values are not {m}x{k}", a.len()),
            ));
        }
        let r = mr(isa);
        let panels = m.div_ceil(r);
        let mut data = vec![0.0f32; panels * k * r];
        for p in 0..panels {
            for kk in 0..k {
                for i in 0..r {
                    let row = p * r + i;
                    if row < m {
                        data[(p * k + kk) * r + i] = a[row * k + kk];
                    }
                }
            }
        }
        Ok(PackedA { isa, m, k, data })
    }

    pub fn rows(&self) -> usize {
        self.m
    }

    pub fn cols(&self) -> usize {
        self.k
    }

    fn panel(&self, p: usize) -> &[f32] {
        let r = mr(self.isa);
        &self.data[p * self.k * r..(p + 1) * self.k * r]
    }
}

/// What the store adds to each output tile.
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// One value per output row.
    pub bias: Option<&'a [f32]>,
    /// Added before the activation; laid out like C (row stride `ldc`).
    pub residual: Option<&'a [f32]>,
    pub act: Option<Activation>,
}

/// The right-hand side `B` (`k x n`).
#[derive(Clone, Copy)]
pub enum Rhs<'a> {
    /// Row-major, row stride `ldb` (a 1x1 convolution's NCHW input as it is).
    Dense { b: &'a [f32], ldb: usize },
    /// The implicit im2col matrix of a `c x h x w` image: row `(ci, ky, kx)`, column `(oy, ox)`.
    /// Packing gathers straight from the image; the matrix is never materialised.
    Im2col { x: &'a [f32], geom: Im2colGeom },
}

/// Convolution geometry for [`Rhs::Im2col`].
#[derive(Clone, Copy, Debug)]
pub struct Im2colGeom {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
}

impl Rhs<'_> {
    fn check(&self, k: usize, n: usize) -> bool {
        match self {
            Rhs::Dense { b, ldb } => *ldb >= n && (k == 0 || b.len() >= (k - 1) * ldb + n),
            Rhs::Im2col { x, geom: g } => {
                x.len() >= g.c * g.h * g.w
                    && k == g.c * g.kernel[0] * g.kernel[1]
                    && n == g.oh * g.ow
                    && g.stride.iter().all(|&s| s > 0)
            }
        }
    }
}

/// `C = act(A·B + bias + residual)` with `C` (`m x n`, row stride `ldc`) written in place.
pub fn sgemm(
    a: &PackedA,
    rhs: Rhs<'_>,
    n: usize,
    c: &mut [f32],
    ldc: usize,
    ep: Epilogue<'_>,
) -> Result<(), KernelError> {
    let (m, k) = (a.m, a.k);
    if m == 0 || n == 0 {
        return Ok(());
    }
    let need = |rows: usize, ld: usize| (rows - 1) * ld + n;
    if ldc < n || !rhs.check(k, n) || c.len() < need(m, ldc) {
        return Err(shape_err(
            "sgemm",
            format!("operands too small for {m}x{k} by {k}x{n}"),
        ));
    }
    if ep.bias.is_some_and(|v| v.len() < m) || ep.residual.is_some_and(|r| r.len() < need(m, ldc)) {
        return Err(shape_err(
            "sgemm",
            "bias or residual smaller than the output",
        ));
    }
    let (r, cols) = (mr(a.isa), nr(a.isa));
    let panels = m.div_ceil(r);
    let threads = rayon::current_num_threads().max(1);
    let out = crate::OutPtr(c.as_mut_ptr());
    let c_len = c.len();
    // One micro-tile: panel p, columns x..x+w, B panel `bsub` (k x cols).
    let tile = |p: usize, x: usize, w: usize, bsub: &[f32]| {
        let m0 = p * r;
        let rows = (m - m0).min(r);
        let t = Tile {
            a: a.panel(p),
            k,
            b: bsub,
            ldb: cols,
            c: out.get(),
            c_len,
            c_off: m0 * ldc + x,
            ldc,
            rows,
            cols: w,
            bias: ep.bias.map(|v| &v[m0..m0 + rows]),
            residual: ep.residual.map(|res| &res[m0 * ldc + x..]),
            act: ep.act,
        };
        run_tile(a.isa, &t);
    };
    let subs = n.div_ceil(cols);
    let nb = cols * 8;
    if n.div_ceil(nb) >= 2 * threads {
        // Wide: each work item packs one column block of B and runs every panel over it.
        (0..n.div_ceil(nb)).into_par_iter().for_each(|j| {
            let (n0, n1) = (j * nb, ((j + 1) * nb).min(n));
            PACKED_B.with(|buf| {
                let mut buf = buf.borrow_mut();
                pack_b(&rhs, k, n0, n1, cols, &mut buf);
                for p in 0..panels {
                    for (s, x) in (n0..n1).step_by(cols).enumerate() {
                        tile(
                            p,
                            x,
                            (n1 - x).min(cols),
                            &buf[s * k * cols..(s + 1) * k * cols],
                        );
                    }
                }
            });
        });
    } else {
        // Narrow: pack all of B once (in parallel), then share (panel, column tile) pairs.
        let mut packed = std::mem::take(&mut *SHARED_B.lock().unwrap_or_else(|e| e.into_inner()));
        packed.clear();
        packed.resize(subs * k * cols, 0.0);
        packed
            .par_chunks_mut(k * cols)
            .enumerate()
            .for_each(|(s, dst)| {
                let (n0, n1) = (s * cols, ((s + 1) * cols).min(n));
                PACKED_B.with(|buf| {
                    let mut buf = buf.borrow_mut();
                    pack_b(&rhs, k, n0, n1, cols, &mut buf);
                    dst.copy_from_slice(&buf[..k * cols]);
                });
            });
        let mut pb = panels;
        while pb > 1 && panels.div_ceil(pb) * subs < 4 * threads {
            pb = pb.div_ceil(2);
        }
        let items: Vec<(usize, usize)> = (0..subs)
            .flat_map(|s| (0..panels.div_ceil(pb)).map(move |g| (g, s)))
            .collect();
        items.par_iter().for_each(|&(g, s)| {
            let x = s * cols;
            for p in g * pb..((g + 1) * pb).min(panels) {
                tile(
                    p,
                    x,
                    (n - x).min(cols),
                    &packed[s * k * cols..(s + 1) * k * cols],
                );
            }
        });
        *SHARED_B.lock().unwrap_or_else(|e| e.into_inner()) = packed;
    }
    Ok(())
}

/// Reused buffer for a whole packed B (narrow GEMMs).
static SHARED_B: std::sync::Mutex<Vec<f32>> = std::sync::Mutex::new(Vec::new());

thread_local! {
    static PACKED_B: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Copy columns `n0..n1` of B into `cols`-wide panels, each `k x cols` contiguous, the last
/// zero-padded: the micro-kernels then stream B sequentially.
fn pack_b(rhs: &Rhs<'_>, k: usize, n0: usize, n1: usize, cols: usize, out: &mut Vec<f32>) {
    let subs = (n1 - n0).div_ceil(cols);
    out.clear();
    out.resize(subs * k * cols + (n1 - n0), 0.0);
    let (panels, row) = out.split_at_mut(subs * k * cols);
    for kk in 0..k {
        let src: &[f32] = match rhs {
            Rhs::Dense { b, ldb } => &b[kk * ldb + n0..kk * ldb + n1],
            Rhs::Im2col { x, geom } => {
                im2col_row(x, geom, kk, n0, n1, 0.0, row);
                row
            }
        };
        for s in 0..subs {
            let lo = s * cols;
            let w = (n1 - n0 - lo).min(cols);
            let d = (s * k + kk) * cols;
            panels[d..d + w].copy_from_slice(&src[lo..lo + w]);
        }
    }
    out.truncate(subs * k * cols);
}

/// Columns `n0..n1` of im2col row `kk` (channel, ky, kx) into `row`; taps in the padding read
/// `pad` (0.0 for f32, the zero point for u8).
pub(crate) fn im2col_row<T: Copy>(
    x: &[T],
    g: &Im2colGeom,
    kk: usize,
    n0: usize,
    n1: usize,
    pad: T,
    row: &mut [T],
) {
    let [kh, kw] = g.kernel;
    let (ci, ky, kx) = (kk / (kh * kw), (kk / kw) % kh, kk % kw);
    let plane = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
    let off = (kx * g.dilation[1]) as isize - g.padding[1] as isize;
    let (lo_all, hi_all) = valid_range(g.ow, g.stride[1], off, g.w);
    let mut col = n0;
    while col < n1 {
        let (oy, ox0) = (col / g.ow, col % g.ow);
        let ox1 = (ox0 + (n1 - col)).min(g.ow);
        let dst = &mut row[col - n0..col - n0 + (ox1 - ox0)];
        let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize - g.padding[0] as isize;
        if iy < 0 || iy >= g.h as isize {
            dst.fill(pad);
        } else {
            let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
            let (lo, hi) = (lo_all.clamp(ox0, ox1), hi_all.clamp(ox0, ox1));
            dst[..lo - ox0].fill(pad);
            dst[hi.max(lo) - ox0..].fill(pad);
            if g.stride[1] == 1 && hi > lo {
                let s0 = (lo as isize + off) as usize;
                dst[lo - ox0..hi - ox0].copy_from_slice(&src[s0..s0 + (hi - lo)]);
            } else {
                for ox in lo..hi {
                    dst[ox - ox0] = src[(ox as isize * g.stride[1] as isize + off) as usize];
                }
            }
        }
        col += ox1 - ox0;
    }
}

/// Output positions `ox` in `lo..hi` that read inside a row of `w`: `0 <= ox*stride + off < w`.
pub(crate) fn valid_range(ow: usize, stride: usize, off: isize, w: usize) -> (usize, usize) {
    let s = stride as isize;
    let lo = if off >= 0 { 0 } else { ((-off) + s - 1) / s };
    let hi = if (w as isize) <= off {
        0
    } else {
        ((w as isize - off) + s - 1) / s
    };
    let lo = (lo as usize).min(ow);
    let hi = (hi as usize).min(ow);
    (lo, hi.max(lo))
}

/// One micro-tile: `rows <= mr`, `cols <= nr`.
pub(crate) struct Tile<'a> {
    /// Packed panel, `k * mr` values.
    pub a: &'a [f32],
    pub k: usize,
    /// B starting at this tile's first column.
    pub b: &'a [f32],
    pub ldb: usize,
    pub c: *mut f32,
    pub c_len: usize,
    pub c_off: usize,
    pub ldc: usize,
    pub rows: usize,
    pub cols: usize,
    pub bias: Option<&'a [f32]>,
    /// Residual starting at this tile's first element.
    pub residual: Option<&'a [f32]>,
    pub act: Option<Activation>,
}

fn run_tile(isa: Isa, t: &Tile<'_>) {
    debug_assert!(t.c_off + (t.rows - 1) * t.ldc + t.cols <= t.c_len);
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: `isa` never exceeds `isa::best()`, which detected AVX-512F; `sgemm` checked
        // that every row and column of the tile lies inside A, B, C and the residual.
        Isa::Avx512 => return unsafe { x86_64::tile_avx512(t) },
        // SAFETY: as above, with AVX2 and FMA detected.
        Isa::Avx2 => return unsafe { x86_64::tile_avx2(t) },
        Isa::Scalar => {}
    }
    generic::tile(t, mr(isa));
}

/// Apply the non-ReLU activations to a stored tile (the SIMD kernels fuse ReLU and ReLU6).
pub(crate) fn finish_tile(t: &Tile<'_>, fused_relu: bool) {
    let Some(act) = t.act else { return };
    if fused_relu && matches!(act, Activation::Relu | Activation::Relu6) {
        return;
    }
    for i in 0..t.rows {
        // SAFETY: row i of the tile lies inside C (checked by `sgemm`), and no other tile
        // touches it.
        let row = unsafe { std::slice::from_raw_parts_mut(t.c.add(t.c_off + i * t.ldc), t.cols) };
        row.iter_mut().for_each(|v| *v = act.apply_scalar(*v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn every_isa_matches_reference(m in 1usize..40, k in 1usize..600, n in 1usize..90, padb in 0usize..4,
                                       padc in 0usize..4, bias in any::<bool>(), res in any::<bool>(),
                                       act in 0usize..4, seed in any::<u64>()) {
            let (ldb, ldc) = (n + padb, n + padc);
            let a = reference::pseudo_random(m * k, seed);
            let b = reference::pseudo_random(k * ldb, seed ^ 1);
            let bv = reference::pseudo_random(m, seed ^ 2);
            let rv = reference::pseudo_random(m * ldc, seed ^ 3);
            let act = [None, Some(Activation::Relu), Some(Activation::Relu6), Some(Activation::Hardswish)][act];
            let mut want = reference::matmul(&a, &b, m, k, n, ldb, bias.then_some(bv.as_slice()));
            for i in 0..m {
                for j in 0..n {
                    let v = &mut want[i * n + j];
                    if res { *v += rv[i * ldc + j]; }
                    if let Some(f) = act { *v = f.apply_scalar(*v); }
                }
            }
            for isa in isa::available() {
                let pa = PackedA::for_isa(isa, &a, m, k).unwrap();
                let mut c = vec![f32::NAN; m * ldc];
                let ep = Epilogue { bias: bias.then_some(bv.as_slice()), residual: res.then_some(rv.as_slice()), act };
                sgemm(&pa, Rhs::Dense { b: &b, ldb }, n, &mut c, ldc, ep).unwrap();
                for i in 0..m {
                    for j in 0..n {
                        let (g, w) = (c[i * ldc + j], want[i * n + j]);
                        prop_assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{isa:?} [{i},{j}]: {g} vs {w}");
                    }
                }
            }
        }
    }

    #[test]
    fn small_operands_are_errors() {
        let pa = PackedA::new(&[1.0; 6], 2, 3).unwrap();
        let mut c = vec![0.0; 4];
        let rhs = Rhs::Dense {
            b: &[1.0; 5],
            ldb: 2,
        };
        assert!(sgemm(&pa, rhs, 2, &mut c, 2, Epilogue::default()).is_err());
        assert!(PackedA::new(&[1.0; 5], 2, 3).is_err());
    }
}
