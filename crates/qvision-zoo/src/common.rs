//! Pieces shared by several families (torchvision's `ops.misc` and `_utils`).

use qvision_graph::builder::Conv;
use qvision_graph::{Activation, GraphBuilder, ValueId};

/// torchvision's `_make_divisible`: round to a multiple of `divisor`, never more than 10% down.
pub fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let mut new_v = ((v + d / 2.0) as usize / divisor * divisor).max(divisor);
    if (new_v as f64) < 0.9 * v {
        new_v += divisor;
    }
    new_v
}

/// `Conv2dNormActivation`: conv (no bias) `{name}.0`, BatchNorm `{name}.1`, activation `{name}.2`.
#[allow(clippy::too_many_arguments)]
pub fn conv_bn_act(
    b: &mut GraphBuilder,
    name: &str,
    x: ValueId,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    groups: usize,
    eps: f32,
    act: Option<Activation>,
) -> ValueId {
    let c = Conv::new(cin, cout, k)
        .stride(stride)
        .pad((k - 1) / 2)
        .groups(groups)
        .bias(false);
    let y = b.conv2d(&format!("{name}.0"), x, c);
    let y = b.batch_norm_eps(&format!("{name}.1"), y, cout, eps);
    match act {
        Some(a) => b.act(&format!("{name}.2"), y, a),
        None => y,
    }
}

/// torchvision's `SqueezeExcitation`: avgpool, `fc1` (1x1 conv), act, `fc2`, scale act, multiply.
pub fn squeeze_excitation(
    b: &mut GraphBuilder,
    name: &str,
    x: ValueId,
    c: usize,
    squeeze: usize,
    act: Activation,
    scale_act: Activation,
) -> ValueId {
    let s = b.adaptive_avg_pool(&format!("{name}.avgpool"), x, 1, 1);
    let s = b.conv2d(&format!("{name}.fc1"), s, Conv::new(c, squeeze, 1));
    let s = b.act(&format!("{name}.activation"), s, act);
    let s = b.conv2d(&format!("{name}.fc2"), s, Conv::new(squeeze, c, 1));
    let s = b.act(&format!("{name}.scale_activation"), s, scale_act);
    b.mul(&format!("{name}.mul"), x, s)
}

/// Global average pool then flatten (`x.mean([2, 3])` / `avgpool` + `flatten`).
pub fn pool_flatten(b: &mut GraphBuilder, x: ValueId) -> ValueId {
    let x = b.adaptive_avg_pool("avgpool", x, 1, 1);
    b.flatten("flatten", x, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_divisible_matches_torchvision() {
        assert_eq!(make_divisible(32.0, 8), 32);
        assert_eq!(make_divisible(32.0 * 1.1, 8), 32);
        assert_eq!(make_divisible(32.0 * 1.4, 8), 48);
        assert_eq!(make_divisible(16.0 * 0.75, 8), 16);
        assert_eq!(make_divisible(3.0, 8), 8);
        assert_eq!(make_divisible(88.0, 8), 88);
    }
}
