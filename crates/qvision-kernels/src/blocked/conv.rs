//! Direct convolution in NCHW16c: dense (any kernel, stride, padding, dilation, one group) and
//! depthwise, with bias, residual and activation fused into the store.
//!
//! Dense: for each output block (16 output channels) and a run of `NPX` output pixels, the
//! accumulators `[NPX][16]` stay in registers while every input channel, tap and lane is
//! broadcast against a 16-wide weight vector. Depthwise: the same run, vectorised over the 16
//! channels of a block.

use super::{blocks, B};
use crate::act::Activation;
use crate::conv::Conv2dParams;
use crate::isa::{self, Isa};
use crate::{shape_err, KernelError};
use qvision_tensor::pool;
use rayon::prelude::*;

/// Pixels per register-blocked run.
pub(super) const NPX: usize = 12;

#[derive(Debug)]
pub(super) enum Kind {
    /// `[ob][ib][ky][kx][16 ic][16 oc]`.
    Dense { w: Vec<f32> },
    /// Fewer than 16 input channels, read from an NCHW input: `[ob][ky][kx][cin][16 oc]`
    /// (a network's stem: no channel padding of the image).
    DenseNchwIn { w: Vec<f32> },
    /// `[cb][ky][kx][16]`.
    Depthwise { w: Vec<f32> },
    /// Groups of `cg` (2, 4 or 8) input and output channels, several groups per block:
    /// `[ob][ky][kx][cg][16 oc]`, where lane `o` of row `j` weighs input lane `o - o % cg + j`
    /// of the same block (ResNeXt's 4- and 8-channel groups).
    Grouped { w: Vec<f32>, cg: usize },
}

/// A convolution prepared for NCHW16c input and output.
#[derive(Debug)]
pub struct BlockedConv {
    pub(super) p: Conv2dParams,
    pub(super) kind: Kind,
    /// `blocks(out) * 16`, zero padded.
    pub(super) bias: Vec<f32>,
}

/// Output geometry and the fused epilogue of one call.
#[derive(Clone, Copy)]
pub(super) struct Geom {
    pub(super) ib: usize,
    pub(super) hp: usize,
    pub(super) wp: usize,
    /// Output pixels in this chunk of the row, starting at output column `x0`.
    pub(super) ow: usize,
    pub(super) x0: usize,
    /// Channels per group of a [`Kind::Grouped`] conv (0 otherwise).
    pub(super) cg: usize,
    /// Input channels in the last of the `ib` input blocks of a dense conv (16 when full): the
    /// zero-padded rest is skipped (MobileNetV2's 24 channels are 1.5 blocks).
    pub(super) last: usize,
    /// Padding (rows, columns) the kernel applies itself, reading the `hp x wp` planes as the
    /// unpadded input (taps outside them are zero); `[0, 0]` when the planes are already
    /// zero-padded. Only the AVX-512 dense rows take a nonzero one.
    pub(super) pad: [usize; 2],
}

/// What the dense kernels apply while storing a run: `acc + residual`, then a clamp
/// (ReLU / ReLU6), in that order, as `finish_chunk` would.
#[derive(Clone, Copy)]
pub(super) struct Fuse<'a> {
    /// The chunk's residual, laid out like its output.
    pub(super) res: Option<&'a [f32]>,
    pub(super) clamp: Option<(f32, f32)>,
}

impl Fuse<'_> {
    #[inline(always)]
    fn apply(&self, o: usize, a: &mut [f32; B]) {
        if let Some(r) = self.res {
            for (v, r) in a.iter_mut().zip(&r[o..o + B]) {
                *v += r;
            }
        }
        if let Some((lo, hi)) = self.clamp {
            for v in a.iter_mut() {
                *v = v.max(lo).min(hi);
            }
        }
    }
}

impl BlockedConv {
    /// Whether this geometry has a blocked kernel: one group, depthwise with multiplier 1,
    /// groups of whole blocks, or groups of 2, 4 or 8 channels in and out.
    pub fn supports(p: &Conv2dParams) -> bool {
        let grouped_blocks = (p.in_channels / p.groups.max(1)).is_multiple_of(B)
            && (p.out_channels / p.groups.max(1)).is_multiple_of(B);
        p.validate().is_ok()
            && (p.groups == 1
                || (p.groups == p.in_channels && p.out_channels == p.in_channels)
                || grouped_blocks
                || small_group(p).is_some())
    }

    pub fn new(p: Conv2dParams, weight: &[f32], bias: Option<&[f32]>) -> Result<Self, KernelError> {
        if !Self::supports(&p) || weight.len() != p.weight_len() {
            return Err(shape_err(
                "conv2d (blocked)",
                format!("unsupported geometry or weight size {p:?}"),
            ));
        }
        let [kh, kw] = p.kernel;
        let ob = blocks(p.out_channels);
        let kind = if p.groups == 1 && p.in_channels < B {
            let cin = p.in_channels;
            let mut w = vec![0.0f32; ob * kh * kw * cin * B];
            for oc in 0..p.out_channels {
                for ic in 0..cin {
                    for k in 0..kh * kw {
                        w[(((oc / B) * kh * kw + k) * cin + ic) * B + oc % B] =
                            weight[(oc * cin + ic) * kh * kw + k];
                    }
                }
            }
            Kind::DenseNchwIn { w }
        } else if let Some(cg) = small_group(&p) {
            let mut w = vec![0.0f32; ob * kh * kw * cg * B];
            for oc in 0..p.out_channels {
                for j in 0..cg {
                    for k in 0..kh * kw {
                        w[(((oc / B) * kh * kw + k) * cg + j) * B + oc % B] =
                            weight[(oc * cg + j) * kh * kw + k];
                    }
                }
            }
            Kind::Grouped { w, cg }
        } else if p.groups == 1 || p.groups != p.in_channels {
            // one group, or groups of whole blocks: each output block reads its group's
            // `ib` input blocks
            let cin_g = p.in_channels / p.groups;
            let ib = blocks(cin_g);
            let mut w = vec![0.0f32; ob * ib * kh * kw * B * B];
            for oc in 0..p.out_channels {
                for ic in 0..cin_g {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let v = weight[((oc * cin_g + ic) * kh + ky) * kw + kx];
                            let idx = ((((oc / B * ib + ic / B) * kh + ky) * kw + kx) * B + ic % B)
                                * B
                                + oc % B;
                            w[idx] = v;
                        }
                    }
                }
            }
            Kind::Dense { w }
        } else {
            let mut w = vec![0.0f32; ob * kh * kw * B];
            for c in 0..p.out_channels {
                for k in 0..kh * kw {
                    w[((c / B) * kh * kw + k) * B + c % B] = weight[c * kh * kw + k];
                }
            }
            Kind::Depthwise { w }
        };
        let mut b = vec![0.0f32; ob * B];
        if let Some(bias) = bias {
            if bias.len() != p.out_channels {
                return Err(shape_err("conv2d (blocked)", "bias size"));
            }
            b[..bias.len()].copy_from_slice(bias);
        }
        Ok(BlockedConv { p, kind, bias: b })
    }

    pub fn params(&self) -> &Conv2dParams {
        &self.p
    }

    /// The 16 bias lanes of output block `ob`.
    pub(super) fn bias_lanes(&self, ob: usize) -> &[f32; B] {
        self.bias[ob * B..(ob + 1) * B]
            .try_into()
            .expect("16 lanes")
    }

    /// Whether the input is NCHW (fewer than 16 input channels) rather than blocked.
    pub fn nchw_input(&self) -> bool {
        matches!(self.kind, Kind::DenseNchwIn { .. })
    }

    /// Run on `[n][blocks(cin)][h][w][16]`; returns `[n][blocks(cout)][oh][ow][16]`.
    pub fn run(
        &self,
        x: &[f32],
        n: usize,
        h: usize,
        w: usize,
        residual: Option<&[f32]>,
        act: Option<Activation>,
    ) -> Result<(Vec<f32>, usize, usize), KernelError> {
        self.run_isa(isa::current(), x, n, h, w, residual, act)
    }

    /// [`BlockedConv::run`] on a given ISA (tests).
    #[allow(clippy::too_many_arguments)]
    pub fn run_isa(
        &self,
        isa: Isa,
        x: &[f32],
        n: usize,
        h: usize,
        w: usize,
        residual: Option<&[f32]>,
        act: Option<Activation>,
    ) -> Result<(Vec<f32>, usize, usize), KernelError> {
        let p = &self.p;
        let nchw_in = self.nchw_input();
        // input planes and the values per pixel in a plane
        let (ib, elem) = if nchw_in {
            (p.in_channels, 1)
        } else {
            (blocks(p.in_channels), B)
        };
        let ob = blocks(p.out_channels);
        if x.len() != n * ib * h * w * elem {
            return Err(shape_err(
                "conv2d (blocked)",
                format!("input has {} values, want {n}x{ib}x{h}x{w}x16", x.len()),
            ));
        }
        let (oh, ow) = p.output_size(h, w)?;
        let out_len = n * ob * oh * ow * B;
        if residual.is_some_and(|r| r.len() != out_len) {
            return Err(shape_err(
                "conv2d (blocked)",
                "residual does not match the output",
            ));
        }
        // A 1x1, stride-1, unpadded conv sees the image as one long row: longer register runs.
        let flat = p.kernel == [1, 1] && p.stride == [1, 1] && p.padding == [0, 0];
        let (h, w, oh_r, ow_r) = if flat {
            (1, h * w, 1, oh * ow)
        } else {
            (h, w, oh, ow)
        };
        // zero-padded input: every tap of every output pixel is in bounds
        let [ph, pw] = p.padding;
        let hp = (h + 2 * ph).max((oh_r - 1) * p.stride[0] + (p.kernel[0] - 1) * p.dilation[0] + 1);
        let wp = (w + 2 * pw).max((ow_r - 1) * p.stride[1] + (p.kernel[1] - 1) * p.dilation[1] + 1);
        let depthwise = matches!(self.kind, Kind::Depthwise { .. });
        // The AVX-512 dense and grouped rows apply the padding themselves (kernel rows outside
        // skipped, edge runs reading zeros) on rows of three runs or more: a padded copy of the
        // input cost 3-35 % of a 3x3 conv at 28x28 and up (RegNet's first grouped conv copies
        // 3.2 MB), more in the VM's far state. Narrower rows are all edge runs, which ran
        // 3-25 % slower in a model (ResNet's 14x14 and 7x7 convs) than the copy and the
        // interior kernel.
        let in_kernel = isa == Isa::Avx512
            && matches!(self.kind, Kind::Dense { .. } | Kind::Grouped { .. })
            && ow_r > 2 * NPX;
        let needs_pad = (hp, wp) != (h, w) && !depthwise;
        let padded = (needs_pad && !in_kernel).then(|| pad(x, n * ib, h, w, ph, pw, hp, wp, elem));
        let (hp, wp, kpad) = if needs_pad && in_kernel {
            (h, w, [ph, pw])
        } else {
            (hp, wp, [0, 0])
        };
        let xp: &[f32] = padded.as_deref().unwrap_or(x);
        let mut out = pool::take(out_len);
        let row = ow_r * B;
        // Work items: (image, output block, row, chunk of CHUNK pixels).
        const CHUNK: usize = 8 * NPX;
        // ReLU / ReLU6 (and the residual before them) are applied by the dense kernels' store
        let clamp = clamp_of(act);
        // unpadded 1x1 convs on AVX-512 run two output blocks per register run
        #[cfg(target_arch = "x86_64")]
        if let (true, Kind::Dense { w: wt }) = (
            p.kernel == [1, 1]
                && p.padding == [0, 0]
                && (p.stride == [1, 1] || p.stride == [2, 2])
                && p.groups == 1
                && ob > 1
                && isa == Isa::Avx512,
            &self.kind,
        ) {
            self.pairs_1x1(xp, (n, ib, h, w), (oh_r, ow_r), wt, residual, act, &mut out);
            return Ok((out, oh, ow));
        }
        out.par_chunks_mut(row.max(1))
            .enumerate()
            .for_each(|(r, row_dst)| {
                let oy = r % oh_r;
                let obi = (r / oh_r) % ob;
                let nn = r / (oh_r * ob);
                let bias = self.bias_lanes(obi);
                row_dst
                    .par_chunks_mut(CHUNK * B)
                    .enumerate()
                    .for_each(|(c, dst)| {
                        let g = Geom {
                            ib,
                            hp,
                            wp,
                            ow: dst.len() / B,
                            x0: c * CHUNK,
                            cg: 0,
                            last: B,
                            pad: kpad,
                        };
                        let off = r * row + c * CHUNK * B;
                        let res = residual.map(|rs| &rs[off..off + dst.len()]);
                        let fuse = Fuse { res, clamp };
                        match &self.kind {
                            Kind::DenseNchwIn { w } => {
                                let k = p.kernel[0] * p.kernel[1] * p.in_channels * B;
                                let wo = &w[obi * k..(obi + 1) * k];
                                let xn = &xp[nn * ib * hp * wp..(nn + 1) * ib * hp * wp];
                                nchw_row(isa, p, &g, xn, wo, bias, oy, dst, fuse);
                            }
                            Kind::Dense { w } => {
                                // input blocks of this output block's group
                                let ibg = blocks(p.in_channels / p.groups);
                                let ib0 = obi * B / (p.out_channels / p.groups) * ibg;
                                let k = ibg * p.kernel[0] * p.kernel[1] * B * B;
                                let wo = &w[obi * k..(obi + 1) * k];
                                let plane = hp * wp * B;
                                let xn =
                                    &xp[(nn * ib + ib0) * plane..(nn * ib + ib0 + ibg) * plane];
                                let last = p.in_channels / p.groups - (ibg - 1) * B;
                                let g = Geom { ib: ibg, last, ..g };
                                dense_row(isa, p, &g, xn, wo, bias, oy, dst, fuse);
                            }
                            Kind::Grouped { w, cg } => {
                                // output block `obi` reads input block `obi` only
                                let k = p.kernel[0] * p.kernel[1] * cg * B;
                                let wo = &w[obi * k..(obi + 1) * k];
                                let plane = hp * wp * B;
                                let xn = &xp[(nn * ib + obi) * plane..(nn * ib + obi + 1) * plane];
                                let g = Geom {
                                    ib: 1,
                                    cg: *cg,
                                    ..g
                                };
                                grouped_row(isa, p, &g, xn, wo, bias, oy, dst, fuse);
                            }
                            Kind::Depthwise { w: wts } => {
                                let k = p.kernel[0] * p.kernel[1];
                                let wc = &wts[obi * k * B..(obi + 1) * k * B];
                                let plane = (nn * ib + obi) * h * w * B;
                                let xc = &xp[plane..plane + h * w * B];
                                let (lo, hi) = interior_cols(p, w, ow_r);
                                let row = super::dw::DwRow {
                                    p,
                                    x: xc,
                                    h,
                                    w,
                                    wk: wc,
                                    bias,
                                    oy,
                                    x0: c * CHUNK,
                                    lo,
                                    hi,
                                    // a clamp goes in the store unless a residual comes first
                                    clamp: clamp.filter(|_| res.is_none()),
                                };
                                super::dw::row(isa, &row, dst);
                                let left = act.filter(|_| row.clamp.is_none());
                                finish_chunk(isa, dst, res, left);
                                return;
                            }
                        }
                        // the residual and a clamp were fused; a smooth activation is left
                        finish_chunk(isa, dst, None, act.filter(|_| clamp.is_none()));
                    });
            });
        // the padded copy goes back to the pool (a fresh one is faulted in and zeroed)
        if let Some(b) = padded {
            pool::recycle(b);
        }
        Ok((out, oh, ow))
    }
}

#[cfg(target_arch = "x86_64")]
impl BlockedConv {
    /// An unpadded 1x1 conv on AVX-512, two output blocks at a time ([`x86::pair_run`]):
    /// input planes of `h x w` pixels, output `oh x ow` with stride `s` (a flat conv is one row
    /// of `h * w`); tasks are (image, block pair, output row, chunk of pixels); an odd last
    /// block runs alone on the one-block kernel ([`dense_row`]).
    #[allow(clippy::too_many_arguments)]
    fn pairs_1x1(
        &self,
        xp: &[f32],
        (n, ib, h, w): (usize, usize, usize, usize),
        (oh, ow): (usize, usize),
        wt: &[f32],
        residual: Option<&[f32]>,
        act: Option<Activation>,
        out: &mut [f32],
    ) {
        const CHUNK: usize = 8 * NPX;
        let p = &self.p;
        let [sh, sw] = p.stride;
        let ob = blocks(p.out_channels);
        let (pairs, per_row) = (ob.div_ceil(2), ow.div_ceil(CHUNK));
        let k = ib * B * B;
        let last = p.in_channels - (ib - 1) * B;
        let clamp = clamp_of(act);
        let smooth = act.filter(|_| clamp.is_none());
        assert!(
            out.len() >= n * ob * oh * ow * B
                && xp.len() >= n * ib * h * w * B
                && (oh - 1) * sh < h
                && (ow - 1) * sw < w,
            "operand sizes"
        );
        let y = crate::OutPtr(out.as_mut_ptr());
        (0..n * pairs * oh * per_row).into_par_iter().for_each(|t| {
            let c = t % per_row;
            let oy = t / per_row % oh;
            let pr = t / (per_row * oh) % pairs;
            let nn = t / (per_row * oh * pairs);
            let (x0, len) = (c * CHUNK, CHUNK.min(ow - c * CHUNK));
            let (o0, o1) = (2 * pr, 2 * pr + 1);
            let at = |obi: usize| (((nn * ob + obi) * oh + oy) * ow + x0) * B;
            let res = |obi: usize| residual.map(|r| &r[at(obi)..at(obi) + len * B]);
            let fuse = |obi: usize| Fuse {
                res: res(obi),
                clamp,
            };
            let xn = &xp[nn * ib * h * w * B..(nn + 1) * ib * h * w * B];
            // SAFETY: pixels x0..x0+len of row oy of output block o0 (and o1 below) of image nn
            // lie inside `out` (asserted above) and belong to task t alone (tasks partition
            // images x block pairs x rows x pixel chunks); `out` outlives the loop.
            let d0 = unsafe { std::slice::from_raw_parts_mut(y.get().add(at(o0)), len * B) };
            if o1 == ob {
                // an odd last block: the one-block kernel
                let g = Geom {
                    ib,
                    hp: h,
                    wp: w,
                    ow: len,
                    x0,
                    cg: 0,
                    last,
                    pad: [0, 0],
                };
                let wo = &wt[o0 * k..(o0 + 1) * k];
                dense_row(
                    Isa::Avx512,
                    p,
                    &g,
                    xn,
                    wo,
                    self.bias_lanes(o0),
                    oy,
                    d0,
                    fuse(o0),
                );
                finish_chunk(Isa::Avx512, d0, None, smooth);
                return;
            }
            // SAFETY: as above, block o1 != o0.
            let d1 = unsafe { std::slice::from_raw_parts_mut(y.get().add(at(o1)), len * B) };
            let pair = x86::Pair {
                x: xn,
                ib,
                plane: h * w,
                first: oy * sh * w + x0 * sw,
                step: sw,
                last,
                w: [&wt[o0 * k..(o0 + 1) * k], &wt[o1 * k..(o1 + 1) * k]],
                bias: [self.bias_lanes(o0), self.bias_lanes(o1)],
            };
            x86::pair_run(&pair, len, [&mut *d0, &mut *d1], [fuse(o0), fuse(o1)]);
            finish_chunk(Isa::Avx512, d0, None, smooth);
            finish_chunk(Isa::Avx512, d1, None, smooth);
        });
    }
}

/// ReLU / ReLU6 as the `(lo, hi)` clamp the kernels apply in their store.
pub(super) fn clamp_of(act: Option<Activation>) -> Option<(f32, f32)> {
    match act {
        Some(Activation::Relu) => Some((0.0, f32::INFINITY)),
        Some(Activation::Relu6) => Some((0.0, 6.0)),
        _ => None,
    }
}

/// The group width of a conv whose groups are 2, 4 or 8 channels in and out (several groups
/// per 16-channel block, none straddling two).
fn small_group(p: &Conv2dParams) -> Option<usize> {
    let g = p.groups.max(1);
    let cg = p.in_channels / g;
    (g > 1 && p.out_channels / g == cg && matches!(cg, 2 | 4 | 8)).then_some(cg)
}

/// The input of [`BlockedConv::run_concat_norm`]: a channel concatenation of blocked parts,
/// each channel mapped by an affine function and an activation (DenseNet's
/// `relu(norm1(cat(features)))`), never written out whole.
pub struct ConcatNormInput<'a> {
    /// Each `[n][blocks[k]][hw][16]`.
    pub parts: &'a [&'a [f32]],
    pub blocks: &'a [usize],
    /// Per input block of the concatenation: 16 lanes of scale and shift.
    pub scale: &'a [[f32; B]],
    pub shift: &'a [[f32; B]],
    pub act: Option<Activation>,
}

thread_local! {
    /// Per-thread staging tile of [`BlockedConv::run_concat_norm`] and `run_dw_project`.
    pub(super) static STAGE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl BlockedConv {
    /// Whether [`BlockedConv::run_concat_norm`] can run this conv: a dense 1x1, stride 1,
    /// unpadded conv over whole input blocks.
    pub fn supports_concat_norm(&self) -> bool {
        let p = &self.p;
        matches!(self.kind, Kind::Dense { .. })
            && p.groups == 1
            && p.kernel == [1, 1]
            && p.stride == [1, 1]
            && p.padding == [0, 0]
    }

    /// This 1x1 conv over `input` (`hw` pixels per image), the concatenation normalised tile by
    /// tile into a per-thread buffer that the output blocks then read: the normalised
    /// concatenation is never written to memory. `act` as for [`BlockedConv::run`].
    pub fn run_concat_norm(
        &self,
        isa: Isa,
        input: &ConcatNormInput<'_>,
        n: usize,
        hw: usize,
        act: Option<Activation>,
    ) -> Result<Vec<f32>, KernelError> {
        let p = &self.p;
        let ib = blocks(p.in_channels);
        let ob = blocks(p.out_channels);
        let Kind::Dense { w } = &self.kind else {
            return Err(shape_err("conv2d (concat-norm)", "not a dense conv"));
        };
        let sizes_ok = input.parts.len() == input.blocks.len()
            && input
                .parts
                .iter()
                .zip(input.blocks)
                .all(|(x, &b)| x.len() == n * b * hw * B);
        if !self.supports_concat_norm()
            || !sizes_ok
            || input.blocks.iter().sum::<usize>() != ib
            || input.scale.len() != ib
            || input.shift.len() != ib
        {
            return Err(shape_err(
                "conv2d (concat-norm)",
                format!(
                    "parts of {:?} blocks do not make the conv's {ib}",
                    input.blocks
                ),
            ));
        }
        // input block -> (part, block within the part)
        let mut source = Vec::with_capacity(ib);
        for (k, &nb) in input.blocks.iter().enumerate() {
            source.extend((0..nb).map(|j| (k, j)));
        }
        // pixel tiles of a few register runs
        let tile = if hw >= 64 * NPX { 4 * NPX } else { 2 * NPX };
        let tiles = hw.div_ceil(tile);
        if n * tiles < 8 {
            // too few tiles to share out: write the concatenation, then the plain conv
            let planes = input.blocks;
            let (scale, shift, act_n) = (input.scale, input.shift, input.act);
            let cat = crate::norm::concat_affine(
                isa,
                input.parts,
                planes,
                hw * B,
                n,
                scale,
                shift,
                act_n,
            )?;
            let (y, _, _) = self.run_isa(isa, &cat, n, 1, hw, None, act)?;
            pool::recycle(cat);
            return Ok(y);
        }
        let clamp = clamp_of(act);
        let mut out = pool::take(n * ob * hw * B);
        // tasks: (image, tile, the tile's slice of every output block)
        tile_tasks(&mut out, ob, hw, tile)
            .into_par_iter()
            .for_each(|(img, t, dsts)| {
                let p0 = t * tile;
                let np = dsts[0].len() / B;
                STAGE.with(|stage| {
                    let mut stage = stage.borrow_mut();
                    stage.resize(ib * np * B, 0.0);
                    for (gb, &(k, j)) in source.iter().enumerate() {
                        let at = ((img * input.blocks[k] + j) * hw + p0) * B;
                        let src = &input.parts[k][at..at + np * B];
                        let dst = &mut stage[gb * np * B..(gb + 1) * np * B];
                        crate::norm::affine_act(
                            isa,
                            dst,
                            src,
                            &input.scale[gb],
                            &input.shift[gb],
                            input.act,
                        );
                    }
                    let g = Geom {
                        ib,
                        hp: 1,
                        wp: np,
                        ow: np,
                        x0: 0,
                        cg: 0,
                        last: p.in_channels - (ib - 1) * B,
                        pad: [0, 0],
                    };
                    let k = ib * B * B;
                    for (obi, dst) in dsts.into_iter().enumerate() {
                        let bias = self.bias_lanes(obi);
                        let fuse = Fuse { res: None, clamp };
                        dense_row(
                            isa,
                            p,
                            &g,
                            &stage[..ib * np * B],
                            &w[obi * k..(obi + 1) * k],
                            bias,
                            0,
                            dst,
                            fuse,
                        );
                        finish_chunk(isa, dst, None, act.filter(|_| clamp.is_none()));
                    }
                });
            });
        Ok(out)
    }
}

/// Tasks over a blocked output `[n][ob][hw][16]` cut into pixel tiles of `tile`: (image, tile,
/// the tile's slice of every output block), so a task computes all output channels of its
/// pixels (the fused ops that stage their input per tile).
#[allow(clippy::type_complexity)]
pub(super) fn tile_tasks(
    out: &mut [f32],
    ob: usize,
    hw: usize,
    tile: usize,
) -> Vec<(usize, usize, Vec<&mut [f32]>)> {
    let tiles = hw.div_ceil(tile);
    let mut tasks = Vec::new();
    for (img, planes) in out.chunks_mut(ob * hw * B).enumerate() {
        let mut parts: Vec<_> = planes
            .chunks_mut(hw * B)
            .map(|pl| pl.chunks_mut(tile * B))
            .collect();
        for t in 0..tiles {
            let slices: Vec<&mut [f32]> = parts
                .iter_mut()
                .map(|r| r.next().expect("one slice per tile"))
                .collect();
            tasks.push((img, t, slices));
        }
    }
    tasks
}

/// Output columns whose every horizontal tap lies inside a row of `w` (no padding read).
pub(super) fn interior_cols(p: &Conv2dParams, w: usize, ow: usize) -> (usize, usize) {
    let (s, pw, span) = (p.stride[1], p.padding[1], (p.kernel[1] - 1) * p.dilation[1]);
    let lo = pw.div_ceil(s);
    // ox * s - pw + span <= w - 1
    let hi = if w + pw > span {
        (w + pw - span - 1) / s + 1
    } else {
        0
    };
    (lo.min(ow), hi.min(ow).max(lo.min(ow)))
}

/// Zero-pad `planes` planes of `h x w` pixels of `e` values each to `hp x wp`.
#[allow(clippy::too_many_arguments)]
fn pad(
    x: &[f32],
    planes: usize,
    h: usize,
    w: usize,
    ph: usize,
    pw: usize,
    hp: usize,
    wp: usize,
    e: usize,
) -> Vec<f32> {
    let mut out = pool::take(planes * hp * wp * e);
    // by padded row, so an image of three planes (a stem) still splits across threads
    out.par_chunks_mut(wp * e)
        .with_min_len(8)
        .enumerate()
        .for_each(|(r, dst)| {
            let (pl, py) = (r / hp, r % hp);
            if py < ph || py >= ph + h {
                dst.fill(0.0);
                return;
            }
            let s = (pl * h + py - ph) * w * e;
            dst[..pw * e].fill(0.0);
            dst[pw * e..(pw + w) * e].copy_from_slice(&x[s..s + w * e]);
            dst[(pw + w) * e..].fill(0.0);
        });
    out
}

/// Residual add and activation over a finished chunk of output pixels.
pub(crate) fn finish_chunk(
    isa: Isa,
    dst: &mut [f32],
    res: Option<&[f32]>,
    act: Option<Activation>,
) {
    if let Some(r) = res {
        dst.iter_mut().zip(r).for_each(|(d, r)| *d += r);
    }
    if let Some(a) = act {
        crate::act::apply_slice(isa, dst, a);
    }
}

/// `a + x * w`, fused when the ISA has FMA (the portable bodies are compiled for both).
#[inline(always)]
fn mac<const FMA: bool>(x: f32, w: f32, a: f32) -> f32 {
    if FMA {
        x.mul_add(w, a)
    } else {
        a + x * w
    }
}

/// Store a run's accumulators at pixels `ox0..` through the fused residual and clamp.
#[inline(always)]
fn store_px(acc: &mut [[f32; B]], ox0: usize, fuse: Fuse<'_>, dst: &mut [f32]) {
    for (pi, a) in acc.iter_mut().enumerate() {
        let o = (ox0 + pi) * B;
        fuse.apply(o, a);
        dst[o..o + B].copy_from_slice(a);
    }
}

/// One output row of one output block, dense. Safe indexing; the compiler hoists the checks out
/// of the `NPX x 16` inner block.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn dense_row_body<const FMA: bool>(
    p: &Conv2dParams,
    g: &Geom,
    x: &[f32],
    w: &[f32],
    bias: &[f32; B],
    oy: usize,
    dst: &mut [f32],
    fuse: Fuse<'_>,
) {
    let [kh, kw] = p.kernel;
    let [sh, sw] = p.stride;
    let [dh, dw] = p.dilation;
    assert_eq!(g.pad, [0, 0], "the portable rows read padded planes");
    let mut ox0 = 0;
    while ox0 < g.ow {
        let npx = (g.ow - ox0).min(NPX);
        let mut acc = [*bias; NPX];
        for ib in 0..g.ib {
            let plane = &x[ib * g.hp * g.wp * B..(ib + 1) * g.hp * g.wp * B];
            for ky in 0..kh {
                let row =
                    &plane[(oy * sh + ky * dh) * g.wp * B..(oy * sh + ky * dh + 1) * g.wp * B];
                for kx in 0..kw {
                    let wk = &w[((ib * kh + ky) * kw + kx) * B * B
                        ..((ib * kh + ky) * kw + kx + 1) * B * B];
                    let lanes = if ib + 1 == g.ib { g.last } else { B };
                    for ic in 0..lanes {
                        let wv: &[f32; B] = wk[ic * B..(ic + 1) * B].try_into().expect("16 lanes");
                        for (pi, a) in acc.iter_mut().enumerate().take(npx) {
                            let xv = row[((g.x0 + ox0 + pi) * sw + kx * dw) * B + ic];
                            for l in 0..B {
                                a[l] = mac::<FMA>(xv, wv[l], a[l]);
                            }
                        }
                    }
                }
            }
        }
        store_px(&mut acc[..npx], ox0, fuse, dst);
        ox0 += npx;
    }
}

/// One output row of one output block of a [`Kind::Grouped`] conv: output lane `l` sums input
/// lanes `l - l % cg ..` of the same block.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn grouped_row_body<const FMA: bool>(
    p: &Conv2dParams,
    g: &Geom,
    x: &[f32],
    w: &[f32],
    bias: &[f32; B],
    oy: usize,
    dst: &mut [f32],
    fuse: Fuse<'_>,
) {
    let [kh, kw] = p.kernel;
    let [sh, sw] = p.stride;
    let [dh, dw] = p.dilation;
    let cg = g.cg;
    assert_eq!(g.pad, [0, 0], "the portable rows read padded planes");
    let mut ox0 = 0;
    while ox0 < g.ow {
        let npx = (g.ow - ox0).min(NPX);
        let mut acc = [*bias; NPX];
        for ky in 0..kh {
            let row = &x[(oy * sh + ky * dh) * g.wp * B..(oy * sh + ky * dh + 1) * g.wp * B];
            for kx in 0..kw {
                let wk = &w[(ky * kw + kx) * cg * B..(ky * kw + kx + 1) * cg * B];
                for j in 0..cg {
                    let wv: &[f32; B] = wk[j * B..(j + 1) * B].try_into().expect("16 lanes");
                    for (pi, a) in acc.iter_mut().enumerate().take(npx) {
                        let px = &row[((g.x0 + ox0 + pi) * sw + kx * dw) * B..][..B];
                        for l in 0..B {
                            a[l] = mac::<FMA>(px[l - l % cg + j], wv[l], a[l]);
                        }
                    }
                }
            }
        }
        store_px(&mut acc[..npx], ox0, fuse, dst);
        ox0 += npx;
    }
}

/// Dense conv row reading an NCHW input of `g.ib` channels (pixel stride 1).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn nchw_row_body<const FMA: bool>(
    p: &Conv2dParams,
    g: &Geom,
    x: &[f32],
    w: &[f32],
    bias: &[f32; B],
    oy: usize,
    dst: &mut [f32],
    fuse: Fuse<'_>,
) {
    let [kh, kw] = p.kernel;
    let [sh, sw] = p.stride;
    let [dh, dw] = p.dilation;
    let cin = g.ib;
    assert_eq!(g.pad, [0, 0], "the portable rows read padded planes");
    let mut ox0 = 0;
    while ox0 < g.ow {
        let npx = (g.ow - ox0).min(NPX);
        let mut acc = [*bias; NPX];
        for ky in 0..kh {
            for kx in 0..kw {
                for ic in 0..cin {
                    let wv: &[f32; B] = w[((ky * kw + kx) * cin + ic) * B..][..B]
                        .try_into()
                        .expect("16 lanes");
                    let row = &x[(ic * g.hp + oy * sh + ky * dh) * g.wp..][..g.wp];
                    for (pi, a) in acc.iter_mut().enumerate().take(npx) {
                        let xv = row[(g.x0 + ox0 + pi) * sw + kx * dw];
                        for l in 0..B {
                            a[l] = mac::<FMA>(xv, wv[l], a[l]);
                        }
                    }
                }
            }
        }
        store_px(&mut acc[..npx], ox0, fuse, dst);
        ox0 += npx;
    }
}

macro_rules! row_fn {
    ($name:ident, $body:ident) => {
        #[allow(clippy::too_many_arguments)]
        pub(super) fn $name(
            isa: Isa,
            p: &Conv2dParams,
            g: &Geom,
            x: &[f32],
            w: &[f32],
            bias: &[f32; B],
            oy: usize,
            dst: &mut [f32],
            fuse: Fuse<'_>,
        ) {
            #[cfg(target_arch = "x86_64")]
            {
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2(
                    p: &Conv2dParams,
                    g: &Geom,
                    x: &[f32],
                    w: &[f32],
                    bias: &[f32; B],
                    oy: usize,
                    dst: &mut [f32],
                    fuse: Fuse<'_>,
                ) {
                    $body::<true>(p, g, x, w, bias, oy, dst, fuse)
                }
                match isa {
                    // SAFETY: `isa` never exceeds `isa::best()`, which detected AVX-512F; the
                    // SIMD row checks its bounds before any unchecked access.
                    Isa::Avx512 => return x86::$name(p, g, x, w, bias, oy, dst, fuse),
                    // SAFETY: as above, AVX2 and FMA were detected.
                    Isa::Avx2 => return unsafe { avx2(p, g, x, w, bias, oy, dst, fuse) },
                    Isa::Scalar => {}
                }
            }
            let _ = isa;
            $body::<false>(p, g, x, w, bias, oy, dst, fuse)
        }
    };
}

row_fn!(dense_row, dense_row_body);
row_fn!(nchw_row, nchw_row_body);
row_fn!(grouped_row, grouped_row_body);

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! AVX-512 rows: `NPX` accumulator registers per run, weights as 16-wide vectors.
    use super::{Fuse, Geom, B};

    use crate::conv::Conv2dParams;
    use std::arch::x86_64::*;

    /// Where the taps of output row `oy` (the chunk `g.x0..g.x0 + g.ow`) fall in the `planes`
    /// planes of `hp x wp` pixels, reading them with the kernel's own padding `g.pad`: kernel
    /// rows `ky.0..ky.1` lie inside, and so does every tap of the chunk's pixels `lo..hi`
    /// (relative to the chunk). Asserts that, and the operand sizes, once per row so the
    /// kernels can read unchecked.
    struct RowTaps {
        ky: (usize, usize),
        lo: usize,
        hi: usize,
    }

    #[allow(clippy::too_many_arguments)]
    fn row_taps(
        p: &Conv2dParams,
        g: &Geom,
        oy: usize,
        (x_len, planes): (usize, usize),
        (w_len, w_need): (usize, usize),
        dst: usize,
        res: Option<&[f32]>,
    ) -> RowTaps {
        let [kh, kw] = p.kernel;
        let [sh, sw] = p.stride;
        let [dh, dw] = p.dilation;
        let [ph, pw] = g.pad;
        // kernel rows whose input row lies in the plane: ph <= oy*sh + ky*dh < ph + hp
        let top = oy * sh;
        let ky0 = ph.saturating_sub(top).div_ceil(dh).min(kh);
        let ky1 = if ph + g.hp > top {
            (ph + g.hp - top).div_ceil(dh).min(kh)
        } else {
            0
        }
        .max(ky0);
        // chunk pixels whose every tap lies in the plane: ox*sw >= pw, ox*sw + span - pw < wp
        let span = (kw - 1) * dw;
        let lo = pw.div_ceil(sw).saturating_sub(g.x0).min(g.ow);
        let hi = if g.wp + pw > span {
            ((g.wp + pw - span - 1) / sw + 1).saturating_sub(g.x0)
        } else {
            0
        }
        .clamp(lo, g.ow);
        assert!(
            ky1 == ky0 || top + (ky1 - 1) * dh - ph < g.hp,
            "kernel rows stay inside the plane"
        );
        assert!(
            hi == lo || ((g.x0 + hi - 1) * sw + span - pw < g.wp && (g.x0 + lo) * sw >= pw),
            "interior columns stay inside the plane"
        );
        assert!(
            x_len >= planes * g.hp * g.wp * B
                && w_len >= w_need
                && dst >= g.ow * B
                && res.is_none_or(|r| r.len() >= g.ow * B),
            "operand sizes"
        );
        RowTaps {
            ky: (ky0, ky1),
            lo,
            hi,
        }
    }

    /// Run `run::<N, C.., false>` over the chunk's runs inside `lo..hi` (their taps read
    /// unchecked) and `run::<N, C.., true>` over the others (edge runs, each tap checked), in
    /// balanced runs of at most 12 pixels (see [`pixel_runs`]).
    macro_rules! edge_runs {
        ($ow:expr, $t:expr, $run:ident $(::<$($c:tt),*>)?, $($args:expr),*) => {{
            let mut ox0 = 0;
            while ox0 < $ow {
                let n = super::super::run_len($ow - ox0);
                if ox0 >= $t.lo && ox0 + n <= $t.hi {
                    super::super::by_run_len!(n, $run::<_ $($(, $c)*)?, false>($($args,)* ox0));
                } else {
                    super::super::by_run_len!(n, $run::<_ $($(, $c)*)?, true>($($args,)* ox0));
                }
                ox0 += n;
            }
        }};
    }

    /// Run `kernel::<N>` over the row in balanced runs of at most 12 pixels (7 = one run of 7,
    /// 14 = 7 + 7, 26 = 9 + 9 + 8): a short leftover run would leave the FMA pipes waiting on
    /// too few accumulator chains.
    macro_rules! pixel_runs {
        ($ow:expr, $kernel:ident, $($args:expr),*) => {{
            let mut ox0 = 0;
            while ox0 < $ow {
                let n = super::super::run_len($ow - ox0);
                super::super::by_run_len!(n, $kernel($($args,)* ox0));
                ox0 += n;
            }
        }};
    }

    /// Store a run's accumulators at pixels `ox0..`: `+ residual`, clamp, as [`Fuse`] says.
    ///
    /// # Safety
    /// AVX-512F is available; `dst` and the residual hold `(ox0 + N) * 16` values.
    #[inline(always)]
    unsafe fn store_run<const N: usize>(
        acc: &[__m512; N],
        dst: *mut f32,
        ox0: usize,
        fuse: Fuse<'_>,
    ) {
        let clamp = fuse
            .clamp
            .map(|(lo, hi)| (_mm512_set1_ps(lo), _mm512_set1_ps(hi)));
        for (pi, &a) in acc.iter().enumerate() {
            let o = (ox0 + pi) * B;
            let mut v = a;
            if let Some(r) = fuse.res {
                // SAFETY: the caller guarantees the residual's run.
                v = _mm512_add_ps(v, unsafe { _mm512_loadu_ps(r.as_ptr().add(o)) });
            }
            if let Some((lo, hi)) = clamp {
                v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
            }
            // SAFETY: the caller guarantees the output's run.
            unsafe { _mm512_storeu_ps(dst.add(o), v) };
        }
    }

    pub(super) fn dense_row(
        p: &Conv2dParams,
        g: &Geom,
        x: &[f32],
        w: &[f32],
        bias: &[f32; B],
        oy: usize,
        dst: &mut [f32],
        fuse: Fuse<'_>,
    ) {
        let w_need = g.ib * p.kernel[0] * p.kernel[1] * B * B;
        let t = row_taps(
            p,
            g,
            oy,
            (x.len(), g.ib),
            (w.len(), w_need),
            dst.len(),
            fuse.res,
        );
        // SAFETY: AVX-512F was detected (the caller chose this path); `row_taps` bounds the
        // kernel rows, the interior runs' taps and every operand; an edge run checks its taps.
        unsafe { edge_runs!(g.ow, t, dense_run, p, g, x, w, bias, (oy, t.ky), dst, fuse) }
    }

    /// `N` pixels of one output row of one output block over kernel rows `ky.0..ky.1`: with
    /// `EDGE`, taps outside the planes (the kernel's padding) read zeros, each tap checked;
    /// without, every tap lies inside.
    ///
    /// # Safety
    /// AVX-512F is available; [`row_taps`] passed for this row, and without `EDGE` the run lies
    /// in its `lo..hi`; `ox0 + N <= ow`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn dense_run<const N: usize, const EDGE: bool>(
        p: &Conv2dParams,
        g: &Geom,
        x: &[f32],
        w: &[f32],
        bias: &[f32; B],
        (oy, (ky0, ky1)): (usize, (usize, usize)),
        dst: &mut [f32],
        fuse: Fuse<'_>,
        ox0: usize,
    ) {
        let [kh, kw] = p.kernel;
        let [sh, sw] = p.stride;
        let [dh, dw] = p.dilation;
        let [ph, pw] = g.pad;
        let zeros = [0f32; B];
        // SAFETY: 16 floats.
        let bv = unsafe { _mm512_loadu_ps(bias.as_ptr()) };
        let mut acc = [bv; N];
        let xp = x.as_ptr();
        let wp_ = w.as_ptr();
        for ib in 0..g.ib {
            // the zero-padded lanes of a partial last block are skipped
            let lanes = if ib + 1 == g.ib { g.last } else { B };
            for ky in ky0..ky1 {
                let row = (ib * g.hp + oy * sh + ky * dh - ph) * g.wp * B;
                for kx in 0..kw {
                    let wk = ((ib * kh + ky) * kw + kx) * B * B;
                    if EDGE {
                        let px = edge_pixels::<N>(g, x, row, (ox0, sw), kx * dw, &zeros);
                        for ic in 0..lanes {
                            // SAFETY: weight (ib, ky, kx, ic) lies in `w` (checked size).
                            let wv = unsafe { _mm512_loadu_ps(wp_.add(wk + ic * B)) };
                            for (a, q) in acc.iter_mut().zip(&px) {
                                // SAFETY: each pointer has 16 readable values; ic < 16.
                                let xv = unsafe { *q.add(ic) };
                                *a = _mm512_fmadd_ps(_mm512_set1_ps(xv), wv, *a);
                            }
                        }
                        continue;
                    }
                    let base = row + ((g.x0 + ox0) * sw + kx * dw - pw) * B;
                    for ic in 0..lanes {
                        // SAFETY: weight (ib, ky, kx, ic) lies in `w` (checked size).
                        let wv = unsafe { _mm512_loadu_ps(wp_.add(wk + ic * B)) };
                        for (pi, a) in acc.iter_mut().enumerate() {
                            // SAFETY: pixel ox0 + pi, tap (ky, kx) lies in the plane.
                            let xv = unsafe { *xp.add(base + pi * sw * B + ic) };
                            *a = _mm512_fmadd_ps(_mm512_set1_ps(xv), wv, *a);
                        }
                    }
                }
            }
        }
        // SAFETY: (ox0 + pi) < ow and dst (and the residual) hold ow * 16 values.
        unsafe { store_run(&acc, dst.as_mut_ptr(), ox0, fuse) };
    }

    /// The input pixel (16 values) of tap column offset `kxd` for each of the run's `N`
    /// pixels in plane row `row`, or `zeros` where it falls in the padding. Checked slices:
    /// every pointer has 16 readable values.
    #[inline(always)]
    fn edge_pixels<const N: usize>(
        g: &Geom,
        x: &[f32],
        row: usize,
        (ox0, sw): (usize, usize),
        kxd: usize,
        zeros: &[f32; B],
    ) -> [*const f32; N] {
        let mut px = [zeros.as_ptr(); N];
        for (pi, q) in px.iter_mut().enumerate() {
            let ix = (g.x0 + ox0 + pi) * sw + kxd;
            if ix >= g.pad[1] && ix - g.pad[1] < g.wp {
                *q = x[row + (ix - g.pad[1]) * B..][..B].as_ptr();
            }
        }
        px
    }

    /// Two output blocks of an unpadded 1x1 conv over one run of output pixels, `[pixel][block]`:
    /// each broadcast input value feeds 32 outputs instead of 16.
    pub(super) struct Pair<'a> {
        /// The image's `ib` input planes of `plane` pixels.
        pub x: &'a [f32],
        pub ib: usize,
        pub plane: usize,
        /// The run's first input pixel (in a plane) and the step between its pixels.
        pub first: usize,
        pub step: usize,
        /// Input channels in the last input block.
        pub last: usize,
        /// Each block's `[ib][16 ic][16 oc]` weights and bias.
        pub w: [&'a [f32]; 2],
        pub bias: [&'a [f32; B]; 2],
    }

    /// `len` output pixels of both blocks of `pair` into `dst` (each block's run of `len * 16`
    /// values), with each block's residual and clamp.
    pub(super) fn pair_run(pair: &Pair<'_>, len: usize, dst: [&mut [f32]; 2], fuse: [Fuse<'_>; 2]) {
        let k = pair.ib * B * B;
        assert!(
            len >= 1
                && pair.first + (len - 1) * pair.step < pair.plane
                && pair.x.len() >= pair.ib * pair.plane * B
                && pair.w.iter().all(|w| w.len() >= k)
                && dst.iter().all(|d| d.len() >= len * B)
                && fuse
                    .iter()
                    .all(|f| f.res.is_none_or(|r| r.len() >= len * B))
                && (1..=B).contains(&pair.last)
                && matches!(pair.step, 1 | 2),
            "operand sizes"
        );
        let [d0, d1] = dst;
        let mut ox0 = 0;
        while ox0 < len {
            let n = super::super::run_len(len - ox0);
            // SAFETY: AVX-512F was detected by the caller's ISA choice; the assert above bounds
            // every input pixel first + (ox0 + pi) * step < plane of every plane, every weight
            // and every output (and residual) of the run.
            unsafe {
                let out = (d0.as_mut_ptr(), d1.as_mut_ptr());
                if pair.step == 1 {
                    super::super::by_run_len!(n, pair_px::<_, 1>(pair, ox0, out, fuse))
                } else {
                    super::super::by_run_len!(n, pair_px::<_, 2>(pair, ox0, out, fuse))
                }
            };
            ox0 += n;
        }
    }

    /// `N` output pixels of both blocks, input pixels `S` apart (a compile-time step, so each
    /// broadcast's address is a constant offset).
    ///
    /// # Safety
    /// AVX-512F is available; see [`pair_run`]'s assert (`ox0 + N <= len`, `S == pair.step`).
    #[target_feature(enable = "avx512f")]
    unsafe fn pair_px<const N: usize, const S: usize>(
        pair: &Pair<'_>,
        ox0: usize,
        (d0, d1): (*mut f32, *mut f32),
        fuse: [Fuse<'_>; 2],
    ) {
        // SAFETY: 16 floats each.
        let (b0, b1) = unsafe {
            (
                _mm512_loadu_ps(pair.bias[0].as_ptr()),
                _mm512_loadu_ps(pair.bias[1].as_ptr()),
            )
        };
        let mut a0 = [b0; N];
        let mut a1 = [b1; N];
        let xp = pair.x.as_ptr();
        let (w0, w1) = (pair.w[0].as_ptr(), pair.w[1].as_ptr());
        for ib in 0..pair.ib {
            let lanes = if ib + 1 == pair.ib { pair.last } else { B };
            let base = (ib * pair.plane + pair.first + ox0 * S) * B;
            for ic in 0..lanes {
                let wk = (ib * B + ic) * B;
                // SAFETY: weight (ib, ic) of each block lies in its slice.
                let (v0, v1) =
                    unsafe { (_mm512_loadu_ps(w0.add(wk)), _mm512_loadu_ps(w1.add(wk))) };
                for pi in 0..N {
                    // SAFETY: input pixel first + (ox0 + pi) * step of plane ib lies in the input.
                    let xv = _mm512_set1_ps(unsafe { *xp.add(base + pi * S * B + ic) });
                    a0[pi] = _mm512_fmadd_ps(xv, v0, a0[pi]);
                    a1[pi] = _mm512_fmadd_ps(xv, v1, a1[pi]);
                }
            }
        }
        // SAFETY: both runs (and residuals) hold (ox0 + N) * 16 values.
        unsafe {
            store_run(&a0, d0, ox0, fuse[0]);
            store_run(&a1, d1, ox0, fuse[1]);
        }
    }

    pub(super) fn grouped_row(
        p: &Conv2dParams,
        g: &Geom,
        x: &[f32],
        w: &[f32],
        bias: &[f32; B],
        oy: usize,
        dst: &mut [f32],
        fuse: Fuse<'_>,
    ) {
        assert!(matches!(g.cg, 2 | 4 | 8), "group width");
        let w_need = p.kernel[0] * p.kernel[1] * g.cg * B;
        let t = row_taps(
            p,
            g,
            oy,
            (x.len(), 1),
            (w.len(), w_need),
            dst.len(),
            fuse.res,
        );
        // SAFETY: AVX-512F was detected (the caller chose this path); `row_taps` bounds the
        // kernel rows, the interior runs' taps (one block) and every operand; an edge run
        // checks its taps.
        unsafe {
            let a = (oy, t.ky);
            match g.cg {
                2 => edge_runs!(g.ow, t, grouped_run::<2>, p, g, x, w, bias, a, dst, fuse),
                4 => edge_runs!(g.ow, t, grouped_run::<4>, p, g, x, w, bias, a, dst, fuse),
                _ => edge_runs!(g.ow, t, grouped_run::<8>, p, g, x, w, bias, a, dst, fuse),
            }
        }
    }

    /// Lane `l` of the result is lane `l - l % CG + j` of `x`: input channel `j` of each output
    /// lane's group. In-lane shuffles for groups of 2 and 4, a cross-lane permute for 8.
    #[inline(always)]
    fn group_lanes<const CG: usize>(x: __m512, j: usize, idx: &[__m512i; 8]) -> __m512 {
        // SAFETY: only reached from `grouped_px`, compiled with AVX-512F.
        unsafe {
            match (CG, j) {
                (2, 0) => _mm512_permute_ps::<0xA0>(x),
                (2, _) => _mm512_permute_ps::<0xF5>(x),
                (4, 0) => _mm512_permute_ps::<0x00>(x),
                (4, 1) => _mm512_permute_ps::<0x55>(x),
                (4, 2) => _mm512_permute_ps::<0xAA>(x),
                (4, _) => _mm512_permute_ps::<0xFF>(x),
                _ => _mm512_permutexvar_ps(idx[j], x),
            }
        }
    }

    /// `N` pixels of one output row of one output block of a grouped conv with `CG`-channel
    /// groups over kernel rows `ky.0..ky.1`: per tap and pixel one input vector, shuffled `CG`
    /// times against `CG` weight rows; with `EDGE` as in [`dense_run`].
    ///
    /// # Safety
    /// As for [`dense_run`], with the one input block.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn grouped_run<const N: usize, const CG: usize, const EDGE: bool>(
        p: &Conv2dParams,
        g: &Geom,
        x: &[f32],
        w: &[f32],
        bias: &[f32; B],
        (oy, (ky0, ky1)): (usize, (usize, usize)),
        dst: &mut [f32],
        fuse: Fuse<'_>,
        ox0: usize,
    ) {
        let kw = p.kernel[1];
        let [sh, sw] = p.stride;
        let [dh, dw] = p.dilation;
        let [ph, pw] = g.pad;
        let zeros = [0f32; B];
        // SAFETY: 16 floats.
        let bv = unsafe { _mm512_loadu_ps(bias.as_ptr()) };
        let mut acc = [bv; N];
        let mut idx = [_mm512_setzero_si512(); 8];
        for (j, v) in idx.iter_mut().enumerate().take(CG) {
            let mut lanes = [0i32; B];
            for (l, e) in lanes.iter_mut().enumerate() {
                *e = (l - l % CG + j) as i32;
            }
            // SAFETY: 16 i32.
            *v = unsafe { _mm512_loadu_si512(lanes.as_ptr().cast()) };
        }
        let xp = x.as_ptr();
        let wp_ = w.as_ptr();
        for ky in ky0..ky1 {
            let row = (oy * sh + ky * dh - ph) * g.wp * B;
            for kx in 0..kw {
                let wk = (ky * kw + kx) * CG * B;
                let mut wv = [_mm512_setzero_ps(); CG];
                for (j, v) in wv.iter_mut().enumerate() {
                    // SAFETY: weight row (ky, kx, j) lies in `w` (checked size).
                    *v = unsafe { _mm512_loadu_ps(wp_.add(wk + j * B)) };
                }
                let fmas = |a: &mut __m512, xv: __m512| {
                    for (j, &wj) in wv.iter().enumerate() {
                        *a = _mm512_fmadd_ps(group_lanes::<CG>(xv, j, &idx), wj, *a);
                    }
                };
                if EDGE {
                    let px = edge_pixels::<N>(g, x, row, (ox0, sw), kx * dw, &zeros);
                    for (a, q) in acc.iter_mut().zip(&px) {
                        // SAFETY: each pointer has 16 readable values (in the plane, or zeros).
                        fmas(a, unsafe { _mm512_loadu_ps(*q) });
                    }
                    continue;
                }
                let base = row + ((g.x0 + ox0) * sw + kx * dw - pw) * B;
                for (pi, a) in acc.iter_mut().enumerate() {
                    // SAFETY: pixel ox0 + pi, tap (ky, kx) lies in the plane (`row_taps`).
                    fmas(a, unsafe { _mm512_loadu_ps(xp.add(base + pi * sw * B)) });
                }
            }
        }
        // SAFETY: (ox0 + pi) < ow and dst (and the residual) hold ow * 16 values.
        unsafe { store_run(&acc, dst.as_mut_ptr(), ox0, fuse) };
    }

    pub(super) fn nchw_row(
        p: &Conv2dParams,
        g: &Geom,
        x: &[f32],
        w: &[f32],
        bias: &[f32; B],
        oy: usize,
        dst: &mut [f32],
        fuse: Fuse<'_>,
    ) {
        let kk = p.kernel[0] * p.kernel[1];
        let last_y = oy * p.stride[0] + (p.kernel[0] - 1) * p.dilation[0];
        let last_x = (g.x0 + g.ow - 1) * p.stride[1] + (p.kernel[1] - 1) * p.dilation[1];
        assert!(
            g.pad == [0, 0] && last_y < g.hp && last_x < g.wp,
            "taps stay inside the padded plane"
        );
        assert!(
            x.len() >= g.ib * g.hp * g.wp && w.len() >= kk * g.ib * B && dst.len() >= g.ow * B,
            "operand sizes"
        );
        // SAFETY: as for `dense_row`: AVX-512F was detected and the asserts bound every access.
        if let Some(r) = fuse.res {
            assert!(r.len() >= g.ow * B, "residual size");
        }
        // SAFETY: as above; the residual holds the row's outputs too.
        unsafe { pixel_runs!(g.ow, nchw_px, p, g, x, w, bias, oy, dst, fuse) }
    }

    /// # Safety
    /// AVX-512F is available; the bounds of this row were checked; `ox0 + NPX <= ow`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn nchw_px<const N: usize>(
        p: &Conv2dParams,
        g: &Geom,
        x: &[f32],
        w: &[f32],
        bias: &[f32; B],
        oy: usize,
        dst: &mut [f32],
        fuse: Fuse<'_>,
        ox0: usize,
    ) {
        let [kh, kw] = p.kernel;
        let [sh, sw] = p.stride;
        let [dh, dw] = p.dilation;
        let cin = g.ib;
        // SAFETY: 16 floats.
        let bv = unsafe { _mm512_loadu_ps(bias.as_ptr()) };
        let mut acc = [bv; N];
        let xp = x.as_ptr();
        for ky in 0..kh {
            for kx in 0..kw {
                for ic in 0..cin {
                    // SAFETY: weight (ky, kx, ic) lies in `w` (checked size).
                    let wv =
                        unsafe { _mm512_loadu_ps(w.as_ptr().add(((ky * kw + kx) * cin + ic) * B)) };
                    let base = (ic * g.hp + oy * sh + ky * dh) * g.wp + (g.x0 + ox0) * sw + kx * dw;
                    for (pi, a) in acc.iter_mut().enumerate() {
                        // SAFETY: pixel ox0 + pi, tap (ky, kx) of channel ic lies in the padded plane.
                        let xv = unsafe { *xp.add(base + pi * sw) };
                        *a = _mm512_fmadd_ps(_mm512_set1_ps(xv), wv, *a);
                    }
                }
            }
        }
        // SAFETY: (ox0 + pi) < ow and dst (and the residual) hold ow * 16 values.
        unsafe { store_run(&acc, dst.as_mut_ptr(), ox0, fuse) };
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocked::{from_blocked, to_blocked};
    use crate::reference;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn concat_norm_conv_matches_concat_then_conv(parts in proptest::collection::vec(1usize..4, 1..4), cout in 1usize..40,
                                                     hw in 1usize..300, n in 1usize..3, relu in any::<bool>(),
                                                     act in 0usize..3, seed in any::<u64>()) {
            let c: usize = parts.iter().sum::<usize>() * B;
            let xs: Vec<Vec<f32>> = parts.iter().enumerate()
                .map(|(k, &b)| reference::pseudo_random(n * b * hw * B, seed ^ k as u64)).collect();
            let sc = reference::pseudo_random(c, seed ^ 10);
            let sh = reference::pseudo_random(c, seed ^ 11);
            let lanes = |v: &[f32]| -> Vec<[f32; B]> { v.chunks(B).map(|l| l.try_into().unwrap()).collect() };
            let (scale, shift) = (lanes(&sc), lanes(&sh));
            let norm_act = relu.then_some(Activation::Relu);
            let act = [None, Some(Activation::Relu6), Some(Activation::Gelu)][act];
            let p = Conv2dParams { in_channels: c, out_channels: cout, kernel: [1, 1], stride: [1, 1],
                                   padding: [0, 0], dilation: [1, 1], groups: 1 };
            let wt = reference::pseudo_random(p.weight_len(), seed ^ 12);
            let b = reference::pseudo_random(cout, seed ^ 13);
            let conv = BlockedConv::new(p, &wt, Some(&b)).unwrap();
            prop_assert!(conv.supports_concat_norm());
            let refs: Vec<&[f32]> = xs.iter().map(|v| v.as_slice()).collect();
            for isa in isa::available() {
                // reference: the normalised concatenation written out, then the conv
                let cat = crate::norm::concat_affine(isa, &refs, &parts, hw * B, n, &scale, &shift, norm_act).unwrap();
                let (want, _, _) = conv.run_isa(isa, &cat, n, 1, hw, None, act).unwrap();
                let input = ConcatNormInput { parts: &refs, blocks: &parts, scale: &scale, shift: &shift, act: norm_act };
                let got = conv.run_concat_norm(isa, &input, n, hw, act).unwrap();
                prop_assert_eq!(got.len(), want.len());
                for (a, w) in got.iter().zip(&want) {
                    prop_assert!((a - w).abs() <= 1e-5 * (1.0 + w.abs()), "{:?}: {} vs {}", isa, a, w);
                }
            }
        }
    }

    /// Run `p` over random `n x cin x h x w` data (with a random residual when `res`, then
    /// activation `act`: none, ReLU, ReLU6) on every ISA against the plain reference; returns
    /// the prepared conv.
    fn conv_matches_reference(
        p: Conv2dParams,
        (n, h, w): (usize, usize, usize),
        res: bool,
        act: usize,
        seed: u64,
    ) -> Result<BlockedConv, TestCaseError> {
        let (cin, cout) = (p.in_channels, p.out_channels);
        let x = reference::pseudo_random(n * cin * h * w, seed);
        let wt = reference::pseudo_random(p.weight_len(), seed ^ 1);
        let b = reference::pseudo_random(cout, seed ^ 2);
        let (mut want, oh, ow) = reference::conv2d(&p, &x, n, h, w, &wt, Some(&b)).unwrap();
        let r = reference::pseudo_random(want.len(), seed ^ 3);
        let act = [None, Some(Activation::Relu), Some(Activation::Relu6)][act];
        for (v, rv) in want.iter_mut().zip(&r) {
            if res {
                *v += rv;
            }
            if let Some(a) = act {
                *v = a.apply_scalar(*v);
            }
        }
        let conv = BlockedConv::new(p, &wt, Some(&b)).unwrap();
        let xb = if conv.nchw_input() {
            x.clone()
        } else {
            to_blocked(&x, n, cin, h * w)
        };
        let rb = to_blocked(&r, n, cout, oh * ow);
        for isa in isa::available() {
            let (yb, ooh, oow) = conv
                .run_isa(isa, &xb, n, h, w, res.then_some(rb.as_slice()), act)
                .unwrap();
            prop_assert_eq!((ooh, oow), (oh, ow));
            let y = from_blocked(&yb, n, cout, oh * ow);
            for (a, bb) in y.iter().zip(&want) {
                prop_assert!(
                    (a - bb).abs() <= 1e-4 * (1.0 + bb.abs()),
                    "{:?}: {} vs {}",
                    isa,
                    a,
                    bb
                );
            }
        }
        Ok(conv)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn blocked_conv_matches_reference(cin in 1usize..40, cout in 1usize..40, k in 1usize..5, s in 1usize..3,
                                          pad in 0usize..3, dil in 1usize..3, h in 1usize..9, w in 1usize..120,
                                          n in 1usize..3, dw in any::<bool>(), res in any::<bool>(), act in 0usize..3,
                                          seed in any::<u64>()) {
            let pad = pad.min(k - 1);
            let (h, w) = (h.max(dil * (k - 1) + 1), w.max(dil * (k - 1) + 1));
            let (cin, cout, groups) = if dw {
                (cin, cin, cin)
            } else if cout % 3 == 0 {
                (32, 64, 2) // groups of whole blocks (RegNet style)
            } else if cout % 3 == 1 {
                // groups of 2, 4 or 8 channels, several per block (ResNeXt style)
                let cg = [2, 4, 8][cin % 3];
                let groups = (cout / 3).max(1);
                (cg * groups, cg * groups, groups)
            } else {
                (cin, cout, 1)
            };
            let p = Conv2dParams { in_channels: cin, out_channels: cout, kernel: [k, k], stride: [s, s],
                                   padding: [pad, pad], dilation: [dil, dil], groups };
            let conv = conv_matches_reference(p, (n, h, w), res, act, seed)?;
            if groups > 1 && groups != cin && cin / groups < B {
                let grouped = matches!(conv.kind, Kind::Grouped { .. });
                prop_assert!(grouped, "small groups take the grouped kernel");
            }
        }

        /// Dense and grouped convs whose padding the AVX-512 rows apply themselves (output rows
        /// of three runs or more; narrower ones take the padded copy): rectangular kernels,
        /// strides and dilations, padding up to past the kernel (output rows and columns with
        /// no tap inside the input), edge and interior runs; groups of 2, 4 or 8 channels
        /// (ResNeXt) and of whole blocks (RegNet).
        #[test]
        fn padded_convs_match_reference(cin in 16usize..60, cout in 1usize..40, k in (1usize..6, 1usize..6),
                                        s in (1usize..3, 1usize..3), d in (1usize..3, 1usize..3),
                                        pad in (0usize..4, 0usize..4), h in 1usize..9, w in 1usize..100,
                                        n in 1usize..3, kind in 0usize..3, res in any::<bool>(), act in 0usize..3,
                                        seed in any::<u64>()) {
            let (h, w) = (h.max(d.0 * (k.0 - 1) + 1), w.max(d.1 * (k.1 - 1) + 1));
            let (cin, cout, groups) = match kind {
                0 => (cin, cout, 1),
                1 => {
                    let cg = [2, 4, 8][cin % 3];
                    let groups = (cout / 2).max(2);
                    (cg * groups, cg * groups, groups)
                }
                _ => {
                    let groups = 2 + cout % 2;
                    (B * groups * (1 + cin % 2), B * groups, groups)
                }
            };
            let p = Conv2dParams { in_channels: cin, out_channels: cout, kernel: [k.0, k.1], stride: [s.0, s.1],
                                   padding: [pad.0, pad.1], dilation: [d.0, d.1], groups };
            let conv = conv_matches_reference(p, (n, h, w), res, act, seed)?;
            if kind == 1 {
                prop_assert!(matches!(conv.kind, Kind::Grouped { .. }), "small groups take the grouped kernel");
            }
        }

        /// Unpadded 1x1 convs over several output blocks (on AVX-512 two blocks per register
        /// run, an odd last block alone), stride 1 (one flat row) or 2: partial last input
        /// blocks, several images, rows that end mid-run, residual and clamp.
        #[test]
        fn unpadded_1x1_convs_match_reference(cin in 16usize..300, cout in 17usize..90, h in 1usize..12,
                                              w in 1usize..60, s in 1usize..3, n in 1usize..3,
                                              res in any::<bool>(), act in 0usize..3, seed in any::<u64>()) {
            let p = Conv2dParams { in_channels: cin, out_channels: cout, kernel: [1, 1], stride: [s, s],
                                   padding: [0, 0], dilation: [1, 1], groups: 1 };
            conv_matches_reference(p, (n, h, w), res, act, seed)?;
        }
    }
}
