//! Int8 GEMM for quantized convolution and linear layers:
//! `C_u8 = requant(A_s8 · B_u8 - za·rowsum(A) + bias_i32)`, per output row (channel)
//! multiplier `m = s_a·s_w / s_out`, `q = clamp(round_half_even(v·m), qmin - zo, qmax - zo) + zo`.
//!
//! Weights (s8, symmetric) are packed once in panels of `MR` rows with K grouped by 4 (the
//! VNNI layout). Activations (u8, zero point `za`) are packed per column tile, either from a
//! dense matrix or from an implicit im2col whose padding reads `za` (a real zero). Accumulation
//! is exact in i32 on every path; the float requantization is the same IEEE sequence everywhere,
//! so all paths agree bit for bit with [`generic`], the scalar reference.

mod generic;
#[cfg(target_arch = "x86_64")]
mod x86_64;

use crate::isa::{self, Int8Isa};
use crate::sgemm::{im2col_row, Im2colGeom};
use crate::{shape_err, KernelError};
use rayon::prelude::*;

/// Rows per micro-tile.
pub const MR: usize = 12;
/// Columns per micro-tile.
pub const NR: usize = 32;

/// s8 weights packed as panels of `MR` rows, K padded to a multiple of 4; with each row's sum.
#[derive(Clone, Debug)]
pub struct PackedQA {
    m: usize,
    k: usize,
    kp: usize,
    data: Vec<i8>,
    row_sums: Vec<i32>,
}

impl PackedQA {
    /// Pack a row-major `m x k` s8 matrix.
    pub fn new(a: &[i8], m: usize, k: usize) -> Result<Self, KernelError> {
        if a.len() != m * k {
            return Err(shape_err(
                "qgemm",
                format!("weights of {} values are not {m}x{k}", a.len()),
            ));
        }
        let kp = k.div_ceil(4) * 4;
        let panels = m.div_ceil(MR);
        let mut data = vec![0i8; panels * kp * MR];
        for p in 0..panels {
            for g in 0..kp / 4 {
                for i in 0..MR {
                    let row = p * MR + i;
                    for t in 0..4 {
                        let kk = g * 4 + t;
                        if row < m && kk < k {
                            data[((p * (kp / 4) + g) * MR + i) * 4 + t] = a[row * k + kk];
                        }
                    }
                }
            }
        }
        let row_sums = (0..m)
            .map(|r| a[r * k..(r + 1) * k].iter().map(|&v| v as i32).sum())
            .collect();
        Ok(PackedQA {
            m,
            k,
            kp,
            data,
            row_sums,
        })
    }

    pub fn rows(&self) -> usize {
        self.m
    }

    pub fn cols(&self) -> usize {
        self.k
    }

    fn panel(&self, p: usize) -> &[i8] {
        &self.data[p * self.kp * MR..(p + 1) * self.kp * MR]
    }
}

/// The u8 right-hand side `B` (`k x n`).
#[derive(Clone, Copy)]
pub enum QRhs<'a> {
    Dense {
        b: &'a [u8],
        ldb: usize,
    },
    /// Implicit im2col of a `c x h x w` u8 image; padding reads the zero point.
    Im2col {
        x: &'a [u8],
        geom: Im2colGeom,
    },
}

/// Requantization of the i32 accumulators to u8.
#[derive(Clone, Copy)]
pub struct Requant<'a> {
    /// Activation zero point.
    pub za: i32,
    /// Per-row bias in the accumulator's scale (`s_a·s_w`).
    pub bias: Option<&'a [i32]>,
    /// Per-row `s_a·s_w[row] / s_out`.
    pub multiplier: &'a [f32],
    /// Output zero point.
    pub zo: i32,
    /// Output clamp (a fused ReLU raises `qmin` to `zo`).
    pub qmin: u8,
    pub qmax: u8,
    /// A quantized residual added before the clamp (a ResNet / MobileNet skip connection).
    pub residual: Option<QResidual<'a>>,
}

/// A u8 residual laid out like C (same row stride), with its own quantization.
#[derive(Clone, Copy)]
pub struct QResidual<'a> {
    pub data: &'a [u8],
    pub zero_point: i32,
    /// `s_residual / s_out`.
    pub multiplier: f32,
}

impl Requant<'_> {
    /// The scalar requantization every path reproduces exactly:
    /// `y = v·m + (r - z_r)·m_r` (two products, one sum, no fused multiply-add), clamped, rounded
    /// half to even, plus the output zero point.
    #[inline]
    pub fn apply(&self, acc: i32, row: usize, row_sum: i32, res: Option<u8>) -> u8 {
        let v = acc - self.za * row_sum + self.bias.map_or(0, |b| b[row]);
        let lo = self.qmin as f32 - self.zo as f32;
        let hi = self.qmax as f32 - self.zo as f32;
        let mut y = v as f32 * self.multiplier[row];
        if let (Some(r), Some(q)) = (res, self.residual) {
            y += (r as i32 - q.zero_point) as f32 * q.multiplier;
        }
        (y.max(lo).min(hi).round_ties_even() as i32 + self.zo) as u8
    }
}

/// A raw output pointer shared by tiles writing disjoint regions.
#[derive(Clone, Copy)]
struct OutPtr(*mut u8);
// SAFETY: every tile writes a disjoint region of C, which outlives the parallel loop.
unsafe impl Send for OutPtr {}
// SAFETY: as above; no tile reads another's output.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    fn get(&self) -> *mut u8 {
        self.0
    }
}

/// One micro-tile.
pub(crate) struct QTile<'a> {
    /// Packed A panel: `kp/4` groups of `MR` x 4 bytes.
    pub a: &'a [i8],
    /// Packed B tile: `kp/4` groups of `NR` x 4 bytes.
    pub b: &'a [u8],
    pub kp: usize,
    pub row0: usize,
    pub rows: usize,
    pub cols: usize,
    pub row_sums: &'a [i32],
    pub c: *mut u8,
    pub c_off: usize,
    pub ldc: usize,
    pub rq: &'a Requant<'a>,
}

/// `C = requant(A·B)`; C is `m x n` u8 with row stride `ldc`.
pub fn qgemm(
    a: &PackedQA,
    rhs: QRhs<'_>,
    n: usize,
    c: &mut [u8],
    ldc: usize,
    rq: &Requant<'_>,
) -> Result<(), KernelError> {
    qgemm_isa(isa::current_int8(), a, rhs, n, c, ldc, rq)
}

/// [`qgemm`] on a given ISA (tests).
pub fn qgemm_isa(
    isa: Int8Isa,
    a: &PackedQA,
    rhs: QRhs<'_>,
    n: usize,
    c: &mut [u8],
    ldc: usize,
    rq: &Requant<'_>,
) -> Result<(), KernelError> {
    let (m, k) = (a.m, a.k);
    if m == 0 || n == 0 {
        return Ok(());
    }
    let rhs_ok = match &rhs {
        QRhs::Dense { b, ldb } => *ldb >= n && (k == 0 || b.len() >= (k - 1) * ldb + n),
        QRhs::Im2col { x, geom: g } => {
            x.len() >= g.c * g.h * g.w && k == g.c * g.kernel[0] * g.kernel[1] && n == g.oh * g.ow
        }
    };
    if !rhs_ok || ldc < n || c.len() < (m - 1) * ldc + n {
        return Err(shape_err(
            "qgemm",
            format!("operands too small for {m}x{k} by {k}x{n}"),
        ));
    }
    if rq.multiplier.len() < m
        || rq.bias.is_some_and(|b| b.len() < m)
        || !(0..=255).contains(&rq.za)
        || !(0..=255).contains(&rq.zo)
        || rq
            .residual
            .is_some_and(|r| r.data.len() < (m - 1) * ldc + n)
    {
        return Err(shape_err(
            "qgemm",
            "requantization parameters do not match the output",
        ));
    }
    let kp = a.kp;
    let subs = n.div_ceil(NR);
    let tile_len = kp * NR;
    let mut packed = vec![0u8; subs * tile_len];
    packed
        .par_chunks_mut(tile_len)
        .enumerate()
        .for_each(|(s, dst)| {
            pack_b_tile(&rhs, k, rq.za as u8, s * NR, ((s + 1) * NR).min(n), dst);
        });
    let panels = m.div_ceil(MR);
    let threads = rayon::current_num_threads().max(1);
    let mut pb = panels;
    while pb > 1 && panels.div_ceil(pb) * subs < 4 * threads {
        pb = pb.div_ceil(2);
    }
    let items: Vec<(usize, usize)> = (0..subs)
        .flat_map(|s| (0..panels.div_ceil(pb)).map(move |g| (g, s)))
        .collect();
    let out = OutPtr(c.as_mut_ptr());
    items.par_iter().for_each(|&(g, s)| {
        for p in g * pb..((g + 1) * pb).min(panels) {
            let row0 = p * MR;
            let x = s * NR;
            let t = QTile {
                a: a.panel(p),
                b: &packed[s * tile_len..(s + 1) * tile_len],
                kp,
                row0,
                rows: (m - row0).min(MR),
                cols: (n - x).min(NR),
                row_sums: &a.row_sums,
                c: out.get(),
                c_off: row0 * ldc + x,
                ldc,
                rq,
            };
            run_tile(isa, &t);
        }
    });
    Ok(())
}

fn run_tile(isa: Int8Isa, t: &QTile<'_>) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: `isa` never exceeds `isa::best_int8()`, which detected AVX-512F/BW/VNNI; the
        // packed tiles hold `kp/4` full groups and `qgemm` bounds-checked C for rows x cols.
        Int8Isa::Avx512Vnni => return unsafe { x86_64::tile_vnni(t) },
        // SAFETY: AVX2 was detected.
        Int8Isa::Avx2 => return unsafe { x86_64::tile_avx2(t) },
        Int8Isa::Scalar => {}
    }
    let _ = isa;
    generic::tile(t)
}

/// Pack columns `n0..n1` of B into one tile: `kp/4` groups of `NR` columns x 4 k values.
fn pack_b_tile(rhs: &QRhs<'_>, k: usize, za: u8, n0: usize, n1: usize, dst: &mut [u8]) {
    let mut row = vec![0u8; n1 - n0];
    for kk in 0..k {
        let src: &[u8] = match rhs {
            QRhs::Dense { b, ldb } => &b[kk * ldb + n0..kk * ldb + n1],
            QRhs::Im2col { x, geom } => {
                im2col_row(x, geom, kk, n0, n1, za, &mut row);
                &row
            }
        };
        let (g, t) = (kk / 4, kk % 4);
        for (j, &v) in src.iter().enumerate() {
            dst[(g * NR + j) * 4 + t] = v;
        }
    }
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

    /// Exact i32 reference product.
    fn reference(a: &[i8], b: &[u8], m: usize, k: usize, n: usize, ldb: usize) -> Vec<i32> {
        let mut out = vec![0i32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|p| a[i * k + p] as i32 * b[p * ldb + j] as i32)
                    .sum();
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn every_isa_is_bit_exact(m in 1usize..30, k in 1usize..300, n in 1usize..80, padb in 0usize..3, padc in 0usize..3,
                                  za in 0i32..256, zo in 0i32..256, relu in any::<bool>(), bias in any::<bool>(),
                                  scale in 1e-5f32..1e-2, seed in any::<u64>()) {
            let (ldb, ldc) = (n + padb, n + padc);
            let a: Vec<i8> = bytes(m * k, seed).iter().map(|&v| v as i8).collect();
            let b = bytes(k * ldb, seed ^ 1);
            let bias_v: Vec<i32> = (0..m as i32).map(|i| (i * 977 - 5000) * (seed as i32 % 7)).collect();
            let mult: Vec<f32> = (0..m).map(|i| scale * (1.0 + i as f32 / 7.0)).collect();
            let resid = bytes(m * ldc, seed ^ 9);
            let rq = Requant { za, bias: bias.then_some(bias_v.as_slice()), multiplier: &mult, zo,
                               qmin: if relu { zo as u8 } else { 0 }, qmax: 255,
                               residual: bias.then_some(QResidual { data: &resid, zero_point: 77, multiplier: 0.37 }) };
            let acc = reference(&a, &b, m, k, n, ldb);
            let pa = PackedQA::new(&a, m, k).unwrap();
            for isa in isa::available_int8() {
                let mut c = vec![0u8; m * ldc];
                qgemm_isa(isa, &pa, QRhs::Dense { b: &b, ldb }, n, &mut c, ldc, &rq).unwrap();
                for i in 0..m {
                    for j in 0..n {
                        let want = rq.apply(acc[i * n + j], i, pa.row_sums[i], Some(resid[i * ldc + j]));
                        prop_assert_eq!(c[i * ldc + j], want, "{:?} [{},{}]", isa, i, j);
                    }
                }
            }
        }

        #[test]
        fn implicit_im2col_pads_with_the_zero_point(c in 1usize..5, k in 1usize..4, s in 1usize..3, pad in 0usize..2,
                                                    h in 2usize..9, w in 2usize..9, m in 1usize..14, za in 0i32..256, seed in any::<u64>()) {
            let pad = pad.min(k - 1);
            let (h, w) = (h.max(k), w.max(k));
            let (oh, ow) = ((h + 2 * pad - k) / s + 1, (w + 2 * pad - k) / s + 1);
            let x = bytes(c * h * w, seed);
            let kk = c * k * k;
            let a: Vec<i8> = bytes(m * kk, seed ^ 3).iter().map(|&v| v as i8).collect();
            let geom = Im2colGeom { c, h, w, oh, ow, kernel: [k, k], stride: [s, s], padding: [pad, pad], dilation: [1, 1] };
            // materialised im2col with the zero point as padding
            let mut col = vec![za as u8; kk * oh * ow];
            for ci in 0..c { for ky in 0..k { for kx in 0..k { for oy in 0..oh { for ox in 0..ow {
                let (iy, ix) = ((oy * s + ky) as isize - pad as isize, (ox * s + kx) as isize - pad as isize);
                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                    col[((ci * k + ky) * k + kx) * oh * ow + oy * ow + ox] = x[(ci * h + iy as usize) * w + ix as usize];
                }
            }}}}}
            let mult = vec![0.003f32; m];
            let rq = Requant { za, bias: None, multiplier: &mult, zo: 128, qmin: 0, qmax: 255, residual: None };
            let pa = PackedQA::new(&a, m, kk).unwrap();
            let n = oh * ow;
            let mut want = vec![0u8; m * n];
            qgemm_isa(Int8Isa::Scalar, &pa, QRhs::Dense { b: &col, ldb: n }, n, &mut want, n, &rq).unwrap();
            for isa in isa::available_int8() {
                let mut got = vec![0u8; m * n];
                qgemm_isa(isa, &pa, QRhs::Im2col { x: &x, geom }, n, &mut got, n, &rq).unwrap();
                prop_assert_eq!(&got, &want, "{:?}", isa);
            }
        }
    }

    #[test]
    fn bad_operands_are_errors() {
        let pa = PackedQA::new(&[1; 6], 2, 3).unwrap();
        let mult = [1.0f32; 2];
        let rq = Requant {
            za: 0,
            bias: None,
            multiplier: &mult,
            zo: 0,
            qmin: 0,
            qmax: 255,
            residual: None,
        };
        let mut c = vec![0u8; 4];
        assert!(qgemm(&pa, QRhs::Dense { b: &[1; 5], ldb: 2 }, 2, &mut c, 2, &rq).is_err());
        let short = Requant {
            multiplier: &mult[..1],
            ..rq
        };
        assert!(qgemm(
            &pa,
            QRhs::Dense { b: &[1; 6], ldb: 2 },
            2,
            &mut c,
            2,
            &short
        )
        .is_err());
        assert!(PackedQA::new(&[1; 5], 2, 3).is_err());
    }
}
