//! Max, average and adaptive-average pooling over NCHW with PyTorch's window rules, and their
//! gradients.

use super::Buf;
use qvision_kernels::pool::Pool2dParams;
use rayon::prelude::*;

fn out_size(x: &Buf, p: &Pool2dParams) -> (usize, usize) {
    p.output_size(x.shape[2], x.shape[3])
        .expect("shapes are checked before training")
}

/// Max pooling; also returns, per output, the flat input index of its maximum.
pub fn max_forward(x: &Buf, p: &Pool2dParams) -> (Buf, Vec<u32>) {
    let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (oh, ow) = out_size(x, p);
    let mut y = vec![0.0; n * c * oh * ow];
    let mut idx = vec![0u32; y.len()];
    y.par_chunks_mut(oh * ow)
        .zip(idx.par_chunks_mut(oh * ow))
        .enumerate()
        .for_each(|(nc, (yo, io))| {
            let base = nc * h * w;
            for oy in 0..oh {
                for ox in 0..ow {
                    let (mut best, mut at) = (f32::NEG_INFINITY, base);
                    for ki in 0..p.kernel[0] {
                        let iy = (oy * p.stride[0] + ki * p.dilation[0]) as isize
                            - p.padding[0] as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for kj in 0..p.kernel[1] {
                            let ix = (ox * p.stride[1] + kj * p.dilation[1]) as isize
                                - p.padding[1] as isize;
                            if ix < 0 || ix >= w as isize {
                                continue;
                            }
                            let k = base + iy as usize * w + ix as usize;
                            let v = x.data[k];
                            if v > best || v.is_nan() {
                                best = v;
                                at = k;
                            }
                        }
                    }
                    yo[oy * ow + ox] = best;
                    io[oy * ow + ox] = at as u32;
                }
            }
        });
    (Buf::new(vec![n, c, oh, ow], y), idx)
}

pub fn max_backward(x_len: usize, idx: &[u32], dy: &[f32]) -> Vec<f32> {
    let mut dx = vec![0.0; x_len];
    for (&i, &g) in idx.iter().zip(dy) {
        dx[i as usize] += g;
    }
    dx
}

/// Window `[start, end)` along one axis and its divisor term (PyTorch's `avg_pool2d`).
fn avg_window(o: usize, p: &Pool2dParams, axis: usize, size: usize) -> (usize, usize, usize) {
    let start = (o * p.stride[axis]) as isize - p.padding[axis] as isize;
    let end = (start + p.kernel[axis] as isize).min((size + p.padding[axis]) as isize);
    let pool = (end - start) as usize;
    let (s, e) = (start.max(0) as usize, end.min(size as isize) as usize);
    (s, e.max(s), pool)
}

fn avg_walk(
    x_shape: &[usize],
    p: &Pool2dParams,
    count_include_pad: bool,
    mut f: impl FnMut(usize, usize, usize, f32),
) {
    let (n, c, h, w) = (x_shape[0], x_shape[1], x_shape[2], x_shape[3]);
    let (oh, ow) = p.output_size(h, w).expect("checked");
    for nc in 0..n * c {
        for oy in 0..oh {
            let (y0, y1, py) = avg_window(oy, p, 0, h);
            for ox in 0..ow {
                let (x0, x1, px) = avg_window(ox, p, 1, w);
                let div = if count_include_pad {
                    py * px
                } else {
                    (y1 - y0) * (x1 - x0)
                }
                .max(1) as f32;
                let o = (nc * oh + oy) * ow + ox;
                for iy in y0..y1 {
                    for ix in x0..x1 {
                        f(o, nc, iy * w + ix, 1.0 / div);
                    }
                }
            }
        }
    }
}

/// Average pooling (the engine's kernel; [`avg_backward`] walks the same windows).
pub fn avg_forward(x: &Buf, p: &Pool2dParams, count_include_pad: bool) -> Result<Buf, String> {
    let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (y, oh, ow) = qvision_kernels::pool::avg_pool2d(p, count_include_pad, &x.data, n * c, h, w)
        .map_err(|e| e.to_string())?;
    Ok(Buf::new(vec![n, c, oh, ow], y))
}

pub fn avg_backward(
    x_shape: &[usize],
    p: &Pool2dParams,
    count_include_pad: bool,
    dy: &[f32],
) -> Vec<f32> {
    let hw = x_shape[2] * x_shape[3];
    let mut dx = vec![0.0; x_shape.iter().product()];
    avg_walk(x_shape, p, count_include_pad, |o, nc, i, s| {
        dx[nc * hw + i] += dy[o] * s
    });
    dx
}

fn adaptive_bins(size: usize, out: usize) -> Vec<(usize, usize)> {
    (0..out)
        .map(|i| (i * size / out, ((i + 1) * size).div_ceil(out)))
        .collect()
}

/// Adaptive average pooling (the engine's kernel; [`adaptive_backward`] uses the same bins).
pub fn adaptive_forward(x: &Buf, output: [usize; 2]) -> Result<Buf, String> {
    let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let y = qvision_kernels::pool::adaptive_avg_pool2d(&x.data, n * c, h, w, output[0], output[1])
        .map_err(|e| e.to_string())?;
    Ok(Buf::new(vec![n, c, output[0], output[1]], y))
}

pub fn adaptive_backward(x_shape: &[usize], output: [usize; 2], dy: &[f32]) -> Vec<f32> {
    let (h, w) = (x_shape[2], x_shape[3]);
    let (by, bx) = (adaptive_bins(h, output[0]), adaptive_bins(w, output[1]));
    let mut dx = vec![0.0; x_shape.iter().product()];
    let per = output[0] * output[1];
    for (nc, plane) in dx.chunks_mut(h * w).enumerate() {
        for (i, &(y0, y1)) in by.iter().enumerate() {
            for (j, &(x0, x1)) in bx.iter().enumerate() {
                let g = dy[nc * per + i * output[1] + j] / ((y1 - y0) * (x1 - x0)) as f32;
                for iy in y0..y1 {
                    plane[iy * w + x0..iy * w + x1]
                        .iter_mut()
                        .for_each(|v| *v += g);
                }
            }
        }
    }
    dx
}
