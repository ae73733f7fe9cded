use qvision_kernels::isa;
use qvision_kernels::qgemm::{qgemm_isa, PackedQA, QRhs, Requant};
use qvision_kernels::sgemm::{sgemm, Epilogue, PackedA, Rhs};
use std::time::Instant;
fn time<F: FnMut()>(mut f: F) -> f64 {
    for _ in 0..3 {
        f();
    }
    (0..10)
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
        for (m, k, n) in [
            (256, 64, 3136),
            (64, 576, 3136),
            (128, 1152, 784),
            (2048, 512, 49),
            (96, 16, 12544),
        ] {
            let a = vec![3i8; m * k];
            let b = vec![7u8; k * n];
            let mut c = vec![0u8; m * n];
            let mult = vec![0.001f32; m];
            let rq = Requant {
                za: 3,
                bias: None,
                multiplier: &mult,
                zo: 10,
                qmin: 0,
                qmax: 255,
                residual: None,
            };
            let pa = PackedQA::new(&a, m, k).unwrap();
            let af = vec![0.5f32; m * k];
            let bf = vec![0.25f32; k * n];
            let mut cf = vec![0f32; m * n];
            let pf = PackedA::new(&af, m, k).unwrap();
            let tf = time(|| {
                sgemm(
                    &pf,
                    Rhs::Dense { b: &bf, ldb: n },
                    n,
                    &mut cf,
                    n,
                    Epilogue::default(),
                )
                .unwrap()
            });
            let mut line = format!(
                "m{m} k{k} n{n}: fp32 {:.0} GFLOP/s",
                2.0 * (m * k * n) as f64 / tf / 1e9
            );
            for i in isa::available_int8() {
                let t = time(|| {
                    qgemm_isa(i, &pa, QRhs::Dense { b: &b, ldb: n }, n, &mut c, n, &rq).unwrap()
                });
                line += &format!(
                    " | {:?} {:.0} GOP/s ({:.2}x fp32 time)",
                    i,
                    2.0 * (m * k * n) as f64 / t / 1e9,
                    t / tf
                );
            }
            println!("{line}");
        }
    });
}
