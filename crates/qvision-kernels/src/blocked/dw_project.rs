//! A depthwise conv and the 1x1 conv that alone reads it, in one pass (MobileNetV2's inverted
//! residual ends `dw 3x3 -> ReLU6 -> 1x1 project`): each task computes a few output rows of
//! the depthwise conv for every channel block into a per-thread staging tile, then runs the
//! 1x1 conv over that tile. The depthwise output (1.6-1.8 MB per image at 112x112 and 56x56,
//! more than a core's L2) is never written to memory and read back.

use super::conv::{
    clamp_of, dense_row, finish_chunk, interior_cols, tile_tasks, BlockedConv, Fuse, Geom, Kind,
    NPX, STAGE,
};
use super::dw::{row, DwRow};
use super::{blocks, B};
use crate::act::Activation;
use crate::isa::Isa;
use crate::{shape_err, KernelError};
use qvision_tensor::pool;
use rayon::prelude::*;

/// Fewer tasks than this do not share out over the threads well, and each task reads all of
/// the 1x1 conv's weights: such (small) maps run the two convs one after the other.
const MIN_TASKS: usize = 8;

impl BlockedConv {
    /// Whether [`BlockedConv::run_dw_project`] can run `dw` and then this conv: `dw` a blocked
    /// depthwise conv, this a dense 1x1, stride 1, unpadded conv over its channels.
    pub fn supports_dw_project(&self, dw: &BlockedConv) -> bool {
        matches!(dw.kind, Kind::Depthwise { .. })
            && self.supports_concat_norm()
            && dw.p.out_channels == self.p.in_channels
    }

    /// `self(dw_act(dw(x)))` with `residual` and `act` as for [`BlockedConv::run`], on
    /// `x = [n][blocks][h][w][16]`; returns `[n][blocks(out)][oh][ow][16]` and `(oh, ow)`.
    #[allow(clippy::too_many_arguments)]
    pub fn run_dw_project(
        &self,
        isa: Isa,
        dw: &BlockedConv,
        x: &[f32],
        n: usize,
        h: usize,
        w: usize,
        dw_act: Option<Activation>,
        residual: Option<&[f32]>,
        act: Option<Activation>,
    ) -> Result<(Vec<f32>, usize, usize), KernelError> {
        let Kind::Dense { w: pw } = &self.kind else {
            return Err(shape_err("conv2d (dw + 1x1)", "not a dense 1x1 conv"));
        };
        let Kind::Depthwise { w: dww } = &dw.kind else {
            return Err(shape_err("conv2d (dw + 1x1)", "not a depthwise conv"));
        };
        if !self.supports_dw_project(dw) {
            return Err(shape_err(
                "conv2d (dw + 1x1)",
                format!(
                    "a 1x1 conv over {} channels cannot follow a depthwise conv of {}",
                    self.p.in_channels, dw.p.out_channels
                ),
            ));
        }
        let mb = blocks(dw.p.in_channels);
        let ob = blocks(self.p.out_channels);
        if x.len() != n * mb * h * w * B {
            return Err(shape_err(
                "conv2d (dw + 1x1)",
                format!("input has {} values, want {n}x{mb}x{h}x{w}x16", x.len()),
            ));
        }
        let (oh, ow) = dw.p.output_size(h, w)?;
        let hw = oh * ow;
        if residual.is_some_and(|r| r.len() != n * ob * hw * B) {
            return Err(shape_err(
                "conv2d (dw + 1x1)",
                "residual does not match the output",
            ));
        }
        // output rows per task: a few register runs of pixels
        let rows = NPX.div_ceil(ow).clamp(1, oh.max(1));
        let tiles = oh.div_ceil(rows);
        if n * tiles < MIN_TASKS {
            let (y, _, _) = dw.run_isa(isa, x, n, h, w, None, dw_act)?;
            let out = self.run_isa(isa, &y, n, 1, hw, residual, act);
            pool::recycle(y);
            return out.map(|(o, _, _)| (o, oh, ow));
        }
        let dw_clamp = clamp_of(dw_act);
        let dw_left = dw_act.filter(|_| dw_clamp.is_none());
        let clamp = clamp_of(act);
        let left = act.filter(|_| clamp.is_none());
        let (lo, hi) = interior_cols(&dw.p, w, ow);
        let k = dw.p.kernel[0] * dw.p.kernel[1] * B;
        let mut out = pool::take(n * ob * hw * B);
        // a tile is `rows` whole output rows
        tile_tasks(&mut out, ob, hw, rows * ow)
            .into_par_iter()
            .for_each(|(img, t, dsts)| {
                let oy0 = t * rows;
                let np = dsts[0].len() / B;
                STAGE.with(|stage| {
                    let mut stage = stage.borrow_mut();
                    stage.resize(mb * np * B, 0.0);
                    for bi in 0..mb {
                        let plane = &x[(img * mb + bi) * h * w * B..][..h * w * B];
                        let bias = dw.bias_lanes(bi);
                        let staged = &mut stage[bi * np * B..(bi + 1) * np * B];
                        for (r, dst) in staged.chunks_mut(ow * B).enumerate() {
                            let dr = DwRow {
                                p: &dw.p,
                                x: plane,
                                h,
                                w,
                                wk: &dww[bi * k..(bi + 1) * k],
                                bias,
                                oy: oy0 + r,
                                x0: 0,
                                lo,
                                hi,
                                clamp: dw_clamp,
                            };
                            row(isa, &dr, dst);
                            finish_chunk(isa, dst, None, dw_left);
                        }
                    }
                    let g = Geom {
                        ib: mb,
                        hp: 1,
                        wp: np,
                        ow: np,
                        x0: 0,
                        cg: 0,
                        last: self.p.in_channels - (mb - 1) * B,
                        pad: [0, 0],
                    };
                    let kk = mb * B * B;
                    let p0 = oy0 * ow;
                    for (obi, dst) in dsts.into_iter().enumerate() {
                        let bias = self.bias_lanes(obi);
                        let res =
                            residual.map(|r| &r[((img * ob + obi) * hw + p0) * B..][..np * B]);
                        dense_row(
                            isa,
                            &self.p,
                            &g,
                            &stage[..mb * np * B],
                            &pw[obi * kk..(obi + 1) * kk],
                            bias,
                            0,
                            dst,
                            Fuse { res, clamp },
                        );
                        finish_chunk(isa, dst, None, left);
                    }
                });
            });
        Ok((out, oh, ow))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocked::{from_blocked, to_blocked};
    use crate::conv::Conv2dParams;
    use crate::{isa, reference};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn dw_project_matches_the_two_convs(c in 1usize..60, cout in 1usize..40, k in 0usize..3, s in 1usize..3,
                                            h in 1usize..40, w in 1usize..70, n in 1usize..3,
                                            res in any::<bool>(), dw_act in 0usize..3, act in 0usize..3,
                                            seed in any::<u64>()) {
            let k = [3, 5, 7][k];
            let (h, w) = (h.max(k), w.max(k));
            let dwp = Conv2dParams { in_channels: c, out_channels: c, kernel: [k, k], stride: [s, s],
                                     padding: [k / 2, k / 2], dilation: [1, 1], groups: c };
            let pp = Conv2dParams { in_channels: c, out_channels: cout, kernel: [1, 1], stride: [1, 1],
                                    padding: [0, 0], dilation: [1, 1], groups: 1 };
            let x = reference::pseudo_random(n * c * h * w, seed);
            let (dw_w, dw_b) = (reference::pseudo_random(dwp.weight_len(), seed ^ 1), reference::pseudo_random(c, seed ^ 2));
            let (pw_w, pw_b) = (reference::pseudo_random(pp.weight_len(), seed ^ 3), reference::pseudo_random(cout, seed ^ 4));
            let dw_act = [None, Some(Activation::Relu6), Some(Activation::Hardswish)][dw_act];
            let act = [None, Some(Activation::Relu), Some(Activation::Gelu)][act];
            // reference: the two convs in NCHW, with the residual and activations in between
            let (mut mid, oh, ow) = reference::conv2d(&dwp, &x, n, h, w, &dw_w, Some(&dw_b)).unwrap();
            if let Some(a) = dw_act { mid.iter_mut().for_each(|v| *v = a.apply_scalar(*v)); }
            let (mut want, _, _) = reference::conv2d(&pp, &mid, n, oh, ow, &pw_w, Some(&pw_b)).unwrap();
            let r = reference::pseudo_random(want.len(), seed ^ 5);
            for (v, rv) in want.iter_mut().zip(&r) {
                if res { *v += rv; }
                if let Some(a) = act { *v = a.apply_scalar(*v); }
            }
            let dw = BlockedConv::new(dwp, &dw_w, Some(&dw_b)).unwrap();
            let pw = BlockedConv::new(pp, &pw_w, Some(&pw_b)).unwrap();
            // fewer than 16 channels: the 1x1 conv reads NCHW (and one channel is no depthwise)
            prop_assert_eq!(pw.supports_dw_project(&dw), c >= B);
            if c < B {
                return Ok(());
            }
            prop_assert!(!dw.supports_dw_project(&pw));
            let xb = to_blocked(&x, n, c, h * w);
            let rb = to_blocked(&r, n, cout, oh * ow);
            let rb = res.then_some(rb.as_slice());
            for isa in isa::available() {
                // the blocked kernels one after the other
                let (mid_b, _, _) = dw.run_isa(isa, &xb, n, h, w, None, dw_act).unwrap();
                let (two, _, _) = pw.run_isa(isa, &mid_b, n, oh, ow, rb, act).unwrap();
                let (got, ooh, oow) = pw.run_dw_project(isa, &dw, &xb, n, h, w, dw_act, rb, act).unwrap();
                prop_assert_eq!((ooh, oow), (oh, ow));
                prop_assert_eq!(&got, &two, "{:?}: fused differs from the two blocked convs", isa);
                let y = from_blocked(&got, n, cout, oh * ow);
                for (a, b) in y.iter().zip(&want) {
                    prop_assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{:?}: {} vs {}", isa, a, b);
                }
            }
        }
    }

    #[test]
    fn mismatched_inputs_are_errors() {
        let dwp = Conv2dParams {
            in_channels: 20,
            out_channels: 20,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
            dilation: [1, 1],
            groups: 20,
        };
        let pp = Conv2dParams {
            in_channels: 20,
            out_channels: 8,
            kernel: [1, 1],
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
        };
        let dw = BlockedConv::new(dwp, &vec![0.1; dwp.weight_len()], None).unwrap();
        let pw = BlockedConv::new(pp, &vec![0.1; pp.weight_len()], None).unwrap();
        let isa = isa::current();
        let x = vec![0.0; 2 * 16 * 16 * B];
        assert!(
            pw.run_dw_project(isa, &dw, &x[1..], 1, 16, 16, None, None, None)
                .is_err(),
            "input size"
        );
        assert!(
            pw.run_dw_project(isa, &dw, &x, 1, 16, 16, None, Some(&x[..5]), None)
                .is_err(),
            "residual size"
        );
        assert!(
            dw.run_dw_project(isa, &pw, &x, 1, 16, 16, None, None, None)
                .is_err(),
            "swapped convs"
        );
        assert!(pw
            .run_dw_project(isa, &dw, &x, 1, 16, 16, None, None, None)
            .is_ok());
    }
}
