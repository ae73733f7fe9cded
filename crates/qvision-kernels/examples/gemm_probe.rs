use qvision_kernels::gemm::{matmul, Lhs, PackedMatrix};
use std::time::Instant;
fn main() {
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for (m, k, n) in [
            (256, 64, 3136),
            (64, 256, 3136),
            (64, 576, 3136),
            (512, 128, 784),
            (128, 1152, 784),
            (2048, 512, 49),
            (1000, 2048, 1),
        ] {
            let a = vec![0.5f32; m * k];
            let b = vec![0.25f32; k * n];
            let mut c = vec![0f32; m * n];
            let pm = PackedMatrix::pack(&a, m, k).unwrap();
            pool.install(|| {
                for _ in 0..3 {
                    matmul(&mut c, Lhs::Packed(&pm), &b, n, n, None).unwrap();
                }
                let t = Instant::now();
                let it = 20;
                for _ in 0..it {
                    matmul(&mut c, Lhs::Packed(&pm), &b, n, n, None).unwrap();
                }
                let s = t.elapsed().as_secs_f64() / it as f64;
                println!(
                    "t{threads} m{m} k{k} n{n}: {:.3} ms {:.1} GFLOP/s",
                    s * 1e3,
                    2.0 * (m * k * n) as f64 / s / 1e9
                );
            });
        }
    }
}
