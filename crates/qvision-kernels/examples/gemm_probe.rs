use qvision_kernels::gemm::{matmul, Lhs, PackedMatrix};
use qvision_kernels::sgemm::{sgemm, Epilogue, PackedA, Rhs};
use std::time::Instant;
fn time<F: FnMut()>(mut f: F) -> f64 {
    for _ in 0..3 {
        f();
    }
    let t = Instant::now();
    for _ in 0..20 {
        f();
    }
    t.elapsed().as_secs_f64() / 20.0
}
fn main() {
    for threads in [2] {
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
            (256, 2304, 196),
            (96, 16, 12544),
            (24, 96, 3136),
            (144, 24, 3136),
        ] {
            let a = vec![0.5f32; m * k];
            let b = vec![0.25f32; k * n];
            let mut c = vec![0f32; m * n];
            let pm = PackedMatrix::pack(&a, m, k).unwrap();
            let pa = PackedA::new(&a, m, k).unwrap();
            pool.install(|| {
                let s1 = time(|| matmul(&mut c, Lhs::Packed(&pm), &b, n, n, None).unwrap());
                let s2 = time(|| {
                    sgemm(
                        &pa,
                        Rhs::Dense { b: &b, ldb: n },
                        n,
                        &mut c,
                        n,
                        Epilogue::default(),
                    )
                    .unwrap()
                });
                let g = |s: f64| 2.0 * (m * k * n) as f64 / s / 1e9;
                println!(
                    "t{threads} m{m} k{k} n{n}: rten {:.0} GFLOP/s, qvision {:.0} GFLOP/s",
                    g(s1),
                    g(s2)
                );
            });
        }
    }
}
