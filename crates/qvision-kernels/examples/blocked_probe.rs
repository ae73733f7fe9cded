use qvision_kernels::blocked::{conv::BlockedConv, to_blocked};
use qvision_kernels::conv::{Conv2dParams, PreparedConv};
use std::time::Instant;
fn time<F: FnMut()>(mut f: F) -> f64 {
    for _ in 0..3 {
        f();
    }
    (0..8)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..3 {
                f();
            }
            t.elapsed().as_secs_f64() / 3.0
        })
        .fold(f64::MAX, f64::min)
}
fn main() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.install(|| {
        for (c, co, hw, k, s, g) in [(64, 64, 56, 3, 1, 1), (256, 64, 56, 1, 1, 1), (64, 256, 56, 1, 1, 1), (128, 128, 28, 3, 1, 1), (256, 256, 14, 3, 1, 1), (512, 512, 7, 3, 1, 1), (144, 144, 56, 3, 1, 144), (96, 96, 112, 3, 2, 96), (960, 960, 7, 3, 1, 960), (24, 144, 56, 1, 1, 1)] {
            let p = Conv2dParams { in_channels: c, out_channels: co, kernel: [k, k], stride: [s, s], padding: [k / 2, k / 2], dilation: [1, 1], groups: g };
            let w = vec![0.01f32; p.weight_len()];
            let x = vec![0.5f32; c * hw * hw];
            let xb = to_blocked(&x, 1, c, hw * hw);
            let a = PreparedConv::new(p, &w, None, None).unwrap();
            let b = BlockedConv::new(p, &w, None).unwrap();
            let ta = time(|| { let (y, _, _) = a.run(&x, 1, hw, hw).unwrap(); qvision_tensor::pool::recycle(y); });
            let tb = time(|| { let (y, _, _) = b.run(&xb, 1, hw, hw, None, None).unwrap(); qvision_tensor::pool::recycle(y); });
            let (oh, ow) = p.output_size(hw, hw).unwrap();
            let fl = 2.0 * (co * oh * ow * c / g * k * k) as f64;
            println!("c{c} co{co} {hw} k{k} s{s} g{g}: nchw {:.3} ms ({:.0} GF/s)  blocked {:.3} ms ({:.0} GF/s)", ta * 1e3, fl / ta / 1e9, tb * 1e3, fl / tb / 1e9);
        }
    });
}
