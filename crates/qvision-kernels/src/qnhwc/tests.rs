use super::*;
use crate::conv::Conv2dParams;
use crate::isa;
use proptest::prelude::*;

fn bytes(len: usize, seed: u64) -> Vec<u8> {
    crate::reference::pseudo_random(len, seed)
        .iter()
        .map(|v| ((v + 1.0) * 127.9) as u8)
        .collect()
}

/// A square conv's params: `k x k` kernel, stride `s`, padding `pad`, dilation `d`.
fn square(
    cin: usize,
    cout: usize,
    k: usize,
    (s, pad, d): (usize, usize, usize),
    groups: usize,
) -> Conv2dParams {
    Conv2dParams {
        in_channels: cin,
        out_channels: cout,
        kernel: [k, k],
        stride: [s, s],
        padding: [pad, pad],
        dilation: [d, d],
        groups,
    }
}

/// Output quantization with per-channel multipliers `m0 * (1 + i / ramp)` over `cout`
/// channels, output scale 0.05 unless given.
fn qout(
    za: u8,
    cout: usize,
    (m0, ramp): (f32, f32),
    zo: u8,
    act: Option<crate::Activation>,
) -> QConvOutput {
    QConvOutput {
        za,
        multiplier: (0..cout).map(|i| m0 * (1.0 + i as f32 / ramp)).collect(),
        zo,
        out_scale: 0.05,
        act,
    }
}

/// Plain NHWC quantized convolution: exact i32 sums of `(x - za) * w`, then the epilogue
/// written out once more, element by element.
#[allow(clippy::too_many_arguments)]
fn reference(
    p: &Conv2dParams,
    x: &[u8],
    n: usize,
    h: usize,
    w: usize,
    wt: &[i8],
    bias: &[i32],
    o: &QConvOutput,
    residual: Option<(&[u8], i32, f32)>,
) -> Vec<u8> {
    let (oh, ow) = p.output_size(h, w).unwrap();
    let (cin_g, cout_g) = (p.in_channels / p.groups, p.out_channels / p.groups);
    let mut y = vec![0u8; n * oh * ow * p.out_channels];
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                for co in 0..p.out_channels {
                    let g = co / cout_g;
                    let mut acc = 0i32;
                    for ci in 0..cin_g {
                        for ky in 0..p.kernel[0] {
                            for kx in 0..p.kernel[1] {
                                let iy = (oy * p.stride[0] + ky * p.dilation[0]) as isize
                                    - p.padding[0] as isize;
                                let ix = (ox * p.stride[1] + kx * p.dilation[1]) as isize
                                    - p.padding[1] as isize;
                                if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= w {
                                    continue;
                                }
                                let xv = x[((b * h + iy as usize) * w + ix as usize)
                                    * p.in_channels
                                    + g * cin_g
                                    + ci] as i32;
                                let wv = wt
                                    [((co * cin_g + ci) * p.kernel[0] + ky) * p.kernel[1] + kx]
                                    as i32;
                                acc += (xv - o.za as i32) * wv;
                            }
                        }
                    }
                    let at = ((b * oh + oy) * ow + ox) * p.out_channels + co;
                    let mut t = (acc + bias[co]) as f32 * o.multiplier[co];
                    if let Some((r, zr, mr)) = residual {
                        t += (r[at] as i32 - zr) as f32 * mr;
                    }
                    let (mut lo, mut hi) = (-(o.zo as f32), 255.0 - o.zo as f32);
                    match o.act {
                        Some(crate::Activation::Relu) => lo = lo.max(0.0),
                        Some(crate::Activation::Relu6) => {
                            lo = lo.max(0.0);
                            hi = hi.min(6.0 / o.out_scale);
                        }
                        Some(a) => t = a.apply_scalar(t * o.out_scale) * (1.0 / o.out_scale),
                        None => {}
                    }
                    y[at] = (t.max(lo).min(hi).round_ties_even() as i32 + o.zo as i32) as u8;
                }
            }
        }
    }
    y
}

#[derive(Debug, Clone)]
struct Case {
    p: Conv2dParams,
    n: usize,
    h: usize,
    w: usize,
}

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..4,
        prop_oneof![Just(1usize), Just(2), Just(3), Just(4), Just(8)],
        1usize..24,
        1usize..40,
        prop_oneof![Just(1usize), Just(3), Just(5)],
        1usize..3,
        0usize..3,
        1usize..3,
        (1usize..3, 3usize..10, 3usize..10),
        any::<bool>(),
    )
        .prop_map(
            |(mode, groups, cin_g, cout_g, k, s, pad, d, (n, h, w), asym)| {
                // mode 1: dense, 2: grouped, 3: depthwise
                let (groups, cin_g, cout_g) = match mode {
                    1 => (1, cin_g, cout_g),
                    2 => (groups, cin_g, cout_g.min(20)),
                    _ => (groups * 5, 1, 1),
                };
                let kw = if asym { 1 } else { k };
                Case {
                    p: Conv2dParams {
                        in_channels: groups * cin_g,
                        out_channels: groups * cout_g,
                        kernel: [k, kw],
                        stride: [s, s],
                        padding: [pad.min(k - 1), pad.min(kw - 1)],
                        dilation: [d, d],
                        groups,
                    },
                    n,
                    h: h + d * k,
                    w: w + d * kw,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    #[test]
    fn every_isa_matches_the_reference(c in prop_oneof![case(), wide_case()], za in 0u8..=255, zo in 0u8..=255, act in 0usize..3,
                                       res in any::<bool>(), scale in 1e-4f32..2e-2, seed in any::<u64>()) {
        let p = c.p;
        let x = bytes(c.n * c.h * c.w * p.in_channels, seed);
        let wt: Vec<i8> = bytes(p.weight_len(), seed ^ 5).iter().map(|&v| v as i8).collect();
        let bias: Vec<i32> = (0..p.out_channels as i32).map(|i| (i * 977 - 5000) * (seed as i32 % 7)).collect();
        let out = QConvOutput {
            za,
            multiplier: (0..p.out_channels).map(|i| scale * (1.0 + i as f32 / 7.0)).collect(),
            zo,
            out_scale: 0.05,
            act: [None, Some(crate::Activation::Relu), Some(crate::Activation::Relu6)][act],
        };
        let (oh, ow) = p.output_size(c.h, c.w).unwrap();
        let r = bytes(c.n * oh * ow * p.out_channels, seed ^ 9);
        let residual = res.then_some((r.as_slice(), 77, 0.37));
        let want = reference(&p, &x, c.n, c.h, c.w, &wt, &bias, &out, residual);
        let conv = PreparedQConv::new(p, &wt, Some(&bias), out).unwrap();
        for isa in isa::available_int8() {
            let (got, gh, gw) = conv.run_isa(isa, &x, c.n, c.h, c.w, residual).unwrap();
            prop_assert_eq!((gh, gw), (oh, ow));
            prop_assert!(got == want, "{:?} {:?}", isa, p);
        }
    }

    #[test]
    fn groups_of_4_and_8_match_the_reference(cg in prop_oneof![Just(4usize), Just(8)], vecs in 1usize..5,
                                             k in (1usize..4, 1usize..4), s in 1usize..3, pad in 0usize..3,
                                             d in 1usize..3, hw in (1usize..6, 1usize..9), n in 1usize..3,
                                             za in 0u8..=255, zo in 0u8..=255, act in 0usize..4,
                                             res in any::<bool>(), seed in any::<u64>()) {
        // ResNeXt's first stages: the direct grouped kernel on AVX-512 VNNI (whole vectors of
        // 16 channels, 4 or 2 groups each), the super-group GEMM elsewhere; runs of four
        // pixels with short last runs, padding taps, residual and activations
        let c = 16 * vecs;
        let p = Conv2dParams { in_channels: c, out_channels: c, kernel: [k.0, k.1], stride: [s, s],
                               padding: [pad.min(k.0 - 1), pad.min(k.1 - 1)], dilation: [d, d], groups: c / cg };
        let (h, w) = (hw.0 + d * k.0, hw.1 + d * k.1);
        let x = bytes(n * h * w * c, seed);
        let wt: Vec<i8> = bytes(p.weight_len(), seed ^ 5).iter().map(|&v| v as i8).collect();
        let bias: Vec<i32> = (0..c as i32).map(|i| i * 577 - 9000).collect();
        let act = [None, Some(crate::Activation::Relu), Some(crate::Activation::Relu6), Some(crate::Activation::Hardswish)][act];
        let out = qout(za, c, (0.004, 9.0), zo, act);
        let (oh, ow) = p.output_size(h, w).unwrap();
        let r = bytes(n * oh * ow * c, seed ^ 9);
        let residual = res.then_some((r.as_slice(), 77, 0.37));
        let want = reference(&p, &x, n, h, w, &wt, &bias, &out, residual);
        let conv = PreparedQConv::new(p, &wt, Some(&bias), out).unwrap();
        for isa in isa::available_int8() {
            let (got, _, _) = conv.run_isa(isa, &x, n, h, w, residual).unwrap();
            if act == Some(crate::Activation::Hardswish) {
                // a smooth activation: within one step of the reference (as for every kernel)
                for (a, b) in got.iter().zip(&want) {
                    prop_assert!((*a as i32 - *b as i32).abs() <= 1, "{:?}: {} vs {}", isa, a, b);
                }
            } else {
                prop_assert!(got == want, "{:?} {:?}", isa, p);
            }
        }
    }

    #[test]
    fn large_kernels_match_the_reference(k in prop_oneof![Just(7usize), Just(9), Just(11)], cin in 4usize..13,
                                         cout in 1usize..70, s in 1usize..3, pad in 0usize..11, hw in (1usize..6, 1usize..6),
                                         za in 0u8..=255, seed in any::<u64>()) {
        // 49 taps (skip masks), 81 and 121 (past the 64-tap mask: nothing skipped), strips and
        // merged kernel rows where cin is whole quads
        let p = square(cin, cout, k, (s, pad.min(k - 1), 1), 1);
        let (h, w) = (hw.0 + k, hw.1 + k);
        let x = bytes(h * w * cin, seed);
        let wt: Vec<i8> = bytes(p.weight_len(), seed ^ 5).iter().map(|&v| v as i8).collect();
        let bias: Vec<i32> = (0..cout as i32).map(|i| i * 311 - 900).collect();
        let out = qout(za, cout, (2e-4, 9.0), 7, None);
        let want = reference(&p, &x, 1, h, w, &wt, &bias, &out, None);
        let conv = PreparedQConv::new(p, &wt, Some(&bias), out).unwrap();
        for isa in isa::available_int8() {
            let (got, _, _) = conv.run_isa(isa, &x, 1, h, w, None).unwrap();
            prop_assert!(got == want, "{:?} {:?}", isa, p);
        }
    }

    #[test]
    fn wide_depthwise_matches_the_reference(c in 16usize..200, k in prop_oneof![Just(3usize), Just(5), Just(7)], s in 1usize..3,
                                            pad in 0usize..3, d in 1usize..3, hw in (1usize..8, 1usize..12),
                                            za in 0u8..=255, zo in 0u8..=255, act in 0usize..3, res in any::<bool>(), seed in any::<u64>()) {
        // 3x3 / 5x5 / 7x7 interior runs: 64+ channels take the tap-paired AVX-512 kernel,
        // fewer the 16-lane one (a 7x7's weights spill)
        let p = square(c, c, k, (s, pad.min(k - 1), d), c);
        let (h, w) = (hw.0 + d * k, hw.1 + d * k);
        let x = bytes(h * w * c, seed);
        let wt: Vec<i8> = bytes(p.weight_len(), seed ^ 5).iter().map(|&v| v as i8).collect();
        let bias: Vec<i32> = (0..c as i32).map(|i| (i * 977 - 5000) * (seed as i32 % 7)).collect();
        let out = qout(za, c, (0.003, 50.0), zo, [None, Some(crate::Activation::Relu), Some(crate::Activation::Relu6)][act]);
        let (oh, ow) = p.output_size(h, w).unwrap();
        let r = bytes(oh * ow * c, seed ^ 9);
        let residual = res.then_some((r.as_slice(), 77, 0.37));
        let want = reference(&p, &x, 1, h, w, &wt, &bias, &out, residual);
        let conv = PreparedQConv::new(p, &wt, Some(&bias), out).unwrap();
        for isa in isa::available_int8() {
            let (got, _, _) = conv.run_isa(isa, &x, 1, h, w, residual).unwrap();
            prop_assert!(got == want, "{:?} {:?}", isa, p);
        }
    }

    #[test]
    fn smooth_activations_agree_within_one_step(c in case(), za in 0u8..=255, zo in 0u8..=255, act in 0usize..4, seed in any::<u64>()) {
        let p = c.p;
        let x = bytes(c.n * c.h * c.w * p.in_channels, seed);
        let wt: Vec<i8> = bytes(p.weight_len(), seed ^ 5).iter().map(|&v| v as i8).collect();
        let out = QConvOutput {
            za,
            multiplier: vec![0.002; p.out_channels],
            zo,
            out_scale: 0.03,
            act: Some([crate::Activation::Hardswish, crate::Activation::Silu,
                       crate::Activation::Sigmoid, crate::Activation::Gelu][act]),
        };
        let want = reference(&p, &x, c.n, c.h, c.w, &wt, &vec![0; p.out_channels], &out, None);
        let conv = PreparedQConv::new(p, &wt, None, out).unwrap();
        for isa in isa::available_int8() {
            let (got, _, _) = conv.run_isa(isa, &x, c.n, c.h, c.w, None).unwrap();
            for (a, b) in got.iter().zip(&want) {
                prop_assert!((*a as i32 - *b as i32).abs() <= 1, "{:?}: {} vs {}", isa, a, b);
            }
        }
    }
}

/// Dense and grouped convs with channel counts that give several 64-byte K chunks (whole and
/// partial), odd numbers of 16-column vectors and several 64-column blocks: the AMX tiles'
/// shapes, and the whole 64-column output blocks that [`case`] (at most 40 output channels per
/// group) never reaches.
fn wide_case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![Just(1usize), Just(1), Just(2), Just(4)],
        1usize..200,
        1usize..150,
        prop_oneof![Just(1usize), Just(3)],
        1usize..3,
        0usize..2,
        (1usize..3, 1usize..9, 1usize..9),
    )
        .prop_map(|(groups, cin, cout, k, s, pad, (n, h, w))| Case {
            p: Conv2dParams {
                in_channels: groups * cin.div_ceil(groups),
                out_channels: groups * cout.div_ceil(groups),
                kernel: [k, k],
                stride: [s, s],
                padding: [pad.min(k - 1); 2],
                dilation: [1, 1],
                groups,
            },
            n,
            h: h + k,
            w: w + k,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// The AMX driver's whole instruction stream, run on the tile emulator, equals the scalar
    /// reference bit for bit.
    #[test]
    fn amx_tiles_match_the_reference(c in prop_oneof![case(), wide_case()], za in 0u8..=255, zo in 0u8..=255,
                                     act in 0usize..3, res in any::<bool>(), seed in any::<u64>()) {
        let p = c.p;
        let x = bytes(c.n * c.h * c.w * p.in_channels, seed);
        let wt: Vec<i8> = bytes(p.weight_len(), seed ^ 5).iter().map(|&v| v as i8).collect();
        let bias: Vec<i32> = (0..p.out_channels as i32).map(|i| (i * 977 - 5000) * (seed as i32 % 7)).collect();
        let out = QConvOutput {
            za,
            multiplier: (0..p.out_channels).map(|i| 2e-4 * (1.0 + i as f32 / 7.0)).collect(),
            zo,
            out_scale: 0.05,
            act: [None, Some(crate::Activation::Relu), Some(crate::Activation::Relu6)][act],
        };
        let (oh, ow) = p.output_size(c.h, c.w).unwrap();
        let r = bytes(c.n * oh * ow * p.out_channels, seed ^ 9);
        let residual = res.then_some((r.as_slice(), 77, 0.37));
        let want = reference(&p, &x, c.n, c.h, c.w, &wt, &bias, &out, residual);
        let conv = PreparedQConv::new(p, &wt, Some(&bias), out).unwrap();
        let (got, gh, gw) = conv.run_amx_with(amx::Emulator::new, &x, c.n, c.h, c.w, residual).unwrap();
        prop_assert_eq!((gh, gw), (oh, ow));
        prop_assert!(got == want, "{:?}", p);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// A linear layer with f32 output (a classifier head) on every ISA: rows of any count
    /// (partial tiles), output blocks split over the threads, exactly
    /// `(sum (x - za) * w + bias) * s_in * s_w`, then the activation.
    #[test]
    fn linear_f32_matches_the_reference(rows in 1usize..14, cin in 1usize..300, cout in 1usize..200,
                                        za in 0u8..=255, relu in any::<bool>(), seed in any::<u64>()) {
        let p = square(cin, cout, 1, (1, 0, 1), 1);
        let x = bytes(rows * cin, seed);
        let wt: Vec<i8> = bytes(cin * cout, seed ^ 5).iter().map(|&v| v as i8).collect();
        let bias: Vec<i32> = (0..cout as i32).map(|i| i * 97 - 3000).collect();
        let out = QConvOutput { out_scale: 0.25, ..qout(za, cout, (1e-3, 7.0), 0, relu.then_some(crate::Activation::Relu)) };
        let mut want = vec![0f32; rows * cout];
        for r in 0..rows {
            for co in 0..cout {
                let acc: i32 = (0..cin)
                    .map(|ci| (x[r * cin + ci] as i32 - za as i32) * wt[co * cin + ci] as i32)
                    .sum();
                let v = (acc + bias[co]) as f32 * (out.multiplier[co] * out.out_scale);
                want[r * cout + co] = if relu { v.max(0.0) } else { v };
            }
        }
        let conv = PreparedQConv::new(p, &wt, Some(&bias), out).unwrap();
        for isa in isa::available_int8() {
            let got = conv.run_rows_f32_isa(isa, &x, rows).unwrap();
            prop_assert!(got == want, "{:?} rows {} {:?}", isa, rows, p);
        }
    }
}

/// A conv keeps the plans of recent runs (work items, strips): runs over changing input sizes
/// and thread counts, more of them than it keeps, each match the reference.
#[test]
fn cached_plans_follow_the_input() {
    for (k, pad, cin) in [(3, 1, 8), (7, 3, 3), (1, 0, 24)] {
        let p = square(cin, 20, k, (1, pad, 1), 1);
        let wt: Vec<i8> = bytes(p.weight_len(), 3).iter().map(|&v| v as i8).collect();
        let bias: Vec<i32> = (0..20).map(|i| i * 57 - 500).collect();
        let out = qout(77, 20, (2e-3, f32::INFINITY), 5, None);
        let conv = PreparedQConv::new(p, &wt, Some(&bias), out.clone()).unwrap();
        for (threads, n, h, w) in [
            (1, 1, 9, 7),
            (3, 2, 5, 5),
            (3, 1, 9, 7),
            (1, 1, 12, 3),
            (3, 1, 4, 4),
            (1, 1, 5, 6),
            (3, 2, 5, 5),
            (1, 1, 9, 7),
            (2, 1, 9, 7),
        ] {
            let x = bytes(n * h * w * cin, (n * h * w) as u64);
            let want = reference(&p, &x, n, h, w, &wt, &bias, &out, None);
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let got = pool.install(|| conv.run(&x, n, h, w, None).unwrap().0);
            assert!(got == want, "k{k} {threads} threads {n}x{h}x{w}");
        }
    }
}

/// Stems (3 input channels: ResNet's 7x7/2, MobileNet's 3x3/2, a dilated one) take the im2col
/// path on every ISA and on the AMX emulator.
#[test]
fn stems_match_the_reference() {
    for (k, s, pad, d, cout, h, w) in [
        (7, 2, 3, 1, 64, 29, 23),
        (3, 2, 1, 1, 32, 17, 20),
        (3, 1, 2, 2, 20, 9, 11),
    ] {
        let p = square(3, cout, k, (s, pad, d), 1);
        let x = bytes(2 * h * w * 3, k as u64);
        let wt: Vec<i8> = bytes(p.weight_len(), 7).iter().map(|&v| v as i8).collect();
        let bias: Vec<i32> = (0..cout as i32).map(|i| i * 311 - 4000).collect();
        let out = qout(113, cout, (1e-3, 13.0), 9, Some(crate::Activation::Relu));
        let want = reference(&p, &x, 2, h, w, &wt, &bias, &out, None);
        let conv = PreparedQConv::new(p, &wt, Some(&bias), out).unwrap();
        for isa in isa::available_int8() {
            assert!(
                conv.run_isa(isa, &x, 2, h, w, None).unwrap().0 == want,
                "{isa:?} {p:?}"
            );
        }
        let emulated = conv
            .run_amx_with(amx::Emulator::new, &x, 2, h, w, None)
            .unwrap();
        assert!(emulated.0 == want, "AMX emulator {p:?}");
    }
}

/// The emulator's `tdpbusd` is a u8 x s8 matrix product over K = 64, accumulated.
#[test]
fn emulated_tdpbusd_is_a_matrix_product() {
    use amx::TileUnit;
    let a: Vec<u8> = (0..16 * 64).map(|i| (i * 37 % 256) as u8).collect();
    let b: Vec<u8> = (0..16 * 64).map(|i| (i * 91 % 256) as u8).collect();
    let mut c = vec![0i32; 16 * 16];
    c.iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v = i as i32 - 100);
    let mut want = c.clone();
    for m in 0..16 {
        for n in 0..16 {
            for k in 0..64 {
                want[m * 16 + n] +=
                    a[m * 64 + k] as i32 * b[(k / 4) * 64 + n * 4 + k % 4] as i8 as i32;
            }
        }
    }
    let mut u = amx::Emulator::new();
    // SAFETY: configured first; every load/store covers 16 rows of 64 bytes of these buffers.
    unsafe {
        u.configure();
        u.load::<0>(c.as_ptr().cast(), 64);
        u.load::<4>(a.as_ptr(), 64);
        u.load::<6>(b.as_ptr(), 64);
        u.dpbusd::<0, 4, 6>();
        u.store::<0>(c.as_mut_ptr().cast(), 64);
        u.release();
    }
    assert_eq!(c, want);
}

/// Every tile instruction the kernel issues, on a CPU with AMX: the hardware and the emulator
/// leave the same bytes behind (loads and stores at strides other than 64, the 2x2 grid of
/// `tdpbusd` the kernel runs, `tilezero`). Runs where the tiles are usable (the CPU has them
/// and Linux granted them); `QVISION_REQUIRE_AMX=1` makes a CPU without them a failure.
#[cfg(target_arch = "x86_64")]
#[test]
fn hardware_tiles_match_the_emulator() {
    use amx::TileUnit;
    if !isa::amx_permitted() {
        assert!(
            std::env::var_os("QVISION_REQUIRE_AMX").is_none(),
            "QVISION_REQUIRE_AMX is set but this CPU/OS offers no AMX tiles"
        );
        return;
    }
    let bytes = |n: usize, seed: usize| -> Vec<u8> {
        (0..n)
            .map(|i| ((i * 2654435761 + seed * 40503) >> 7) as u8)
            .collect()
    };
    // Inputs 16 rows apart by their stride: C (i32 accumulators) at 64, A at 96, B at 128.
    let (c, a0, a1, b0, b1) = (
        bytes(16 * 64, 1),
        bytes(16 * 96, 2),
        bytes(16 * 96, 3),
        bytes(16 * 128, 4),
        bytes(16 * 128, 5),
    );
    fn run<U: TileUnit>(u: &mut U, ins: [&[u8]; 5]) -> Vec<u8> {
        let [c, a0, a1, b0, b1] = ins;
        let mut out = vec![0xAAu8; 7 * 16 * 80];
        let at = |i: usize| i * 16 * 80;
        // SAFETY: configured first; every load reads 16 rows of 64 bytes within its input at
        // its stride, every store writes 16 rows of 64 bytes inside `out` (stride 80).
        unsafe {
            u.configure();
            u.load::<0>(c.as_ptr(), 64);
            u.load::<1>(c.as_ptr(), 64);
            u.zero::<2>();
            u.load::<3>(c.as_ptr(), 64);
            u.load::<4>(a0.as_ptr(), 96);
            u.load::<5>(a1.as_ptr(), 96);
            u.load::<6>(b0.as_ptr(), 128);
            u.load::<7>(b1.as_ptr(), 128);
            u.store::<4>(out.as_mut_ptr().add(at(0)), 80);
            u.store::<7>(out.as_mut_ptr().add(at(1)), 80);
            u.dpbusd::<0, 4, 6>();
            u.dpbusd::<1, 5, 6>();
            u.dpbusd::<2, 4, 7>();
            u.dpbusd::<3, 5, 7>();
            u.dpbusd::<0, 5, 7>();
            u.store::<0>(out.as_mut_ptr().add(at(2)), 80);
            u.store::<1>(out.as_mut_ptr().add(at(3)), 80);
            u.store::<2>(out.as_mut_ptr().add(at(4)), 80);
            u.store::<3>(out.as_mut_ptr().add(at(5)), 80);
            u.zero::<1>();
            u.store::<1>(out.as_mut_ptr().add(at(6)), 80);
            u.release();
        }
        out
    }
    let ins = [&c[..], &a0, &a1, &b0, &b1];
    let want = run(&mut amx::Emulator::new(), ins);
    let got = run(&mut amx::Hardware, ins);
    if let Some(i) = (0..want.len()).find(|&i| want[i] != got[i]) {
        let (block, row, col) = (i / (16 * 80), i % (16 * 80) / 80, i % 80);
        panic!(
            "tile bytes differ first in store {block}, row {row}, byte {col}: hardware {} vs emulator {}",
            got[i], want[i]
        );
    }
}

#[test]
fn bad_operands_are_errors() {
    let p = Conv2dParams {
        in_channels: 4,
        out_channels: 2,
        kernel: [1, 1],
        stride: [1, 1],
        padding: [0, 0],
        dilation: [1, 1],
        groups: 1,
    };
    let out = QConvOutput {
        za: 0,
        multiplier: vec![1.0; 2],
        zo: 0,
        out_scale: 1.0,
        act: None,
    };
    assert!(PreparedQConv::new(p, &[1; 7], None, out.clone()).is_err());
    assert!(PreparedQConv::new(
        p,
        &[1; 8],
        None,
        QConvOutput {
            multiplier: vec![1.0],
            ..out.clone()
        }
    )
    .is_err());
    let c = PreparedQConv::new(p, &[1; 8], None, out).unwrap();
    assert!(c.run(&[0; 7], 1, 1, 2, None).is_err());
    assert!(c.run(&[0; 8], 1, 1, 2, Some((&[0; 3], 0, 1.0))).is_err());
}
