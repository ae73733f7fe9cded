//! The int8 NHWC convolution (qvision-kernels' qnhwc::PreparedQConv) against a fake-quantized fp32
//! reference: same quantized inputs, weights and bias, fp32 conv, then output quantization.

use qvision_kernels::conv::Conv2dParams;
use qvision_kernels::qnhwc::{PreparedQConv, QConvOutput};
use qvision_kernels::reference;
use qvision_kernels::Activation;
use qvision_quant::quantize::{
    dequantize_u8, quantize_bias, quantize_u8, quantize_weights_per_channel,
};
use qvision_quant::{calculate_qparams, QDType, QScheme};

fn case(p: Conv2dParams, n: usize, h: usize, w: usize, relu: bool, seed: u64) {
    let x = reference::pseudo_random(n * p.in_channels * h * w, seed);
    let wt = reference::pseudo_random(p.weight_len(), seed ^ 1);
    let b = reference::pseudo_random(p.out_channels, seed ^ 2);
    let (xmin, xmax) = x
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, c), &v| (a.min(v), c.max(v)));
    let qx = calculate_qparams(xmin, xmax, QDType::QUInt8, QScheme::PerTensorAffine, false);
    let xq = quantize_u8(&x, qx);
    let (wq, sw) = quantize_weights_per_channel(&wt, p.out_channels).unwrap();
    let bq = quantize_bias(&b, qx.scale, &sw);
    // fake-quant reference in fp32
    let xd = dequantize_u8(&xq, qx);
    let per = p.weight_len() / p.out_channels;
    let wd: Vec<f32> = wq
        .iter()
        .enumerate()
        .map(|(i, &v)| v as f32 * sw[i / per])
        .collect();
    let bd: Vec<f32> = bq
        .iter()
        .zip(&sw)
        .map(|(&v, &s)| v as f32 * qx.scale * s)
        .collect();
    let (mut yf, oh, ow) = reference::conv2d(&p, &xd, n, h, w, &wd, Some(&bd)).unwrap();
    if relu {
        yf.iter_mut().for_each(|v| *v = v.max(0.0));
    }
    let (ymin, ymax) = yf
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, c), &v| (a.min(v), c.max(v)));
    let qy = calculate_qparams(ymin, ymax, QDType::QUInt8, QScheme::PerTensorAffine, false);
    let want = quantize_u8(&yf, qy);
    let out = QConvOutput {
        za: qx.zero_point as u8,
        multiplier: sw.iter().map(|s| qx.scale * s / qy.scale).collect(),
        zo: qy.zero_point as u8,
        out_scale: qy.scale,
        act: relu.then_some(Activation::Relu),
    };
    let conv = PreparedQConv::new(p, &wq, Some(&bq), out).unwrap();
    // the kernel is NHWC
    let nhwc = |x: &[u8], c: usize, hw: usize| {
        let mut y = x.to_vec();
        for b in 0..n {
            for ch in 0..c {
                for px in 0..hw {
                    y[(b * hw + px) * c + ch] = x[(b * c + ch) * hw + px];
                }
            }
        }
        y
    };
    let (got, goh, gow) = conv
        .run(&nhwc(&xq, p.in_channels, h * w), n, h, w, None)
        .unwrap();
    assert_eq!((goh, gow), (oh, ow));
    let want = nhwc(&want, p.out_channels, oh * ow);
    let off = got.iter().zip(&want).filter(|(a, b)| a != b).count();
    let worst = got
        .iter()
        .zip(&want)
        .map(|(&a, &b)| (a as i32 - b as i32).abs())
        .max()
        .unwrap();
    // exact integer accumulation vs f32 accumulation: at most one step apart, rarely
    assert!(worst <= 1, "{p:?}: worst difference {worst} steps");
    assert!(
        off * 50 <= got.len(),
        "{p:?}: {off} of {} outputs differ",
        got.len()
    );
}

#[test]
fn int8_conv_equals_fake_quant_reference() {
    let mk = |cin, cout, k, s, pad, g| Conv2dParams {
        in_channels: cin,
        out_channels: cout,
        kernel: [k, k],
        stride: [s, s],
        padding: [pad, pad],
        dilation: [1, 1],
        groups: g,
    };
    case(mk(3, 16, 3, 2, 1, 1), 1, 17, 15, true, 1); // stem
    case(mk(16, 32, 1, 1, 0, 1), 2, 9, 9, false, 2); // pointwise
    case(mk(32, 32, 3, 1, 1, 32), 1, 10, 12, true, 3); // depthwise
    case(mk(16, 24, 1, 2, 0, 1), 1, 12, 12, false, 4); // 1x1 stride 2 (EfficientNet's PyTorch failure)
    case(mk(32, 64, 3, 1, 1, 4), 1, 8, 8, true, 5); // grouped
}
