//! Kernel micro-benchmarks: `cargo bench -p qvision-kernels --bench kernels [-- FILTER]`.
//!
//! Each case runs the blocked fp32 kernels on one layer shape from the zoo, single-threaded and
//! on every core, and prints the median time and GFLOP/s with the ISA in use. Numbers are for
//! comparing kernel changes on one machine in one run; model-level comparisons against other
//! runtimes are `qvision bench` and `scripts/bench-vs-peers`.

use qvision_kernels::act::Activation;
use qvision_kernels::blocked::conv::BlockedConv;
use qvision_kernels::blocked::{blocks, norm as bnorm, B};
use qvision_kernels::conv::Conv2dParams;
use qvision_kernels::isa;
use std::time::Instant;

/// Median seconds of `f` over enough runs to fill ~0.3 s.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    f();
    let once = t.elapsed().as_secs_f64().max(1e-6);
    let runs = ((0.3 / once) as usize).clamp(5, 2000);
    let mut v: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A `k x k` conv with "same" padding (`k / 2`).
fn square(cin: usize, cout: usize, k: usize, s: usize, groups: usize) -> Conv2dParams {
    Conv2dParams {
        in_channels: cin,
        out_channels: cout,
        kernel: [k, k],
        stride: [s, s],
        padding: [k / 2, k / 2],
        dilation: [1, 1],
        groups,
    }
}

struct Case {
    name: String,
    flops: f64,
    run: Box<dyn Fn() + Sync>,
}

#[allow(clippy::too_many_arguments)]
fn conv(
    name: &str,
    cin: usize,
    cout: usize,
    k: usize,
    s: usize,
    groups: usize,
    hw: usize,
    act: Option<Activation>,
) -> Case {
    let p = square(cin, cout, k, s, groups);
    let w = qvision_kernels::reference::pseudo_random(p.weight_len(), 1);
    let b = qvision_kernels::reference::pseudo_random(cout, 2);
    let c = BlockedConv::new(p, &w, Some(&b)).expect("blocked geometry");
    // a stem (fewer than 16 channels) reads NCHW
    let per_px = if c.nchw_input() { cin } else { blocks(cin) * B };
    let x = qvision_kernels::reference::pseudo_random(per_px * hw * hw, 3);
    let (oh, ow) = p.output_size(hw, hw).expect("geometry");
    let flops = 2.0 * (cout * oh * ow * (cin / groups) * k * k) as f64;
    Case {
        name: format!("{name} {cin}->{cout} k{k} s{s} g{groups} {hw}x{hw}"),
        flops,
        run: Box::new(move || {
            let (y, _, _) = c.run(&x, 1, hw, hw, None, act).expect("run");
            qvision_tensor::pool::recycle(y);
        }),
    }
}

fn layer_norm(c: usize, hw: usize) -> Case {
    let g = qvision_kernels::reference::pseudo_random(c, 1);
    let b = qvision_kernels::reference::pseudo_random(c, 2);
    let x = qvision_kernels::reference::pseudo_random(blocks(c) * hw * hw * B, 3);
    Case {
        name: format!("layer_norm_2d {c} {hw}x{hw}"),
        flops: 0.0,
        run: Box::new(move || {
            // in place over a pooled copy (a fresh clone would time page faults)
            let mut y = qvision_tensor::pool::take(x.len());
            y.copy_from_slice(&x);
            bnorm::layer_norm_2d(isa::current(), &mut y, 1, c, hw * hw, &g, &b, 1e-6).expect("run");
            qvision_tensor::pool::recycle(y);
        }),
    }
}

/// ResNet's 3x3 stride-2 max pool after the stem (blocked).
fn max_pool(c: usize, hw: usize) -> Case {
    use qvision_kernels::pool::Pool2dParams;
    let p = Pool2dParams {
        kernel: [3, 3],
        stride: [2, 2],
        padding: [1, 1],
        dilation: [1, 1],
        ceil_mode: false,
    };
    let x = qvision_kernels::reference::pseudo_random(blocks(c) * hw * hw * B, 1);
    Case {
        name: format!("max_pool 3x3 s2 {c} {hw}x{hw}"),
        flops: 0.0,
        run: Box::new(move || {
            let (y, _, _) =
                qvision_kernels::blocked::pool::max_pool(&p, &x, blocks(c), hw, hw).expect("run");
            qvision_tensor::pool::recycle(y);
        }),
    }
}

/// The int8 graph's input: an NCHW f32 image quantized into NHWC u8.
fn quantize_nhwc(c: usize, hw: usize) -> Case {
    use qvision_kernels::qops::{quantize_to_nhwc, Q};
    let x = qvision_kernels::reference::pseudo_random(c * hw * hw, 1);
    Case {
        name: format!("int8 quantize nchw->nhwc {c} {hw}x{hw}"),
        flops: 0.0,
        run: Box::new(move || {
            let y = quantize_to_nhwc(&x, 1, c, hw * hw, Q::new(0.02, 114)).expect("run");
            qvision_tensor::pool::recycle_u8(y);
        }),
    }
}

/// A classifier head at batch 1 (`gemv`); the weights stay in cache here, unlike in a model.
fn gemv(k: usize, n: usize) -> Case {
    let rnd = qvision_kernels::reference::pseudo_random;
    let (x, w, b) = (rnd(k, 1), rnd(k * n, 2), rnd(n, 3));
    Case {
        name: format!("gemv {k}x{n}"),
        flops: 2.0 * (k * n) as f64,
        run: Box::new(move || {
            let y = qvision_kernels::gemv::gemv(&x, &w, n, Some(&b)).expect("run");
            qvision_tensor::pool::recycle(y);
        }),
    }
}

/// MobileNetV2's `project(relu6(dw(x)))`: fused (`run_dw_project`) or the depthwise output
/// written out first.
fn dw_project(c: usize, cout: usize, s: usize, hw: usize, fused: bool) -> Case {
    let dwp = square(c, c, 3, s, c);
    let pp = square(c, cout, 1, 1, 1);
    let rnd = qvision_kernels::reference::pseudo_random;
    let dw = BlockedConv::new(dwp, &rnd(dwp.weight_len(), 1), Some(&rnd(c, 2))).expect("dw");
    let pw = BlockedConv::new(pp, &rnd(pp.weight_len(), 3), Some(&rnd(cout, 4))).expect("1x1");
    let x = rnd(blocks(c) * hw * hw * B, 5);
    let (oh, ow) = dwp.output_size(hw, hw).expect("geometry");
    let relu6 = Some(Activation::Relu6);
    Case {
        name: format!(
            "mnv2 dw+project {} {c}->{cout} s{s} {hw}x{hw}",
            if fused { "fused" } else { "two" }
        ),
        flops: 2.0 * (c * oh * ow * (9 + cout)) as f64,
        run: Box::new(move || {
            let isa = isa::current();
            let y = if fused {
                pw.run_dw_project(isa, &dw, &x, 1, hw, hw, relu6, None, None)
                    .expect("run")
                    .0
            } else {
                let (m, _, _) = dw.run(&x, 1, hw, hw, None, relu6).expect("run");
                let (y, _, _) = pw.run(&m, 1, oh, ow, None, None).expect("run");
                qvision_tensor::pool::recycle(m);
                y
            };
            qvision_tensor::pool::recycle(y);
        }),
    }
}

/// DenseNet's `conv1(relu(norm1(cat(features))))`: fused (`run_concat_norm`) or the
/// concatenation written out first (`concat_affine`, then the conv).
fn dense_layer(blocks_in: usize, hw: usize, fused: bool) -> Case {
    use qvision_kernels::blocked::conv::ConcatNormInput;
    let p = square(blocks_in * B, 128, 1, 1, 1);
    let w = qvision_kernels::reference::pseudo_random(p.weight_len(), 1);
    let b = qvision_kernels::reference::pseudo_random(128, 2);
    let c = BlockedConv::new(p, &w, Some(&b)).expect("blocked geometry");
    // the first part is the block's input, then 32-channel (2-block) features
    let mut blocks = vec![blocks_in % 2 + 2];
    while blocks.iter().sum::<usize>() < blocks_in {
        blocks.push(2);
    }
    let parts: Vec<Vec<f32>> = blocks
        .iter()
        .map(|&nb| qvision_kernels::reference::pseudo_random(nb * hw * hw * B, 3))
        .collect();
    let scale = vec![[0.5f32; B]; blocks_in];
    let shift = vec![[0.1f32; B]; blocks_in];
    let relu = Some(Activation::Relu);
    Case {
        name: format!(
            "densenet {} {}->128 {hw}x{hw}",
            if fused { "fused" } else { "cat+conv" },
            blocks_in * B
        ),
        flops: 2.0 * (128 * hw * hw * blocks_in * B) as f64,
        run: Box::new(move || {
            let refs: Vec<&[f32]> = parts.iter().map(|v| v.as_slice()).collect();
            let isa = isa::current();
            let y = if fused {
                let input = ConcatNormInput {
                    parts: &refs,
                    blocks: &blocks,
                    scale: &scale,
                    shift: &shift,
                    act: relu,
                };
                c.run_concat_norm(isa, &input, 1, hw * hw, relu)
                    .expect("run")
            } else {
                let cat = qvision_kernels::norm::concat_affine(
                    isa,
                    &refs,
                    &blocks,
                    hw * hw * B,
                    1,
                    &scale,
                    &shift,
                    relu,
                )
                .expect("cat");
                let (y, _, _) = c.run(&cat, 1, hw, hw, None, relu).expect("run");
                qvision_tensor::pool::recycle(cat);
                y
            };
            qvision_tensor::pool::recycle(y);
        }),
    }
}

/// An int8 NHWC conv (VNNI / AMX as `QVISION_ISA` picks), with a residual if `res`.
#[allow(clippy::too_many_arguments)]
fn qconv(name: &str, cin: usize, cout: usize, k: usize, s: usize, hw: usize, res: bool) -> Case {
    use qvision_kernels::qnhwc::{PreparedQConv, QConvOutput};
    let p = square(cin, cout, k, s, 1);
    let w: Vec<i8> = (0..p.weight_len())
        .map(|i| ((i * 37 % 255) as i32 - 127) as i8)
        .collect();
    let bias: Vec<i32> = (0..cout as i32).map(|c| c * 13 - 200).collect();
    let out = QConvOutput {
        za: 3,
        multiplier: vec![1e-3; cout],
        zo: 0,
        out_scale: 0.05,
        act: Some(Activation::Relu),
    };
    let c = PreparedQConv::new(p, &w, Some(&bias), out).expect("qconv");
    let x: Vec<u8> = (0..hw * hw * cin).map(|i| (i * 7 % 251) as u8).collect();
    let (oh, ow) = p.output_size(hw, hw).expect("geometry");
    let r: Vec<u8> = (0..oh * ow * cout).map(|i| (i * 11 % 253) as u8).collect();
    Case {
        name: format!(
            "int8 {name} {cin}->{cout} k{k} s{s} {hw}x{hw}{}",
            if res { " +res" } else { "" }
        ),
        flops: 2.0 * (cout * oh * ow * cin * k * k) as f64,
        run: Box::new(move || {
            let residual = res.then_some((r.as_slice(), 5, 0.7));
            let (y, _, _) = c.run(&x, 1, hw, hw, residual).expect("run");
            qvision_tensor::pool::recycle_u8(y);
        }),
    }
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let relu6 = Some(Activation::Relu6);
    let cases = vec![
        conv("mnv2 stem", 3, 32, 3, 2, 1, 224, relu6),
        conv("mnv2 dw", 32, 32, 3, 1, 32, 112, relu6),
        conv("mnv2 project", 32, 16, 1, 1, 1, 112, None),
        conv("mnv2 expand", 16, 96, 1, 1, 1, 112, relu6),
        conv("mnv2 dw s2", 96, 96, 3, 2, 96, 112, relu6),
        conv("mnv2 expand", 24, 144, 1, 1, 1, 56, relu6),
        conv("mnv3 expand", 24, 72, 1, 1, 1, 56, Some(Activation::Relu)),
        conv("mnv3 project", 120, 40, 1, 1, 1, 28, None),
        conv("mnv2 project", 144, 24, 1, 1, 1, 56, None),
        conv("mnv2 expand", 32, 192, 1, 1, 1, 28, relu6),
        conv("mnv2 project", 192, 32, 1, 1, 1, 28, None),
        conv("mnv2 expand", 96, 576, 1, 1, 1, 14, relu6),
        conv("mnv2 dw", 144, 144, 3, 1, 144, 56, relu6),
        conv("mnv2 dw", 192, 192, 3, 1, 192, 28, relu6),
        conv("mnv2 dw", 576, 576, 3, 1, 576, 14, relu6),
        conv("mnv2 dw", 960, 960, 3, 1, 960, 7, relu6),
        dw_project(32, 16, 1, 112, false),
        dw_project(32, 16, 1, 112, true),
        dw_project(96, 24, 2, 112, false),
        dw_project(96, 24, 2, 112, true),
        dw_project(144, 24, 1, 56, false),
        dw_project(144, 24, 1, 56, true),
        dw_project(192, 32, 1, 28, false),
        dw_project(192, 32, 1, 28, true),
        dw_project(576, 96, 1, 14, false),
        dw_project(576, 96, 1, 14, true),
        dw_project(960, 160, 1, 7, false),
        dw_project(960, 160, 1, 7, true),
        conv("resnet 3x3", 64, 64, 3, 1, 1, 56, Some(Activation::Relu)),
        conv("resnet 3x3", 512, 512, 3, 1, 1, 7, Some(Activation::Relu)),
        conv(
            "resnext grouped",
            128,
            128,
            3,
            1,
            32,
            56,
            Some(Activation::Relu),
        ),
        conv(
            "regnet grouped",
            64,
            64,
            3,
            2,
            4,
            112,
            Some(Activation::Relu),
        ),
        conv(
            "regnet grouped",
            144,
            144,
            3,
            1,
            9,
            28,
            Some(Activation::Relu),
        ),
        conv(
            "regnet grouped",
            320,
            320,
            3,
            1,
            20,
            14,
            Some(Activation::Relu),
        ),
        conv("densenet 3x3", 128, 32, 3, 1, 1, 14, None),
        conv("convnext dw", 96, 96, 7, 1, 96, 56, None),
        conv(
            "convnext expand",
            96,
            384,
            1,
            1,
            1,
            56,
            Some(Activation::Gelu),
        ),
        conv(
            "densenet 1x1",
            224,
            128,
            1,
            1,
            1,
            56,
            Some(Activation::Relu),
        ),
        dense_layer(14, 56, false),
        dense_layer(14, 56, true),
        dense_layer(30, 28, false),
        dense_layer(30, 28, true),
        dense_layer(62, 14, false),
        dense_layer(62, 14, true),
        dense_layer(62, 7, false),
        dense_layer(62, 7, true),
        layer_norm(96, 56),
        qconv("resnet stem", 3, 64, 7, 2, 224, false),
        qconv("mnv2 project", 32, 16, 1, 1, 112, false),
        qconv("mnv2 expand", 96, 576, 1, 1, 14, false),
        qconv("resnet50 expand", 64, 256, 1, 1, 56, true),
        qconv("resnet50 reduce", 256, 64, 1, 1, 56, false),
        qconv("resnet50 downsample", 64, 256, 1, 1, 56, false),
        qconv("resnet 3x3", 64, 64, 3, 1, 56, false),
        qconv("resnet50 expand", 256, 1024, 1, 1, 14, true),
        qconv("resnet50 expand", 512, 2048, 1, 1, 7, true),
        qconv("resnet50 reduce", 2048, 512, 1, 1, 7, false),
        qconv("resnet 3x3", 128, 128, 3, 1, 28, false),
        qconv("resnet 3x3", 256, 256, 3, 1, 14, false),
        qconv("resnet 3x3", 512, 512, 3, 1, 7, false),
        qconv("resnet 3x3 s2", 128, 128, 3, 2, 56, false),
        layer_norm(768, 7),
        max_pool(64, 112),
        quantize_nhwc(3, 224),
        gemv(1280, 1000),
        gemv(2048, 1000),
    ];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "ISA {:?}; median of runs; 1 thread and {threads} threads",
        isa::current()
    );
    for c in cases
        .iter()
        .filter(|c| filter.is_empty() || filter.iter().any(|f| c.name.contains(f.as_str())))
    {
        let mut row = format!("{:<44}", c.name);
        for t in [1, threads] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .expect("pool");
            let s = pool.install(|| time(|| (c.run)()));
            row += &format!(" | {:>8.1} us", s * 1e6);
            if c.flops > 0.0 {
                row += &format!(" {:>6.1} GFLOP/s", c.flops / s * 1e-9);
            }
        }
        println!("{row}");
    }
}
