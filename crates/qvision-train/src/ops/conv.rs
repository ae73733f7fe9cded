//! 2-D convolution forward and backward (NCHW; grouped, depthwise, strided, dilated).
//!
//! Dense groups run as GEMMs over an im2col matrix per sample (`Y = W·col`,
//! `dW += dY·colᵀ`, `dcol = Wᵀ·dY` then col2im); depthwise convs run as direct loops.
//! Samples are processed in parallel; weight gradients are summed over fixed sample ranges in a
//! fixed order, so the result does not depend on the thread count.

use super::{accumulate, ranges, Buf, REDUCE_PARTS};
use qvision_kernels::conv::Conv2dParams;
use qvision_kernels::gemm::{gemm_strided, MatRef};
use rayon::prelude::*;

struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    cg: usize,
    og: usize,
    kc: usize,
}

fn geom(x: &[usize], p: &Conv2dParams) -> Geom {
    let (n, c, h, w) = (x[0], x[1], x[2], x[3]);
    let (oh, ow) = p
        .output_size(h, w)
        .expect("shapes are checked before training");
    let cg = c / p.groups;
    Geom {
        n,
        c,
        h,
        w,
        oh,
        ow,
        cg,
        og: p.out_channels / p.groups,
        kc: cg * p.kernel[0] * p.kernel[1],
    }
}

fn is_pointwise(p: &Conv2dParams) -> bool {
    p.kernel == [1, 1] && p.stride == [1, 1] && p.padding == [0, 0]
}

fn is_depthwise(p: &Conv2dParams) -> bool {
    p.groups == p.in_channels && p.groups == p.out_channels
}

/// Output columns `[lo, hi)` whose input column `ox*stride + k*dilation - pad` lies in
/// `[0, size)`.
fn valid_cols(out: usize, k: usize, p: &Conv2dParams, axis: usize, size: usize) -> (usize, usize) {
    let off = (k * p.dilation[axis]) as isize - p.padding[axis] as isize;
    let s = p.stride[axis] as isize;
    let lo = if off >= 0 { 0 } else { (-off + s - 1) / s };
    let hi = if size as isize - off <= 0 {
        0
    } else {
        (size as isize - off + s - 1) / s
    };
    let (lo, hi) = (
        lo.clamp(0, out as isize) as usize,
        hi.clamp(0, out as isize) as usize,
    );
    (lo, hi.max(lo))
}

/// `col[(ci*kh + ki)*kw + kj][oy*ow + ox]` for the `cg` channels starting at `x`.
fn im2col(x: &[f32], g: &Geom, p: &Conv2dParams, col: &mut [f32]) {
    let [kh, kw] = p.kernel;
    let ohw = g.oh * g.ow;
    let sx = p.stride[1];
    for ci in 0..g.cg {
        let plane = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ki in 0..kh {
            for kj in 0..kw {
                let row = &mut col[((ci * kh + ki) * kw + kj) * ohw..][..ohw];
                let (lo, hi) = valid_cols(g.ow, kj, p, 1, g.w);
                let off = (kj * p.dilation[1]) as isize - p.padding[1] as isize;
                for oy in 0..g.oh {
                    let iy =
                        (oy * p.stride[0] + ki * p.dilation[0]) as isize - p.padding[0] as isize;
                    let out = &mut row[oy * g.ow..(oy + 1) * g.ow];
                    if iy < 0 || iy >= g.h as isize || lo == hi {
                        out.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    out[..lo].fill(0.0);
                    out[hi..].fill(0.0);
                    let start = (lo as isize * sx as isize + off) as usize;
                    if sx == 1 {
                        out[lo..hi].copy_from_slice(&src[start..start + (hi - lo)]);
                    } else {
                        for (o, v) in out[lo..hi].iter_mut().zip(src[start..].iter().step_by(sx)) {
                            *o = *v;
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: add `col` back into the `cg` channel planes at `dx`.
fn col2im(col: &[f32], g: &Geom, p: &Conv2dParams, dx: &mut [f32]) {
    let [kh, kw] = p.kernel;
    let ohw = g.oh * g.ow;
    let sx = p.stride[1];
    for ci in 0..g.cg {
        let plane = &mut dx[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ki in 0..kh {
            for kj in 0..kw {
                let row = &col[((ci * kh + ki) * kw + kj) * ohw..][..ohw];
                let (lo, hi) = valid_cols(g.ow, kj, p, 1, g.w);
                if lo == hi {
                    continue;
                }
                let off = (kj * p.dilation[1]) as isize - p.padding[1] as isize;
                let start = (lo as isize * sx as isize + off) as usize;
                for oy in 0..g.oh {
                    let iy =
                        (oy * p.stride[0] + ki * p.dilation[0]) as isize - p.padding[0] as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let dst = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    let src = &row[oy * g.ow + lo..oy * g.ow + hi];
                    if sx == 1 {
                        dst[start..start + (hi - lo)]
                            .iter_mut()
                            .zip(src)
                            .for_each(|(d, v)| *d += v);
                    } else {
                        for (d, v) in dst[start..].iter_mut().step_by(sx).zip(src) {
                            *d += v;
                        }
                    }
                }
            }
        }
    }
}

/// `y = conv(x, w) + b`: per sample (in parallel), direct loops for depthwise convs and
/// `W·im2col(x)` GEMMs otherwise — the same im2col the backward uses.
pub fn forward(x: &Buf, w: &[f32], b: Option<&[f32]>, p: &Conv2dParams) -> Buf {
    let g = geom(&x.shape, p);
    let ohw = g.oh * g.ow;
    let mut y = vec![0.0f32; g.n * p.out_channels * ohw];
    let in_len = g.c * g.h * g.w;
    let out_len = p.out_channels * ohw;
    y.par_chunks_mut(out_len)
        .zip(x.data.par_chunks(in_len))
        .for_each(|(yn, xn)| {
            if is_depthwise(p) {
                dw_forward(xn, w, &g, p, yn);
            } else {
                let mut col = vec![0.0; if is_pointwise(p) { 0 } else { g.kc * ohw }];
                for gi in 0..p.groups {
                    let xg = &xn[gi * g.cg * g.h * g.w..(gi + 1) * g.cg * g.h * g.w];
                    let colm = if is_pointwise(p) {
                        xg
                    } else {
                        im2col(xg, &g, p, &mut col);
                        &col[..]
                    };
                    let wg = &w[gi * g.og * g.kc..(gi + 1) * g.og * g.kc];
                    gemm_strided(
                        &mut yn[gi * g.og * ohw..(gi + 1) * g.og * ohw],
                        MatRef::new(wg, g.og, g.kc),
                        MatRef::new(colm, g.kc, ohw),
                        0.0,
                    )
                    .expect("conv gemm shapes agree");
                }
            }
            if let Some(b) = b {
                for (co, plane) in yn.chunks_mut(ohw).enumerate() {
                    plane.iter_mut().for_each(|v| *v += b[co]);
                }
            }
        });
    Buf::new(vec![g.n, p.out_channels, g.oh, g.ow], y)
}

/// Gradients of a conv: `(dx if need_dx, dw, db if need_db)`.
pub fn backward(
    x: &Buf,
    w: &[f32],
    p: &Conv2dParams,
    dy: &[f32],
    need_dx: bool,
    need_db: bool,
) -> (Option<Vec<f32>>, Vec<f32>, Option<Vec<f32>>) {
    let g = geom(&x.shape, p);
    let ohw = g.oh * g.ow;
    let in_len = g.c * g.h * g.w;
    let out_len = p.out_channels * ohw;
    let mut dx = if need_dx {
        vec![0.0f32; x.len()]
    } else {
        vec![]
    };
    // Each fixed sample range yields a partial dW; ranges are summed in order.
    let parts = ranges(g.n, REDUCE_PARTS);
    let mut dx_parts: Vec<&mut [f32]> = Vec::with_capacity(parts.len());
    if need_dx {
        let mut rest = &mut dx[..];
        for r in &parts {
            let (a, b) = rest.split_at_mut(r.len() * in_len);
            dx_parts.push(a);
            rest = b;
        }
    } else {
        dx_parts.extend(parts.iter().map(|_| &mut [][..]));
    }
    let partial: Vec<Vec<f32>> = parts
        .par_iter()
        .zip(dx_parts.into_par_iter())
        .map(|(r, dxr)| {
            let mut dw = vec![0.0f32; w.len()];
            let mut col = vec![0.0f32; if is_pointwise(p) { 0 } else { g.kc * ohw }];
            let mut dcol = vec![0.0f32; if need_dx { g.kc * ohw } else { 0 }];
            for (i, n) in r.clone().enumerate() {
                let xn = &x.data[n * in_len..(n + 1) * in_len];
                let dyn_ = &dy[n * out_len..(n + 1) * out_len];
                if is_depthwise(p) {
                    let dxn = if need_dx {
                        Some(&mut dxr[i * in_len..(i + 1) * in_len])
                    } else {
                        None
                    };
                    dw_backward(xn, w, &g, p, dyn_, dxn, &mut dw);
                    continue;
                }
                for gi in 0..p.groups {
                    let xg = &xn[gi * g.cg * g.h * g.w..(gi + 1) * g.cg * g.h * g.w];
                    let dyg = &dyn_[gi * g.og * ohw..(gi + 1) * g.og * ohw];
                    let wg = &w[gi * g.og * g.kc..(gi + 1) * g.og * g.kc];
                    let colm = if is_pointwise(p) {
                        xg
                    } else {
                        im2col(xg, &g, p, &mut col);
                        &col[..]
                    };
                    gemm_strided(
                        &mut dw[gi * g.og * g.kc..(gi + 1) * g.og * g.kc],
                        MatRef::new(dyg, g.og, ohw),
                        MatRef::new(colm, g.kc, ohw).t(),
                        1.0,
                    )
                    .expect("conv dW shapes agree");
                    if need_dx {
                        let dxg =
                            &mut dxr[i * in_len + gi * g.cg * g.h * g.w..][..g.cg * g.h * g.w];
                        if is_pointwise(p) {
                            gemm_strided(
                                dxg,
                                MatRef::new(wg, g.og, g.kc).t(),
                                MatRef::new(dyg, g.og, ohw),
                                1.0,
                            )
                            .expect("conv dX shapes agree");
                        } else {
                            gemm_strided(
                                &mut dcol,
                                MatRef::new(wg, g.og, g.kc).t(),
                                MatRef::new(dyg, g.og, ohw),
                                0.0,
                            )
                            .expect("conv dcol shapes agree");
                            col2im(&dcol, &g, p, dxg);
                        }
                    }
                }
            }
            dw
        })
        .collect();
    let mut dw = vec![0.0f32; w.len()];
    for part in &partial {
        accumulate(&mut dw, part);
    }
    let db = need_db.then(|| {
        let mut db = vec![0.0f32; p.out_channels];
        for n in 0..g.n {
            for (co, plane) in dy[n * out_len..(n + 1) * out_len].chunks(ohw).enumerate() {
                db[co] += plane.iter().sum::<f32>();
            }
        }
        db
    });
    (need_dx.then_some(dx), dw, db)
}

/// Input coordinate of output `o` at tap `k` along one axis, if inside.
#[inline(always)]
fn tap(o: usize, k: usize, p: &Conv2dParams, axis: usize, size: usize) -> Option<usize> {
    let i = (o * p.stride[axis] + k * p.dilation[axis]) as isize - p.padding[axis] as isize;
    (i >= 0 && (i as usize) < size).then_some(i as usize)
}

fn dw_forward(xn: &[f32], w: &[f32], g: &Geom, p: &Conv2dParams, yn: &mut [f32]) {
    let [kh, kw] = p.kernel;
    let (hw, ohw) = (g.h * g.w, g.oh * g.ow);
    for c in 0..g.c {
        let (plane, wc, out) = (
            &xn[c * hw..(c + 1) * hw],
            &w[c * kh * kw..(c + 1) * kh * kw],
            &mut yn[c * ohw..(c + 1) * ohw],
        );
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let mut s = 0.0f32;
                for ki in 0..kh {
                    let Some(iy) = tap(oy, ki, p, 0, g.h) else {
                        continue;
                    };
                    for kj in 0..kw {
                        if let Some(ix) = tap(ox, kj, p, 1, g.w) {
                            s += plane[iy * g.w + ix] * wc[ki * kw + kj];
                        }
                    }
                }
                out[oy * g.ow + ox] = s;
            }
        }
    }
}

fn dw_backward(
    xn: &[f32],
    w: &[f32],
    g: &Geom,
    p: &Conv2dParams,
    dyn_: &[f32],
    mut dxn: Option<&mut [f32]>,
    dw: &mut [f32],
) {
    let [kh, kw] = p.kernel;
    let (hw, ohw) = (g.h * g.w, g.oh * g.ow);
    for c in 0..g.c {
        let plane = &xn[c * hw..(c + 1) * hw];
        let d = &dyn_[c * ohw..(c + 1) * ohw];
        for ki in 0..kh {
            for kj in 0..kw {
                let wv = w[c * kh * kw + ki * kw + kj];
                let mut acc = 0.0f32;
                for oy in 0..g.oh {
                    let Some(iy) = tap(oy, ki, p, 0, g.h) else {
                        continue;
                    };
                    for ox in 0..g.ow {
                        if let Some(ix) = tap(ox, kj, p, 1, g.w) {
                            let gv = d[oy * g.ow + ox];
                            acc += gv * plane[iy * g.w + ix];
                            if let Some(dx) = dxn.as_deref_mut() {
                                dx[c * hw + iy * g.w + ix] += gv * wv;
                            }
                        }
                    }
                }
                dw[c * kh * kw + ki * kw + kj] += acc;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The training forward equals the inference engine's conv.
    #[test]
    fn forward_matches_the_engine_conv() {
        let mut rng = Rng::new(1);
        for p in [
            Conv2dParams {
                in_channels: 3,
                out_channels: 5,
                kernel: [3, 3],
                stride: [2, 2],
                padding: [1, 1],
                dilation: [1, 1],
                groups: 1,
            },
            Conv2dParams {
                in_channels: 4,
                out_channels: 6,
                kernel: [3, 3],
                stride: [1, 1],
                padding: [2, 2],
                dilation: [2, 2],
                groups: 2,
            },
            Conv2dParams {
                in_channels: 8,
                out_channels: 8,
                kernel: [5, 5],
                stride: [2, 2],
                padding: [2, 2],
                dilation: [1, 1],
                groups: 8,
            },
            Conv2dParams {
                in_channels: 8,
                out_channels: 4,
                kernel: [1, 1],
                stride: [1, 1],
                padding: [0, 0],
                dilation: [1, 1],
                groups: 1,
            },
        ] {
            let x = Buf::new(
                vec![2, p.in_channels, 9, 9],
                (0..2 * p.in_channels * 81)
                    .map(|_| rng.range(-1.0, 1.0))
                    .collect(),
            );
            let w: Vec<f32> = (0..p.weight_len()).map(|_| rng.range(-1.0, 1.0)).collect();
            let b: Vec<f32> = (0..p.out_channels).map(|_| rng.range(-1.0, 1.0)).collect();
            let a = forward(&x, &w, Some(&b), &p);
            let conv = qvision_kernels::conv::PreparedConv::new(p, &w, Some(&b), None).unwrap();
            let (data, oh, ow) = conv.run(&x.data, 2, 9, 9).unwrap();
            let r = Buf::new(vec![2, p.out_channels, oh, ow], data);
            assert_eq!(a.shape, r.shape);
            for (u, v) in a.data.iter().zip(&r.data) {
                assert!((u - v).abs() < 1e-4, "{p:?}: {u} vs {v}");
            }
        }
    }
}
