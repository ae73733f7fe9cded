//! Time the int8 NHWC conv on one shape per activation:
//! `cargo run --release -p qvision-kernels --example qconv_probe -- 16 96 112 1`.
use qvision_kernels::qnhwc::{PreparedQConv, QConvOutput};
use qvision_kernels::{Activation, Conv2dParams};
use std::time::Instant;

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().unwrap())
        .collect();
    let (cin, cout, hw, k) = (a[0], a[1], a[2], a[3]);
    let dw = a.get(4).copied().unwrap_or(0) == 1;
    if a.get(4) == Some(&2) {
        use qvision_kernels::qops::{channel_affine, Q};
        let x: Vec<u8> = (0..hw * hw * cin).map(|i| (i * 13 % 251) as u8).collect();
        let s = vec![0.5f32; cin];
        let t = Instant::now();
        for _ in 0..20 {
            channel_affine(&x, Q::new(0.1, 3), &s, &s, Q::new(0.2, 5), true).unwrap();
        }
        println!(
            "affine {}x{}x{cin}: {:.3} ms",
            hw,
            hw,
            t.elapsed().as_secs_f64() * 1e3 / 20.0
        );
        return;
    }
    let p = Conv2dParams {
        in_channels: cin,
        out_channels: cout,
        kernel: [k, k],
        stride: [1, 1],
        padding: [k / 2, k / 2],
        dilation: [1, 1],
        groups: if dw { cin } else { 1 },
    };
    let w: Vec<i8> = (0..p.weight_len())
        .map(|i| (i * 7 % 255) as u8 as i8)
        .collect();
    let x: Vec<u8> = (0..hw * hw * cin).map(|i| (i * 13 % 251) as u8).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for act in [
        None,
        Some(Activation::Relu6),
        Some(Activation::Silu),
        Some(Activation::Hardswish),
    ] {
        let out = QConvOutput {
            za: 3,
            multiplier: vec![0.001; cout],
            zo: 100,
            out_scale: 0.05,
            act,
        };
        let c = PreparedQConv::new(p, &w, None, out).unwrap();
        pool.install(|| {
            for _ in 0..3 {
                c.run(&x, 1, hw, hw, None).unwrap();
            }
            let t = Instant::now();
            for _ in 0..20 {
                c.run(&x, 1, hw, hw, None).unwrap();
            }
            println!("{act:?}: {:.3} ms", t.elapsed().as_secs_f64() * 1e3 / 20.0);
        });
    }
}
