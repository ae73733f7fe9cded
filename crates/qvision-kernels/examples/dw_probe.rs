use qvision_kernels::conv::Conv2dParams;
use qvision_kernels::depthwise::depthwise_isa;
use qvision_kernels::isa;
use std::time::Instant;
fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        for (c, hw, s) in [(96, 112, 1), (144, 56, 1), (144, 56, 2), (960, 7, 1)] {
            let p = Conv2dParams {
                in_channels: c,
                out_channels: c,
                kernel: [3, 3],
                stride: [s, s],
                padding: [1, 1],
                dilation: [1, 1],
                groups: c,
            };
            let w = vec![0.01f32; p.weight_len()];
            let x = vec![0.5f32; c * hw * hw];
            let (oh, ow) = p.output_size(hw, hw).unwrap();
            let mut y = vec![0.0; c * oh * ow];
            for i in isa::available() {
                for _ in 0..3 {
                    depthwise_isa(i, &p, &w, None, None, &x, hw, hw, &mut y, oh, ow);
                }
                let t = Instant::now();
                for _ in 0..50 {
                    depthwise_isa(i, &p, &w, None, None, &x, hw, hw, &mut y, oh, ow);
                }
                let ms = t.elapsed().as_secs_f64() / 50.0 * 1e3;
                println!(
                    "t{threads} c{c} {hw} s{s} {:?}: {ms:.3} ms {:.1} GFLOP/s",
                    i,
                    2.0 * (c * oh * ow * 9) as f64 / ms / 1e6
                );
            }
        }
    });
}
