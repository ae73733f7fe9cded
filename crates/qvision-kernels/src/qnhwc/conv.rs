//! [`PreparedQConv`]: a quantized convolution (or linear layer) over NHWC u8 activations.

use super::{
    float_isa, requant_row_body, run_tile, Epilogue, Fused, OutPtr, PackedQB, RowPtr, TileRows, MR,
    NBLK,
};
use crate::conv::Conv2dParams;
use crate::isa::{self, Int8Isa};
use crate::{shape_err, Activation, KernelError};
use rayon::prelude::*;

/// Output quantization of a [`PreparedQConv`].
#[derive(Clone, Debug, PartialEq)]
pub struct QConvOutput {
    /// Input zero point.
    pub za: u8,
    /// Per output channel `s_in * s_w[c] / s_out`.
    pub multiplier: Vec<f32>,
    /// Output zero point and scale.
    pub zo: u8,
    pub out_scale: f32,
    /// Fused activation: ReLU / ReLU6 become the clamp, others run in real units.
    pub act: Option<Activation>,
}

#[derive(Debug)]
enum Mode {
    /// One packed GEMM per super-group of `per` groups; for groups of 4 or 8 channels in and
    /// out (on AVX-512 VNNI, not AMX) a direct kernel's weights as well.
    Gemm {
        per: usize,
        packed: Vec<PackedQB>,
        #[cfg(target_arch = "x86_64")]
        grouped: Option<super::x86_64::GroupedW>,
    },
    /// A dense conv over few input channels (a stem reading the image): each tile's taps are
    /// gathered into rows of `kp` bytes (`taps x cin`, padded to whole quads with the zero
    /// point) and multiplied as a 1x1 conv, instead of one short row per tap.
    Im2col { kp: usize, packed: Vec<PackedQB> },
    /// Direct depthwise: weights widened to i32, `[tap][channel]`, and `bias - za * sum(w)`
    /// for the SIMD path (whose padding taps read the zero point); for 3x3 / 5x5 kernels on
    /// x86_64, the tap-paired form of the AVX-512 interior kernel.
    Depthwise {
        w: Vec<i32>,
        shift_zp: Vec<i32>,
        #[cfg(target_arch = "x86_64")]
        paired: Option<super::x86_64::PairedDw>,
    },
}

/// A quantized convolution with weights packed once.
#[derive(Debug)]
pub struct PreparedQConv {
    pub(super) params: Conv2dParams,
    mode: Mode,
    /// Per output channel: `bias - za * colsum` (GEMM) or `bias` (depthwise).
    pub(super) shift: Vec<i32>,
    /// `[tap][output channel]`: `za * sum of the tap's weights`, what a tap skipped as padding
    /// leaves out of the sums (GEMM convs over several taps with a nonzero input zero point;
    /// empty otherwise).
    tap_zsum: Vec<i32>,
    pub(super) out: QConvOutput,
    /// The GEMM plans of recent runs (see [`PreparedQConv::plan`]).
    plans: PlanCache,
}

/// What a [`Plan`] depends on besides the conv itself: the input's `(n, h, w)`, the tile
/// height, whether rows are read in place, and the thread count.
type PlanKey = (usize, usize, usize, usize, bool, usize);

/// A few recent [`Plan`]s per conv: building one (work items, the strips of a padded conv)
/// costs microseconds on the calling thread while the others wait, ~45 µs per ResNet-50 run.
#[derive(Debug, Default)]
struct PlanCache(std::sync::Mutex<Vec<(PlanKey, std::sync::Arc<Plan>)>>);

/// Plans kept per conv (a server may see a few input sizes and thread counts).
const PLANS_KEPT: usize = 4;

crate::isa::multiversion!(pub(super) fn requant_row(acc: &[i32], e: &Epilogue<'_>, tmp: &mut [f32], out: &mut [u8]) => requant_row_body);

impl PreparedQConv {
    /// `weight` is PyTorch's `out x in/groups x kh x kw` s8 layout; `bias` is in the
    /// accumulator's scale (`s_in * s_w`).
    pub fn new(
        params: Conv2dParams,
        weight: &[i8],
        bias: Option<&[i32]>,
        out: QConvOutput,
    ) -> Result<Self, KernelError> {
        params.validate()?;
        let p = &params;
        if weight.len() != p.weight_len() {
            return Err(shape_err(
                "qconv2d",
                format!(
                    "weight has {} values, want {}",
                    weight.len(),
                    p.weight_len()
                ),
            ));
        }
        if out.multiplier.len() != p.out_channels || bias.is_some_and(|b| b.len() != p.out_channels)
        {
            return Err(shape_err(
                "qconv2d",
                "bias or multipliers do not match the output channels",
            ));
        }
        if !(out.out_scale > 0.0 && out.out_scale.is_finite()) {
            return Err(shape_err("qconv2d", "output scale must be positive"));
        }
        let taps = p.kernel[0] * p.kernel[1];
        let (cin_g, cout_g) = (p.in_channels / p.groups, p.out_channels / p.groups);
        let bias = |c: usize| bias.map_or(0, |b| b[c]);
        if p.groups > 1 && cin_g == 1 && cout_g == 1 {
            let c = p.in_channels;
            let mut w = vec![0i32; taps * c];
            for ch in 0..c {
                for t in 0..taps {
                    w[t * c + ch] = weight[ch * taps + t] as i32;
                }
            }
            let shift_zp: Vec<i32> = (0..c)
                .map(|ch| bias(ch) - out.za as i32 * (0..taps).map(|t| w[t * c + ch]).sum::<i32>())
                .collect();
            #[cfg(target_arch = "x86_64")]
            // (measured: faster from 64 channels on; at 32 the 16-lane kernel wins)
            let paired = (params.kernel[0] == params.kernel[1]
                && matches!(params.kernel[0], 3 | 5 | 7)
                && c >= 64)
                .then(|| super::x86_64::PairedDw::new(&w, taps, c, &shift_zp, &out.multiplier));
            return Ok(PreparedQConv {
                params,
                mode: Mode::Depthwise {
                    w,
                    shift_zp,
                    #[cfg(target_arch = "x86_64")]
                    paired,
                },
                shift: (0..c).map(bias).collect(),
                tap_zsum: vec![],
                out,
                plans: PlanCache::default(),
            });
        }
        let za = out.za as i32;
        if p.groups == 1 && p.in_channels < 4 && taps > 1 {
            let cin = p.in_channels;
            let kp = (taps * cin).next_multiple_of(4);
            let pb = PackedQB::new(p.out_channels, 1, kp, |col, _, k| {
                if k < taps * cin {
                    weight[(col * cin + k % cin) * taps + k / cin]
                } else {
                    0
                }
            });
            let packed = vec![pb];
            return Ok(PreparedQConv {
                params,
                shift: gemm_shift(&packed, za, bias),
                tap_zsum: vec![],
                mode: Mode::Im2col { kp, packed },
                out,
                plans: PlanCache::default(),
            });
        }
        let per = (1..=p.groups)
            .find(|&d| p.groups.is_multiple_of(d) && d * cout_g >= 16)
            .unwrap_or(p.groups);
        let packed: Vec<PackedQB> = (0..p.groups / per)
            .map(|sg| {
                PackedQB::new(per * cout_g, taps, per * cin_g, |col, t, ci| {
                    if col / cout_g != ci / cin_g {
                        return 0;
                    }
                    let co = (sg * per + col / cout_g) * cout_g + col % cout_g;
                    weight[(co * cin_g + ci % cin_g) * taps + t]
                })
            })
            .collect();
        let tap_zsum = if za != 0 && taps > 1 {
            (0..taps)
                .flat_map(|t| {
                    (0..p.out_channels).map(move |co| {
                        za * (0..cin_g)
                            .map(|ci| weight[(co * cin_g + ci) * taps + t] as i32)
                            .sum::<i32>()
                    })
                })
                .collect()
        } else {
            vec![]
        };
        // groups of 4 or 8 channels in and out, whole vectors of 16 channels: the direct kernel
        #[cfg(target_arch = "x86_64")]
        let grouped = (p.groups > 1
            && cin_g == cout_g
            && matches!(cin_g, 4 | 8)
            && p.out_channels.is_multiple_of(16))
        .then(|| super::x86_64::GroupedW::new(weight, p.out_channels, cin_g, taps));
        Ok(PreparedQConv {
            params,
            shift: gemm_shift(&packed, za, bias),
            tap_zsum,
            mode: Mode::Gemm {
                per,
                packed,
                #[cfg(target_arch = "x86_64")]
                grouped,
            },
            out,
            plans: PlanCache::default(),
        })
    }

    pub fn params(&self) -> &Conv2dParams {
        &self.params
    }

    /// Run on `n x h x w x c` u8 input; returns the NHWC u8 output and its spatial size. A
    /// residual (laid out like the output) is `(data, zero point, s_residual / s_out)`.
    pub fn run(
        &self,
        x: &[u8],
        n: usize,
        h: usize,
        w: usize,
        residual: Option<(&[u8], i32, f32)>,
    ) -> Result<(Vec<u8>, usize, usize), KernelError> {
        self.run_isa(isa::current_int8(), x, n, h, w, residual)
    }

    /// [`PreparedQConv::run`] on a given ISA (tests).
    pub fn run_isa(
        &self,
        isa: Int8Isa,
        x: &[u8],
        n: usize,
        h: usize,
        w: usize,
        residual: Option<(&[u8], i32, f32)>,
    ) -> Result<(Vec<u8>, usize, usize), KernelError> {
        #[cfg(target_arch = "x86_64")]
        if isa == Int8Isa::Amx {
            return self.run_amx_with(|| super::amx::Hardware, x, n, h, w, residual);
        }
        self.run_inner(
            isa,
            None::<fn() -> super::amx::Emulator>,
            x,
            n,
            h,
            w,
            residual,
        )
    }

    /// Run with the GEMM convs on AMX tiles issued through `unit` (the hardware, or the
    /// emulator in tests); depthwise convs take the best vector path.
    pub(crate) fn run_amx_with<U: super::amx::TileUnit>(
        &self,
        unit: impl Fn() -> U + Sync,
        x: &[u8],
        n: usize,
        h: usize,
        w: usize,
        residual: Option<(&[u8], i32, f32)>,
    ) -> Result<(Vec<u8>, usize, usize), KernelError> {
        // not `best_int8`: this runs inside AMX detection (its one-time check), which must not
        // ask for AMX again
        let vector = isa::best_vector_int8();
        self.run_inner(vector, Some(unit), x, n, h, w, residual)
    }

    #[allow(clippy::too_many_arguments)]
    fn run_inner<U: super::amx::TileUnit>(
        &self,
        isa: Int8Isa,
        amx: Option<impl Fn() -> U + Sync>,
        x: &[u8],
        n: usize,
        h: usize,
        w: usize,
        residual: Option<(&[u8], i32, f32)>,
    ) -> Result<(Vec<u8>, usize, usize), KernelError> {
        let p = &self.params;
        if x.len() != n * h * w * p.in_channels {
            return Err(shape_err(
                "qconv2d",
                format!(
                    "input has {} values, want {n}x{h}x{w}x{}",
                    x.len(),
                    p.in_channels
                ),
            ));
        }
        let (oh, ow) = p.output_size(h, w)?;
        // every output byte is written below
        let mut y = qvision_tensor::pool::take_u8(n * oh * ow * p.out_channels);
        if residual.is_some_and(|r| r.0.len() != y.len()) {
            return Err(shape_err("qconv2d", "residual does not match the output"));
        }
        if y.is_empty() {
            return Ok((y, oh, ow));
        }
        let g = Geom {
            n,
            h,
            w,
            oh,
            ow,
            cin: p.in_channels,
            cout: p.out_channels,
        };
        match &self.mode {
            #[cfg(target_arch = "x86_64")]
            Mode::Depthwise {
                w: wt,
                shift_zp,
                paired,
            } if isa >= Int8Isa::Avx512Vnni => {
                self.depthwise_avx512(x, &g, wt, shift_zp, paired.as_ref(), residual, &mut y)
            }
            Mode::Depthwise { w: wt, .. } => self.depthwise(isa, x, &g, wt, residual, &mut y),
            #[cfg(target_arch = "x86_64")]
            Mode::Gemm {
                grouped: Some(gw), ..
            } if amx.is_none() && isa >= Int8Isa::Avx512Vnni => {
                self.grouped_avx512(x, &g, gw, residual, &mut y)
            }
            Mode::Gemm { per, packed, .. } => match amx {
                Some(unit) => {
                    self.gemm_amx(unit, p, &Src::Direct(x), &g, *per, packed, residual, &mut y)
                }
                None => self.gemm(isa, p, &Src::Direct(x), &g, *per, packed, residual, &mut y),
            },
            Mode::Im2col { kp, packed } => {
                let m = n * oh * ow;
                let p1 = Conv2dParams {
                    in_channels: *kp,
                    kernel: [1, 1],
                    stride: [1, 1],
                    padding: [0, 0],
                    dilation: [1, 1],
                    groups: 1,
                    ..*p
                };
                let g1 = Geom {
                    n: 1,
                    h: m,
                    w: 1,
                    oh: m,
                    ow: 1,
                    cin: *kp,
                    cout: p.out_channels,
                };
                let src = Src::Im2col(Im2col {
                    x,
                    p,
                    g: &g,
                    kp: *kp,
                    za: self.out.za,
                });
                match amx {
                    Some(unit) => self.gemm_amx(unit, &p1, &src, &g1, 1, packed, residual, &mut y),
                    None => self.gemm(isa, &p1, &src, &g1, 1, packed, residual, &mut y),
                }
            }
        }
        Ok((y, oh, ow))
    }

    /// A 1x1 conv over `rows` pixels (a linear layer) with real-valued f32 output:
    /// `(acc - za*colsum + bias) * s_in*s_w`, then the activation. For a model's last layer,
    /// whose output needs no requantization.
    pub fn run_rows_f32(&self, x: &[u8], rows: usize) -> Result<Vec<f32>, KernelError> {
        self.run_rows_f32_isa(isa::current_int8(), x, rows)
    }

    /// [`PreparedQConv::run_rows_f32`] on a given ISA (tests).
    pub fn run_rows_f32_isa(
        &self,
        isa: Int8Isa,
        x: &[u8],
        rows: usize,
    ) -> Result<Vec<f32>, KernelError> {
        let p = &self.params;
        let Mode::Gemm { per: 1, packed, .. } = &self.mode else {
            return Err(shape_err("qlinear", "f32 output needs a dense 1x1 layer"));
        };
        if p.kernel != [1, 1] || p.groups != 1 || x.len() != rows * p.in_channels {
            return Err(shape_err(
                "qlinear",
                format!(
                    "input has {} values, want {rows}x{}",
                    x.len(),
                    p.in_channels
                ),
            ));
        }
        let pb = &packed[0];
        let n = p.out_channels;
        // the output blocks split over the threads: a classifier's weights (2 MB for
        // ResNet-50's) are streamed once, half by each thread
        let parts: Vec<Vec<f32>> = pb
            .blocks
            .par_iter()
            .map(|&(col0, nb, off)| {
                let width = (pb.n - col0).min(NBLK);
                let mut part = vec![0f32; rows * width];
                let mut acc = [0i32; MR * NBLK];
                let mut ptrs = [RowPtr(x.as_ptr()); MR];
                for p0 in (0..rows).step_by(MR) {
                    for (i, r) in ptrs.iter_mut().enumerate() {
                        let at = (p0 + i).min(rows - 1) * p.in_channels;
                        *r = RowPtr(x[at..at + p.in_channels].as_ptr());
                    }
                    let a = TileRows {
                        rows: &ptrs,
                        valid: MR.min(rows - p0),
                        taps: 1,
                        skip: 0,
                        cin: p.in_channels,
                    };
                    run_tile(isa, &a, &pb.data[off..], nb, &mut acc, None);
                    for i in 0..a.valid {
                        let dst = &mut part[(p0 + i) * width..][..width];
                        for (j, d) in dst.iter_mut().enumerate() {
                            let c = col0 + j;
                            *d = (acc[i * NBLK + j] + self.shift[c]) as f32
                                * (self.out.multiplier[c] * self.out.out_scale);
                        }
                        if let Some(a) = self.out.act {
                            a.apply(dst);
                        }
                    }
                }
                part
            })
            .collect();
        let mut y = vec![0f32; rows * n];
        for (&(col0, _, _), part) in pb.blocks.iter().zip(&parts) {
            let width = part.len() / rows;
            for (r, src) in part.chunks_exact(width).enumerate() {
                y[r * n + col0..][..width].copy_from_slice(src);
            }
        }
        Ok(y)
    }

    pub(super) fn epilogue<'a>(
        &'a self,
        c0: usize,
        residual: Option<(&'a [u8], i32, f32)>,
    ) -> Epilogue<'a> {
        Epilogue {
            shift: &self.shift[c0..],
            mult: &self.out.multiplier[c0..],
            residual,
            act: self.out.act,
            out_scale: self.out.out_scale,
            zo: self.out.zo as i32,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        isa: Int8Isa,
        p: &Conv2dParams,
        src: &Src<'_>,
        g: &Geom,
        per: usize,
        packed: &[PackedQB],
        residual: Option<(&[u8], i32, f32)>,
        y: &mut [u8],
    ) {
        let direct = matches!(src, Src::Direct(_));
        let plan = self.plan(p, g, (per, packed), MR, direct);
        let (cin_sg, cout_sg, taps, m, zbuf) =
            (plan.cin_sg, plan.cout_sg, plan.taps, plan.m, &plan.zbuf);
        let out = OutPtr(y.as_mut_ptr());
        let fisa = float_isa(isa);
        let e0 = self.epilogue(0, None);
        let (lo, hi) = e0.bounds();
        plan.items.par_iter().for_each(|&(s, c, k)| {
            let pb = &packed[s];
            let my_blocks = plan.blocks(pb, k);
            let run = plan.run(c);
            let mut scratch = RowScratch::default();
            let mut acc = [0i32; MR * NBLK];
            let mut tmp = [0f32; NBLK];
            let mut tshift = [0i32; NBLK];
            // tile `tile`'s rows into `rows` (`taps * MR`)
            let mut fill = |tile: usize, rows: &mut [RowPtr]| match (plan.strip(tile), src) {
                (Some(st), Src::Direct(x)) => {
                    g.fill_strip(p, (x, zbuf), (s * cin_sg, cin_sg), (st, plan.merge), rows)
                }
                _ => {
                    let p0 = tile * MR;
                    src.rows(g, p, zbuf, s * cin_sg, cin_sg, p0, MR, rows, &mut scratch);
                    Filled::flat(p0, MR.min(m - p0))
                }
            };
            // one tile times one output block, requantized into the output
            let mut block =
                |rows: &[RowPtr], f: &Filled, (col0, nb, off): (usize, usize, usize)| {
                    let a = f.tile(rows, p.kernel, cin_sg);
                    let (valid, skip, pix) = (f.valid, f.skip, &f.pix);
                    let width = (pb.n - col0).min(NBLK);
                    let c0 = s * cout_sg + col0;
                    let shift = self.tile_shift(skip, c0, width, &mut tshift);
                    let fused = {
                        let mut o = [std::ptr::null_mut(); MR];
                        let mut r = [std::ptr::null(); MR];
                        for i in 0..valid {
                            let at = pix[i] * g.cout + c0;
                            // SAFETY: in bounds of the output (and residual, same layout).
                            o[i] = unsafe { out.get().add(at) };
                            if let Some((rd, _, _)) = residual {
                                r[i] = rd[at..].as_ptr();
                            }
                        }
                        Fused {
                            out: o,
                            residual: residual.map(|(_, z, m)| (r, z, m)),
                            rows: valid,
                            width,
                            shift: shift.as_ptr(),
                            mult: self.out.multiplier[c0..].as_ptr(),
                            lo,
                            hi,
                            zo: e0.zo,
                            act: e0.smooth(),
                        }
                    };
                    if run_tile(isa, &a, &pb.data[off..], nb, &mut acc, Some(&fused)) {
                        return;
                    }
                    for i in 0..valid {
                        let at = pix[i] * g.cout + c0;
                        let e = Epilogue {
                            shift,
                            ..self.epilogue(c0, residual.map(|(r, z, mr)| (&r[at..], z, mr)))
                        };
                        // SAFETY: pixel pix[i], columns c0..c0+width of the output belong to this
                        // item alone (items partition tiles x super-groups x block ranges, and the
                        // tiles partition the pixels).
                        let o = unsafe { std::slice::from_raw_parts_mut(out.get().add(at), width) };
                        requant_row(fisa, &acc[i * NBLK..], &e, &mut tmp[..width], o);
                    }
                };
            if plan.blocks_first && my_blocks.len() > 1 && matches!(src, Src::Direct(_)) {
                // block by block over the whole run (see `Plan::blocks_first`); the run's rows
                // are filled once
                let span = taps * MR;
                let mut rows = vec![RowPtr(zbuf.as_ptr()); run.len() * span];
                let tiles: Vec<_> = run
                    .clone()
                    .zip(rows.chunks_exact_mut(span))
                    .map(|(tile, r)| fill(tile, r))
                    .collect();
                for &b in my_blocks {
                    for (t, r) in tiles.iter().zip(rows.chunks_exact(span)) {
                        block(r, t, b);
                    }
                }
            } else {
                let mut rows = vec![RowPtr(zbuf.as_ptr()); taps * MR];
                for tile in run {
                    let t = fill(tile, &mut rows);
                    for &b in my_blocks {
                        block(&rows, &t, b);
                    }
                }
            }
        });
    }

    /// The [`Plan`] of a GEMM run over geometry `g` (`p`, `per` and `packed` are this conv's,
    /// or for an im2col stem the 1x1 view of it, fixed by `g` too): cached per input size,
    /// tile height, row source and thread count.
    pub(super) fn plan(
        &self,
        p: &Conv2dParams,
        g: &Geom,
        (per, packed): (usize, &[PackedQB]),
        mr: usize,
        direct: bool,
    ) -> std::sync::Arc<Plan> {
        let key = (g.n, g.h, g.w, mr, direct, rayon::current_num_threads());
        let mut cache = self.plans.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, plan)) = cache.iter().find(|(k, _)| *k == key) {
            return plan.clone();
        }
        let plan = std::sync::Arc::new(Plan::new(p, g, (per, packed), (mr, self.out.za), direct));
        if cache.len() == PLANS_KEPT {
            cache.remove(0);
        }
        cache.push((key, plan.clone()));
        plan
    }

    /// The shift of output columns `c0..c0 + width` for a tile that skipped the taps in
    /// `skip`: [`PreparedQConv::shift`] plus what the skipped taps' zero points would have
    /// added (in `buf`), or the shift itself.
    fn tile_shift<'a>(
        &'a self,
        skip: u64,
        c0: usize,
        width: usize,
        buf: &'a mut [i32; NBLK],
    ) -> &'a [i32] {
        if skip == 0 || self.tap_zsum.is_empty() {
            return &self.shift[c0..];
        }
        let cout = self.params.out_channels;
        buf[..width].copy_from_slice(&self.shift[c0..c0 + width]);
        for t in (0..64).filter(|t| skip >> t & 1 != 0) {
            let z = &self.tap_zsum[t * cout + c0..][..width];
            buf[..width].iter_mut().zip(z).for_each(|(b, z)| *b += z);
        }
        &buf[..width]
    }

    /// Point `taps` (`kh * kw`) at the input pixel (channel 0, `c` bytes) of each tap of output
    /// pixel `(image, oy, ox)`, or at `zbuf` (the input zero point) where it falls in the
    /// padding.
    #[cfg(target_arch = "x86_64")]
    fn pixel_taps<'a>(
        &self,
        x: &'a [u8],
        g: &Geom,
        (bi, oy, ox): (usize, usize, usize),
        zbuf: &'a [u8],
        taps: &mut [*const u8],
    ) {
        let p = &self.params;
        let c = g.cin;
        for ky in 0..p.kernel[0] {
            let iy = (oy * p.stride[0] + ky * p.dilation[0]) as isize - p.padding[0] as isize;
            for kx in 0..p.kernel[1] {
                let ix = (ox * p.stride[1] + kx * p.dilation[1]) as isize - p.padding[1] as isize;
                taps[ky * p.kernel[1] + kx] =
                    if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w {
                        let at = ((bi * g.h + iy as usize) * g.w + ix as usize) * c;
                        x[at..at + c].as_ptr()
                    } else {
                        zbuf.as_ptr()
                    };
            }
        }
    }

    /// Depthwise on AVX-512: one call per output pixel over all channels.
    #[cfg(target_arch = "x86_64")]
    fn depthwise_avx512(
        &self,
        x: &[u8],
        g: &Geom,
        wt: &[i32],
        shift_zp: &[i32],
        paired: Option<&super::x86_64::PairedDw>,
        residual: Option<(&[u8], i32, f32)>,
        y: &mut [u8],
    ) {
        use super::x86_64::{dw_pixel, dw_run, dw_run_paired, DwPixel, DwRun};
        let p = &self.params;
        let c = g.cout;
        let zbuf = vec![self.out.za; c];
        let e0 = self.epilogue(0, None);
        let (lo, hi) = e0.bounds();
        let row = g.ow * c;
        // square 3x3 / 5x5 / 7x7 kernels: interior pixels run with the weights in registers (or
        // close by: a 7x7's 49 vectors spill)
        let k = p.kernel[0];
        let run_k = (p.kernel[0] == p.kernel[1]
            && matches!(k, 3 | 5 | 7)
            && p.stride[0] == p.stride[1]
            && p.dilation[0] == p.dilation[1]
            && p.padding[0] == p.padding[1])
            .then_some(k);
        let (s, d, pad) = (p.stride[1], p.dilation[1], p.padding[1]);
        let ox_lo = pad.div_ceil(s).min(g.ow);
        // last interior ox: ox*s + (k-1)*d - pad <= w - 1
        let ox_hi = ((g.w + pad).checked_sub(1 + (k - 1) * d))
            .map_or(0, |v| v / s + 1)
            .min(g.ow)
            .max(ox_lo);
        let zrow = vec![self.out.za; g.w * c];
        y.par_chunks_mut(row).enumerate().for_each(|(r, out)| {
            let (bi, oy) = (r / g.oh, r % g.oh);
            let mut taps = vec![zbuf.as_ptr(); p.kernel[0] * p.kernel[1]];
            let res_row = residual.map(|(d, z, m)| (&d[r * row..(r + 1) * row], z, m));
            let interior = match run_k {
                Some(k) if ox_hi > ox_lo => {
                    let mut rows = [zrow.as_ptr(); 7];
                    for (ky, rp) in rows.iter_mut().enumerate().take(k) {
                        let iy = (oy * p.stride[0] + ky * p.dilation[0]) as isize
                            - p.padding[0] as isize;
                        if iy >= 0 && (iy as usize) < g.h {
                            let at = (bi * g.h + iy as usize) * g.w * c;
                            *rp = x[at..at + g.w * c].as_ptr();
                        }
                    }
                    let run = DwRun {
                        rows,
                        c,
                        stride: s,
                        dilation: d,
                        pad,
                        ox0: ox_lo,
                        ox1: ox_hi,
                        w: wt,
                        shift: shift_zp,
                        mult: &self.out.multiplier,
                        lo,
                        hi,
                        zo: e0.zo,
                        residual: res_row.map(|(d, z, m)| (d.as_ptr(), z, m)),
                        act: e0.smooth(),
                        out: out.as_mut_ptr(),
                    };
                    // SAFETY: AVX-512 (with AVX2/FMA) was detected for this int8 level; every
                    // row is a full input row or the zero-point row, the interior range keeps
                    // all taps inside the row, weights hold k*k*c values and the output and
                    // residual rows ow*c bytes.
                    unsafe {
                        match (k, paired) {
                            (3, Some(pd)) => dw_run_paired::<3>(&run, pd),
                            (5, Some(pd)) => dw_run_paired::<5>(&run, pd),
                            (7, Some(pd)) => dw_run_paired::<7>(&run, pd),
                            (3, None) => dw_run::<3>(&run),
                            (5, None) => dw_run::<5>(&run),
                            _ => dw_run::<7>(&run),
                        }
                    };
                    ox_lo..ox_hi
                }
                _ => 0..0,
            };
            for ox in (0..g.ow).filter(|ox| !interior.contains(ox)) {
                self.pixel_taps(x, g, (bi, oy, ox), &zbuf, &mut taps);
                let at = ox * c;
                let res = res_row.map(|(d, z, m)| (&d[at..at + c], z, m));
                let px = DwPixel {
                    taps: &taps,
                    c,
                    w: wt,
                    shift: shift_zp,
                    mult: &self.out.multiplier,
                    lo,
                    hi,
                    zo: e0.zo,
                    residual: res.map(|(d, z, m)| (d.as_ptr(), z, m)),
                    act: e0.smooth(),
                    out: out[at..at + c].as_mut_ptr(),
                };
                // SAFETY: `isa` is AVX-512 VNNI (with F/BW/VL); every tap points at `c` bytes
                // (an input pixel or the zero-point buffer), the weights hold taps x c values,
                // and the output / residual slices hold `c` bytes.
                unsafe { dw_pixel(&px) };
            }
        });
    }

    /// A grouped conv of 4- or 8-channel groups on AVX-512 VNNI ([`GroupedW`]): pixels in
    /// fours along each output row, every tap through a pointer (the zero-point buffer for
    /// padding).
    ///
    /// [`GroupedW`]: super::x86_64::GroupedW
    #[cfg(target_arch = "x86_64")]
    fn grouped_avx512(
        &self,
        x: &[u8],
        g: &Geom,
        gw: &super::x86_64::GroupedW,
        residual: Option<(&[u8], i32, f32)>,
        y: &mut [u8],
    ) {
        use super::x86_64::{grouped_pixels, GroupedPixels};
        const P: usize = 4;
        let c = g.cout;
        let zbuf = vec![self.out.za; c];
        let e0 = self.epilogue(0, None);
        let (lo, hi) = e0.bounds();
        let row = g.ow * c;
        let nt = gw.taps;
        y.par_chunks_mut(row).enumerate().for_each(|(r, out)| {
            let (bi, oy) = (r / g.oh, r % g.oh);
            let mut taps = vec![zbuf.as_ptr(); P * nt];
            let mut ox0 = 0;
            while ox0 < g.ow {
                let n = (g.ow - ox0).min(P);
                for (i, pt) in taps.chunks_exact_mut(nt).enumerate() {
                    // a short last run repeats its last pixel (same values, same bytes)
                    self.pixel_taps(x, g, (bi, oy, ox0 + i.min(n - 1)), &zbuf, pt);
                }
                let at = |i: usize| (ox0 + i.min(n - 1)) * c;
                let a = GroupedPixels::<P> {
                    taps: &taps,
                    c,
                    gw,
                    shift: &self.shift,
                    mult: &self.out.multiplier,
                    lo,
                    hi,
                    zo: e0.zo,
                    residual: residual.map(|(d, z, m)| {
                        (
                            std::array::from_fn(|i| d[r * row + at(i)..][..c].as_ptr()),
                            z,
                            m,
                        )
                    }),
                    act: e0.smooth(),
                    out: std::array::from_fn(|i| out[at(i)..][..c].as_mut_ptr()),
                };
                // SAFETY: `isa` is AVX-512 VNNI (with F/BW/VL, AVX2, FMA); `c % 16 == 0`; every
                // tap points at `c` bytes (an input pixel or the zero-point buffer), the shift
                // and multipliers hold `c` values, the output (and residual) pointers `c` bytes
                // of this row; a short run's extra pixels rewrite its last pixel's bytes with the
                // same values.
                unsafe { grouped_pixels(&a) };
                ox0 += n;
            }
        });
    }

    fn depthwise(
        &self,
        isa: Int8Isa,
        x: &[u8],
        g: &Geom,
        wt: &[i32],
        residual: Option<(&[u8], i32, f32)>,
        y: &mut [u8],
    ) {
        let row = g.ow * g.cout;
        let fisa = float_isa(isa);
        y.par_chunks_mut(row).enumerate().for_each(|(r, out)| {
            let (bi, oy) = (r / g.oh, r % g.oh);
            let a = DwRow {
                conv: self,
                x,
                g,
                wt,
                bi,
                oy,
                residual: residual.map(|(d, z, m)| (&d[r * row..(r + 1) * row], z, m)),
            };
            dw_row(fisa, &a, out);
        });
    }
}

/// Per output channel of packed GEMM weights: `bias - za * colsum`.
fn gemm_shift(packed: &[PackedQB], za: i32, bias: impl Fn(usize) -> i32) -> Vec<i32> {
    packed
        .iter()
        .flat_map(|pb| pb.col_sums.iter())
        .enumerate()
        .map(|(c, &s)| bias(c) - za * s)
        .collect()
}

/// The `kh` kernel rows of an interior pixel: `W` bytes from `x` every `ystride` bytes into
/// `row` every `seg` bytes (each copy spills up to `W - seg` bytes into the next, which
/// overwrites them; the last into the row's slack).
#[inline(always)]
fn interior<const W: usize>((x, ystride, kh, seg): (&[u8], usize, usize, usize), row: &mut [u8]) {
    for ky in 0..kh {
        copy_n::<W>(&mut row[ky * seg..], &x[ky * ystride..]);
    }
}

/// Copy exactly `N` bytes (a compile-time size).
#[inline(always)]
fn copy_n<const N: usize>(dst: &mut [u8], src: &[u8]) {
    dst[..N].copy_from_slice(&src[..N]);
}

/// Spatial geometry of one run.
pub(super) struct Geom {
    pub(super) n: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) oh: usize,
    pub(super) ow: usize,
    pub(super) cin: usize,
    pub(super) cout: usize,
}

/// A work item's gathered rows for [`Src::Im2col`]: the rows of pixels `first..`, kept while
/// the following tiles read them.
#[derive(Default)]
pub(super) struct RowScratch {
    rows: Vec<u8>,
    first: Option<usize>,
}

/// Where a GEMM conv's rows come from.
pub(super) enum Src<'a> {
    /// The NHWC input, read in place through one row pointer per tap.
    Direct(&'a [u8]),
    /// Taps gathered per tile into short rows (a conv over few input channels: see
    /// [`Mode::Im2col`]); the whole im2col matrix is never built.
    Im2col(Im2col<'a>),
}

/// The gather of [`Src::Im2col`]: the conv's own params and geometry, row length `kp`.
pub(super) struct Im2col<'a> {
    x: &'a [u8],
    p: &'a Conv2dParams,
    g: &'a Geom,
    kp: usize,
    za: u8,
}

impl Src<'_> {
    /// Point `rows` at tile `p0`'s `mr` rows (see [`Geom::fill_rows`]); an im2col source
    /// gathers them into `scratch` first. `g` is the GEMM's geometry.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(super) fn rows(
        &self,
        g: &Geom,
        p: &Conv2dParams,
        zbuf: &[u8],
        col: usize,
        len: usize,
        p0: usize,
        mr: usize,
        rows: &mut [RowPtr],
        scratch: &mut RowScratch,
    ) {
        match self {
            Src::Direct(x) => g.fill_rows(p, x, zbuf, col, len, p0, mr, rows),
            Src::Im2col(ic) => {
                // Rows are gathered `AHEAD` tiles at a time (ResNet's int8 stem -20 %): one
                // pixel-index setup per gather instead of per tile, and a tile's bytes were
                // stored tiles before it reads them.
                const AHEAD: usize = 8;
                let stride = ic.stride();
                let span = AHEAD * mr;
                let cached = scratch.first.filter(|&f| p0 >= f && p0 + mr <= f + span);
                let first = match cached {
                    Some(f) => f,
                    None => {
                        scratch.rows.resize(span * stride, 0);
                        scratch.first = Some(p0);
                        let g0 = ic.g;
                        let m = g0.n * g0.oh * g0.ow;
                        let mut px = Pixel::at(g0, p0.min(m - 1));
                        for (i, row) in scratch.rows.chunks_exact_mut(stride).enumerate() {
                            if p0 + i >= m {
                                // past the end: the last pixel again (its results are dropped)
                                let last = Pixel::at(g0, m - 1);
                                ic.gather(last.bi, last.oy, last.ox, row);
                                continue;
                            }
                            ic.gather(px.bi, px.oy, px.ox, row);
                            px.step(g0);
                        }
                        p0
                    }
                };
                for (i, r) in rows.iter_mut().enumerate().take(mr) {
                    *r = RowPtr(scratch.rows[(p0 - first + i) * stride..].as_ptr());
                }
            }
        }
    }
}

impl Im2col<'_> {
    /// Gather the taps of output pixel `(bi, oy, ox)` into `row`: `[ky][kx][cin]`, then the
    /// zero point up to `kp`; the zero point where a tap is padding. (The general path: see
    /// [`Im2col::gather`] for pixels whose taps all lie inside the image.)
    fn pixel(&self, bi: usize, oy: usize, ox: usize, row: &mut [u8]) {
        let (p, g) = (self.p, self.g);
        let (cin, [kh, kw]) = (g.cin, p.kernel);
        let seg = kw * cin;
        let (d, ix0) = (
            p.dilation[1],
            (ox * p.stride[1]) as isize - p.padding[1] as isize,
        );
        let inside = d == 1 && ix0 >= 0 && ix0 as usize + kw <= g.w;
        for ky in 0..kh {
            let iy = (oy * p.stride[0] + ky * p.dilation[0]) as isize - p.padding[0] as isize;
            let taps = &mut row[ky * seg..(ky + 1) * seg];
            if iy < 0 || iy as usize >= g.h {
                taps.fill(self.za);
                continue;
            }
            let line = (bi * g.h + iy as usize) * g.w * cin;
            if inside {
                // the kw taps are one run of the input row
                let at = line + ix0 as usize * cin;
                taps.copy_from_slice(&self.x[at..at + seg]);
                continue;
            }
            for (kx, t) in taps.chunks_exact_mut(cin).enumerate() {
                let ix = ix0 + (kx * d) as isize;
                if ix < 0 || ix as usize >= g.w {
                    t.fill(self.za);
                } else {
                    t.copy_from_slice(&self.x[line + ix as usize * cin..][..cin]);
                }
            }
        }
        row[kh * seg..self.kp].fill(self.za);
    }

    /// [`Im2col::pixel`], with a fast path for a pixel whose taps all lie inside the image:
    /// one fixed-size copy per kernel row.
    #[inline]
    fn gather(&self, bi: usize, oy: usize, ox: usize, row: &mut [u8]) {
        let (p, g) = (self.p, self.g);
        let (cin, [kh, kw]) = (g.cin, p.kernel);
        let iy0 = (oy * p.stride[0]) as isize - p.padding[0] as isize;
        let ix0 = (ox * p.stride[1]) as isize - p.padding[1] as isize;
        let seg = kw * cin;
        let ystride = p.dilation[0] * g.w * cin;
        if p.dilation[1] == 1
            && iy0 >= 0
            && ix0 >= 0
            && iy0 as usize + (kh - 1) * p.dilation[0] < g.h
            && ix0 as usize + kw <= g.w
        {
            let at = ((bi * g.h + iy0 as usize) * g.w + ix0 as usize) * cin;
            let wide = seg.next_multiple_of(8);
            if at + (kh - 1) * ystride + wide <= self.x.len() {
                let run = (&self.x[at..], ystride, kh, seg);
                match wide {
                    8 => interior::<8>(run, row),
                    16 => interior::<16>(run, row),
                    24 => interior::<24>(run, row),
                    32 => interior::<32>(run, row),
                    40 => interior::<40>(run, row),
                    _ => return self.pixel(bi, oy, ox, row),
                }
                row[kh * seg..self.kp].fill(self.za);
                return;
            }
        }
        self.pixel(bi, oy, ox, row)
    }

    /// Bytes between gathered rows: `kp` plus slack for the last kernel row's spill.
    fn stride(&self) -> usize {
        self.kp + 8
    }
}

/// An output pixel's coordinates `(image, y, x)`, stepped along the flat pixel order without
/// divisions.
#[derive(Clone, Copy)]
pub(super) struct Pixel {
    pub bi: usize,
    pub oy: usize,
    pub ox: usize,
}

impl Pixel {
    /// The flat output pixel index (the inverse of [`Pixel::at`]).
    pub(super) fn index(&self, g: &Geom) -> usize {
        (self.bi * g.oh + self.oy) * g.ow + self.ox
    }

    pub(super) fn at(g: &Geom, p: usize) -> Self {
        let (bi, rem) = (p / (g.oh * g.ow), p % (g.oh * g.ow));
        Pixel {
            bi,
            oy: rem / g.ow,
            ox: rem % g.ow,
        }
    }

    #[inline]
    pub(super) fn step(&mut self, g: &Geom) {
        self.ox += 1;
        if self.ox == g.ow {
            self.ox = 0;
            self.oy += 1;
            if self.oy == g.oh {
                self.oy = 0;
                self.bi += 1;
            }
        }
    }
}

impl Geom {
    /// Point `rows[t * mr + i]` at the `len` input bytes (from channel `col`) that tap `t` of
    /// output pixel `p0 + i` reads: the zero-point buffer `zbuf` where the tap is padding, and
    /// the last real pixel's taps again past the end (their results are dropped).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(super) fn fill_rows(
        &self,
        p: &Conv2dParams,
        x: &[u8],
        zbuf: &[u8],
        col: usize,
        len: usize,
        p0: usize,
        mr: usize,
        rows: &mut [RowPtr],
    ) {
        let g = self;
        let m = g.n * g.oh * g.ow;
        let taps = p.kernel[0] * p.kernel[1];
        if taps == 1 && p.stride == [1, 1] && p.padding == [0, 0] {
            // a 1x1 stride-1 unpadded conv: row i is pixel p0+i, no coordinates
            for (i, r) in rows.iter_mut().enumerate().take(mr) {
                let at = (p0 + i).min(m - 1) * g.cin + col;
                *r = RowPtr(x[at..at + len].as_ptr());
            }
            return;
        }
        // coordinates of the tile's first pixel, then stepped (no divisions per row)
        let mut px = Pixel::at(g, p0.min(m - 1));
        for i in 0..mr {
            if p0 + i >= m {
                for t in 0..taps {
                    rows[t * mr + i] = rows[t * mr + i - 1];
                }
                continue;
            }
            g.pixel_taps(p, (x, zbuf), (col, len), px, &mut rows[i..], mr);
            px.step(g);
        }
    }

    /// Point `rows[t * stride]` at the `len` input bytes (from channel `col`) that tap `t` of
    /// output pixel `px` reads, the zero-point buffer where the tap is padding; returns the
    /// padding taps (those under 64) as a mask.
    #[inline(always)]
    fn pixel_taps(
        &self,
        p: &Conv2dParams,
        (x, zbuf): (&[u8], &[u8]),
        (col, len): (usize, usize),
        px: Pixel,
        rows: &mut [RowPtr],
        stride: usize,
    ) -> u64 {
        let g = self;
        let mut padded = 0u64;
        for ky in 0..p.kernel[0] {
            let iy = (px.oy * p.stride[0] + ky * p.dilation[0]) as isize - p.padding[0] as isize;
            for kx in 0..p.kernel[1] {
                let ix =
                    (px.ox * p.stride[1] + kx * p.dilation[1]) as isize - p.padding[1] as isize;
                let t = ky * p.kernel[1] + kx;
                rows[t * stride] =
                    if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w {
                        let at = ((px.bi * g.h + iy as usize) * g.w + ix as usize) * g.cin + col;
                        RowPtr(x[at..at + len].as_ptr())
                    } else {
                        if t < 64 {
                            padded |= 1 << t;
                        }
                        RowPtr(zbuf.as_ptr())
                    };
            }
        }
        padded
    }

    /// Point `rows[t * MR + i]` at the `len` input bytes (from channel `col`) that tap `t` of
    /// the strip's pixel `i` reads (the zero-point buffer where the tap is padding); rows past
    /// the strip repeat its last pixel. With `merge` (see [`Plan::merge`]) a strip along a row
    /// gets one row per kernel row instead: its `kw` taps, `kw * len` contiguous bytes.
    #[inline]
    pub(super) fn fill_strip(
        &self,
        p: &Conv2dParams,
        (x, zbuf): (&[u8], &[u8]),
        (col, len): (usize, usize),
        (st, merge): (Strip, bool),
        rows: &mut [RowPtr],
    ) -> Filled {
        let g = self;
        let [kh, kw] = p.kernel;
        let n = st.len as usize;
        let mut pix = [0usize; MR];
        let merged = merge && !st.down;
        let mut skip = 0u64;
        if merged {
            for (i, px) in pix.iter_mut().enumerate().take(n) {
                *px = st.pixel(i).index(g);
            }
            for ky in 0..kh {
                let iy = (st.oy as usize * p.stride[0] + ky * p.dilation[0]) as isize
                    - p.padding[0] as isize;
                let inside = iy >= 0 && (iy as usize) < g.h;
                if !inside && ky * kw + kw <= 64 {
                    skip |= ((1u64 << kw) - 1) << (ky * kw);
                }
                for i in 0..n {
                    rows[ky * MR + i] = if inside {
                        // an interior column: its kw taps lie inside the row
                        let ix = (st.ox as usize + i) * p.stride[1] - p.padding[1];
                        let at = ((st.bi as usize * g.h + iy as usize) * g.w + ix) * g.cin + col;
                        RowPtr(x[at..at + kw * len].as_ptr())
                    } else {
                        RowPtr(zbuf[..kw * len].as_ptr())
                    };
                }
            }
        } else {
            skip = if kh * kw <= 64 {
                u64::MAX >> (64 - kh * kw)
            } else {
                0
            };
            for (i, idx) in pix.iter_mut().enumerate().take(n) {
                let px = st.pixel(i);
                *idx = px.index(g);
                skip &= g.pixel_taps(p, (x, zbuf), (col, len), px, &mut rows[i..], MR);
            }
        }
        // rows past the strip repeat its last pixel
        let row_taps = if merged { kh } else { kh * kw };
        for i in n..MR {
            pix[i] = pix[n - 1];
            for t in 0..row_taps {
                rows[t * MR + i] = rows[t * MR + n - 1];
            }
        }
        Filled {
            valid: n,
            skip,
            merged,
            pix,
        }
    }
}

/// A tile's rows as filled: the wanted rows, the (unmerged) taps that are padding for all of
/// them, whether the rows are merged kernel rows ([`Plan::merge`]), and the output pixels.
#[derive(Clone, Copy)]
pub(super) struct Filled {
    valid: usize,
    skip: u64,
    merged: bool,
    pix: [usize; MR],
}

impl Filled {
    /// Pixels `p0..p0 + valid` (a flat tile), nothing skipped.
    fn flat(p0: usize, valid: usize) -> Self {
        Filled {
            valid,
            skip: 0,
            merged: false,
            pix: std::array::from_fn(|i| p0 + i),
        }
    }

    /// The tile's A side over `rows`, for a conv of `kernel` taps over `cin` channels: merged,
    /// `kh` taps of `kw * cin` bytes, skipping whole padded kernel rows.
    fn tile<'a>(&self, rows: &'a [RowPtr], [kh, kw]: [usize; 2], cin: usize) -> TileRows<'a> {
        if !self.merged {
            return TileRows {
                rows,
                valid: self.valid,
                taps: kh * kw,
                skip: self.skip,
                cin,
            };
        }
        let whole = (1u64 << kw) - 1;
        let skip = (0..kh)
            .filter(|ky| ky * kw + kw <= 64 && (self.skip >> (ky * kw)) & whole == whole)
            .fold(0, |m, ky| m | 1 << ky);
        TileRows {
            rows,
            valid: self.valid,
            taps: kh,
            skip,
            cin: kw * cin,
        }
    }
}

/// What both GEMM drivers (VNNI, AMX) set up before their parallel loop: the super-group's
/// K and N, the taps, the output pixels and tiles of `mr` rows, the zero-point row for padding
/// taps, and the parallel work items `(super-group, run of tiles, block range)`: about eight
/// per thread; with few tiles (late, small layers) each super-group's output blocks are split
/// too, so every thread has work and streams only its share of the weights.
///
/// Tiles are `mr` consecutive pixels, or, for a padded conv whose rows are read in place
/// ([`Plan::new`] with `strips`), [`Strip`]s: runs along an output row between the columns whose
/// taps reach into the padding, and runs down each such column. Every pixel of a strip has the
/// same padding taps along one axis, which the tile then skips (a 3x3 conv over a 7x7 map
/// multiplies 18 % fewer taps), and no tile wastes rows across a row end.
#[derive(Debug)]
pub(super) struct Plan {
    pub cin_sg: usize,
    pub cout_sg: usize,
    pub taps: usize,
    pub m: usize,
    pub zbuf: Vec<u8>,
    pub items: Vec<(usize, usize, usize)>,
    strips: Option<Vec<Strip>>,
    /// Whether strips along a row read each kernel row's `kw` taps as one run of `kw * cin`
    /// bytes (one pointer, one K loop, instead of `kw`): a strip plan of a dense conv
    /// (one super-group) over whole quads of channels, undilated along x.
    pub merge: bool,
    /// Whether the output blocks were split first (more weights than input): an item then
    /// runs block by block over all its tiles, so a block's weights stay in L2 while used.
    pub blocks_first: bool,
    tiles: usize,
    per_chunk: usize,
    bsplit: usize,
}

/// `len` (1..=MR) output pixels of image `bi` from `(oy, ox)`: along the row, or `down` the
/// column.
#[derive(Clone, Copy, Debug)]
pub(super) struct Strip {
    bi: u32,
    oy: u32,
    ox: u32,
    len: u8,
    down: bool,
}

/// `n` split into `n.div_ceil(mr)` runs of near-equal length: `(start, len)`.
fn balanced(n: usize, mr: usize) -> impl Iterator<Item = (usize, usize)> {
    let k = n.div_ceil(mr).max(1);
    (0..k).map(move |i| (i * n / k, (i + 1) * n / k - i * n / k))
}

impl Plan {
    /// A plan over tiles of `mr` consecutive pixels, or, with `strips` (rows read in place,
    /// `mr` = [`MR`]), over [`Strip`]s where the conv has padding taps and one super-group.
    /// (Grouped convs keep the flat tiles: their super-groups are one or two vectors wide, and
    /// shorter strips cost more than the skipped taps save: RegNet +6 %.)
    pub(super) fn new(
        p: &Conv2dParams,
        g: &Geom,
        (per, packed): (usize, &[PackedQB]),
        (mr, za): (usize, u8),
        strips: bool,
    ) -> Self {
        let strips = (strips && mr == MR && packed.len() == 1)
            .then(|| Strip::tiling(p, g))
            .flatten();
        let cin_sg = per * p.in_channels / p.groups;
        let m = g.n * g.oh * g.ow;
        let tiles = strips.as_ref().map_or(m.div_ceil(mr), Vec::len);
        let threads = rayon::current_num_threads().max(1);
        let sgs = packed.len().max(1);
        let min_blocks = packed
            .iter()
            .map(|pb| pb.blocks.len())
            .min()
            .unwrap_or(1)
            .max(1);
        let weights = p.kernel[0] * p.kernel[1] * cin_sg * per * p.out_channels / p.groups;
        let blocks_first = min_blocks > 1 && weights > g.n * g.h * g.w * cin_sg;
        let (per_chunk, bsplit) = if blocks_first {
            // more weights than input (late, small maps): split the output blocks first, so
            // a block's weights are streamed by few items, each over many tiles
            let bsplit = (8 * threads).div_ceil(sgs).min(min_blocks);
            let runs = (4 * threads).div_ceil(sgs * bsplit).min(tiles).max(1);
            (tiles.div_ceil(runs), bsplit)
        } else {
            let chunks = (8 * threads).div_ceil(sgs).min(tiles).max(1);
            let per_chunk = tiles.div_ceil(chunks);
            let base = sgs * tiles.div_ceil(per_chunk);
            let bsplit = if base < 8 * threads {
                (8 * threads).div_ceil(base).min(min_blocks)
            } else {
                1
            };
            (per_chunk, bsplit)
        };
        let items = (0..packed.len())
            .flat_map(|s| {
                (0..tiles.div_ceil(per_chunk))
                    .flat_map(move |c| (0..bsplit).map(move |k| (s, c, k)))
            })
            .collect();
        let taps = p.kernel[0] * p.kernel[1];
        let merge = strips.is_some()
            && sgs == 1
            && cin_sg == p.in_channels
            && cin_sg.is_multiple_of(4)
            && p.dilation[1] == 1
            && p.kernel[1] > 1
            && taps <= 64;
        Plan {
            cin_sg,
            cout_sg: per * p.out_channels / p.groups,
            taps,
            m,
            zbuf: vec![za; (p.kernel[1] * cin_sg).max(4)],
            items,
            strips,
            merge,
            blocks_first,
            tiles,
            per_chunk,
            bsplit,
        }
    }

    /// The tiles of run `c`.
    pub(super) fn run(&self, c: usize) -> std::ops::Range<usize> {
        c * self.per_chunk..((c + 1) * self.per_chunk).min(self.tiles)
    }

    /// Tile `t` as a strip (a strip plan), or `None` (tile `t` is pixels `t*mr..`).
    pub(super) fn strip(&self, t: usize) -> Option<Strip> {
        self.strips.as_ref().map(|s| s[t])
    }

    /// The output blocks of block range `k` of a super-group.
    pub(super) fn blocks<'a>(&self, pb: &'a PackedQB, k: usize) -> &'a [(usize, usize, usize)] {
        let n = pb.blocks.len();
        &pb.blocks[k * n / self.bsplit..(k + 1) * n / self.bsplit]
    }
}

impl Strip {
    /// Its pixel `i`.
    fn pixel(&self, i: usize) -> Pixel {
        let (oy, ox) = if self.down {
            (self.oy as usize + i, self.ox as usize)
        } else {
            (self.oy as usize, self.ox as usize + i)
        };
        Pixel {
            bi: self.bi as usize,
            oy,
            ox,
        }
    }

    /// The strips of a conv with padding taps (`None` without): per image and band of up to
    /// `MR` output rows, the band's run down each edge column on the left, its rows' runs over
    /// the interior columns, then the runs down the right edge columns (a band's strips touch
    /// neighbouring input rows).
    fn tiling(p: &Conv2dParams, g: &Geom) -> Option<Vec<Strip>> {
        let reach = |o: usize, axis: usize, size: usize| {
            let i0 = (o * p.stride[axis]) as isize - p.padding[axis] as isize;
            i0 >= 0 && i0 as usize + (p.kernel[axis] - 1) * p.dilation[axis] < size
        };
        let inner_col = |ox| reach(ox, 1, g.w);
        let l = (0..g.ow).find(|&ox| inner_col(ox)).unwrap_or(g.ow);
        let r = (l..g.ow).rfind(|&ox| inner_col(ox)).map_or(l, |ox| ox + 1);
        if l == 0 && r == g.ow && (0..g.oh).all(|oy| reach(oy, 0, g.h)) {
            return None;
        }
        let at = |bi: usize, oy: usize, ox: usize, len: usize, down: bool| Strip {
            bi: bi as u32,
            oy: oy as u32,
            ox: ox as u32,
            len: len as u8,
            down,
        };
        let mut strips = vec![];
        for bi in 0..g.n {
            for (y0, rows) in balanced(g.oh, MR) {
                strips.extend((0..l).map(|ox| at(bi, y0, ox, rows, true)));
                for oy in y0..y0 + rows {
                    strips.extend(
                        balanced(r - l, MR).map(|(x0, len)| at(bi, oy, l + x0, len, false)),
                    );
                }
                strips.extend((r..g.ow).map(|ox| at(bi, y0, ox, rows, true)));
            }
        }
        strips.retain(|s| s.len > 0);
        Some(strips)
    }
}

struct DwRow<'a> {
    conv: &'a PreparedQConv,
    x: &'a [u8],
    g: &'a Geom,
    wt: &'a [i32],
    bi: usize,
    oy: usize,
    residual: Option<(&'a [u8], i32, f32)>,
}

/// One output row of a depthwise conv: channel vectors of 64, taps outside the input skipped
/// (`x - za` is zero there).
#[inline(always)]
fn dw_row_body(a: &DwRow<'_>, out: &mut [u8]) {
    let p = &a.conv.params;
    let g = a.g;
    let c = g.cout;
    let za = a.conv.out.za as i32;
    let mut acc = [0i32; NBLK];
    let mut tmp = [0f32; NBLK];
    for ox in 0..g.ow {
        for c0 in (0..c).step_by(NBLK) {
            let len = (c - c0).min(NBLK);
            let acc = &mut acc[..len];
            acc.fill(0);
            for ky in 0..p.kernel[0] {
                let iy = (a.oy * p.stride[0] + ky * p.dilation[0]) as isize - p.padding[0] as isize;
                if iy < 0 || iy as usize >= g.h {
                    continue;
                }
                for kx in 0..p.kernel[1] {
                    let ix =
                        (ox * p.stride[1] + kx * p.dilation[1]) as isize - p.padding[1] as isize;
                    if ix < 0 || ix as usize >= g.w {
                        continue;
                    }
                    let at = ((a.bi * g.h + iy as usize) * g.w + ix as usize) * c + c0;
                    let xs = &a.x[at..at + len];
                    let t = ky * p.kernel[1] + kx;
                    let ws = &a.wt[t * c + c0..t * c + c0 + len];
                    for j in 0..len {
                        acc[j] += (xs[j] as i32 - za) * ws[j];
                    }
                }
            }
            let at = ox * c + c0;
            let e = a
                .conv
                .epilogue(c0, a.residual.map(|(r, z, m)| (&r[at..], z, m)));
            requant_row_body(acc, &e, &mut tmp[..len], &mut out[at..at + len]);
        }
    }
}

crate::isa::multiversion!(fn dw_row(a: &DwRow<'_>, out: &mut [u8]) => dw_row_body);

#[cfg(test)]
mod strip_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// The strips of any padded conv cover every output pixel exactly once, each at most
        /// `MR` long, and every pixel of a strip along a row has all its column taps inside the
        /// image (what merging kernel rows relies on).
        #[test]
        fn strips_partition_the_output(n in 1usize..3, eh in 0usize..24, ew in 0usize..24,
                                       k in 1usize..8, s in 1usize..4, pad in 0usize..4, d in 1usize..3) {
            let (h, w) = ((k - 1) * d + 1 + eh, (k - 1) * d + 1 + ew);
            let p = Conv2dParams {
                in_channels: 4,
                out_channels: 4,
                kernel: [k, k],
                stride: [s, s],
                padding: [pad, pad],
                dilation: [d, d],
                groups: 1,
            };
            let (oh, ow) = p.output_size(h, w).expect("a valid geometry");
            let g = Geom { n, h, w, oh, ow, cin: 4, cout: 4 };
            let Some(strips) = Strip::tiling(&p, &g) else {
                // no strips: no tap of any pixel reaches the padding
                for o in 0..oh {
                    prop_assert!(o * s >= pad && o * s - pad + (k - 1) * d < h);
                }
                for o in 0..ow {
                    prop_assert!(o * s >= pad && o * s - pad + (k - 1) * d < w);
                }
                return Ok(());
            };
            let mut seen = vec![0u8; n * oh * ow];
            for st in &strips {
                prop_assert!((1..=MR).contains(&(st.len as usize)));
                for i in 0..st.len as usize {
                    let px = st.pixel(i);
                    let (oy, ox) = (px.oy, px.ox);
                    prop_assert!(oy < oh && ox < ow);
                    seen[px.index(&g)] += 1;
                    if !st.down {
                        let ix0 = (ox * s) as isize - pad as isize;
                        prop_assert!(ix0 >= 0 && ix0 as usize + (k - 1) * d < w);
                    }
                }
            }
            prop_assert!(seen.iter().all(|&c| c == 1));
        }
    }
}
