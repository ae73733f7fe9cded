use qvision_kernels::pool::{max_pool2d, Pool2dParams};
use std::time::Instant;
fn main() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let p = Pool2dParams {
        kernel: [3, 3],
        stride: [2, 2],
        padding: [1, 1],
        dilation: [1, 1],
        ceil_mode: false,
    };
    let x = vec![0.5f32; 64 * 112 * 112];
    pool.install(|| {
        for _ in 0..3 {
            let _ = max_pool2d(&p, &x, 64, 112, 112).unwrap();
        }
        let t = Instant::now();
        for _ in 0..20 {
            let (y, _, _) = max_pool2d(&p, &x, 64, 112, 112).unwrap();
            qvision_tensor::pool::recycle(y);
        }
        println!("maxpool {:.3} ms", t.elapsed().as_secs_f64() / 20.0 * 1e3);
    });
}
