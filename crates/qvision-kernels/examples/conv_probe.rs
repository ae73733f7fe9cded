use qvision_kernels::conv::{Conv2dParams, PreparedConv};
use qvision_kernels::gemm::{matmul, Lhs, PackedMatrix};
use std::time::Instant;
fn time<F: FnMut()>(mut f: F) -> f64 {
    for _ in 0..3 {
        f();
    }
    let t = Instant::now();
    for _ in 0..20 {
        f();
    }
    t.elapsed().as_secs_f64() / 20.0 * 1e3
}
fn main() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.install(|| {
        for (c, co, hw, k, s, g) in [(96, 96, 112, 3, 1, 96), (96, 96, 112, 3, 1, 96), (64, 64, 56, 3, 1, 1), (128, 128, 56, 3, 2, 1), (256, 256, 14, 3, 1, 1), (64, 256, 56, 1, 1, 1), (96, 96, 112, 3, 1, 96), (144, 144, 56, 3, 1, 144), (16, 96, 112, 1, 1, 1), (96, 24, 56, 1, 1, 1)] {
            let p = Conv2dParams { in_channels: c, out_channels: co, kernel: [k, k], stride: [s, s], padding: [k / 2, k / 2], dilation: [1, 1], groups: g };
            let w = vec![0.01f32; p.weight_len()];
            let x = vec![0.5f32; c * hw * hw];
            let conv = PreparedConv::new(p, &w, None, None).unwrap();
            let tc = time(|| { let (y, _, _) = conv.run(&x, 1, hw, hw).unwrap(); qvision_tensor::pool::recycle(y); });
            let (oh, ow) = p.output_size(hw, hw).unwrap();
            let kk = c / g * k * k;
            let n = oh * ow;
            let tg = if g == 1 {
                let pm = PackedMatrix::pack(&w, co, kk).unwrap();
                let b = vec![0.5f32; kk * n];
                let mut out = vec![0.0; co * n];
                time(|| matmul(&mut out, Lhs::Packed(&pm), &b, n, n, None).unwrap())
            } else { 0.0 };
            let macs = (co * n * kk) as f64;
            println!("c{c} co{co} {hw}x{hw} k{k} s{s} g{g}: conv {tc:.3} ms ({:.0} GFLOP/s), gemm only {tg:.3} ms", 2.0 * macs / tc / 1e6);
        }
    });
}
