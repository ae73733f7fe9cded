//! Loading state dicts by name, and deterministic "formula" weights.
//!
//! The formula weights are what the parity fixtures use: `scripts/make_fixtures.py` computes the
//! same values in NumPy from each state-dict key and shape, so tests need no weight files.

use crate::ir::{Graph, ValueKind};
use crate::GraphError;
use qvision_tensor::{DType, Data, Tensor};
use std::collections::HashMap;

/// What a non-strict load skipped.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LoadReport {
    pub loaded: usize,
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
}

impl LoadReport {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty()
    }
}

/// Load `state_dict` into the graph's parameters by key.
///
/// Shape and dtype mismatches are always errors. With `strict`, missing (non-optional) and
/// unexpected keys are errors too; otherwise they are returned in the report.
pub fn load_state_dict(
    g: &mut Graph,
    state_dict: Vec<(String, Tensor)>,
    strict: bool,
) -> Result<LoadReport, GraphError> {
    let mut by_name: HashMap<String, Tensor> = state_dict.into_iter().collect();
    let mut report = LoadReport::default();
    let mut problems = Vec::new();
    let params: Vec<_> = g.params().map(|(id, v)| (id, v.clone())).collect();
    for (id, v) in params {
        let optional = matches!(v.kind, ValueKind::Param { optional: true });
        match by_name.remove(&v.name) {
            None if optional => {}
            None => report.missing.push(v.name.clone()),
            Some(t) => {
                let want = v.shape.clone().unwrap_or_default();
                if t.shape() != want.as_slice()
                    && !(t.numel() == 1 && want.iter().product::<usize>() == 1)
                {
                    problems.push(format!(
                        "  '{}': file has shape {:?}, model expects {:?}",
                        v.name,
                        t.shape(),
                        want
                    ));
                    continue;
                }
                if t.dtype() != v.dtype {
                    problems.push(format!(
                        "  '{}': file has dtype {}, model expects {}",
                        v.name,
                        t.dtype(),
                        v.dtype
                    ));
                    continue;
                }
                g.tensors.insert(id, t.reshape(want)?);
                report.loaded += 1;
            }
        }
    }
    report.unexpected = by_name.into_keys().collect();
    report.unexpected.sort();
    if strict {
        problems.extend(
            report
                .missing
                .iter()
                .map(|k| format!("  missing key '{k}'")),
        );
        problems.extend(
            report
                .unexpected
                .iter()
                .map(|k| format!("  unexpected key '{k}'")),
        );
    }
    if !problems.is_empty() {
        return Err(GraphError::StateDict(problems.join("\n")));
    }
    Ok(report)
}

/// FNV-1a, 64-bit.
pub fn fnv1a64(s: &str) -> u64 {
    fnv1a64_bytes(s.as_bytes())
}

/// FNV-1a, 64-bit, over bytes.
pub fn fnv1a64_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Uniform values in [-0.5, 0.5) with 24-bit resolution: splitmix64 of `seed + (i+1)*golden`.
pub fn formula_uniform(seed: u64, len: usize) -> Vec<f32> {
    const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len as u64)
        .map(|i| {
            let mut z = seed.wrapping_add((i + 1).wrapping_mul(GOLDEN));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / 16_777_216.0 - 0.5
        })
        .collect()
}

/// He gain: conv/linear weights uniform with variance `2 / fan_in`.
pub const HE_GAIN: f64 = 24.0;

/// The deterministic value of one state-dict entry (see `scripts/make_fixtures.py`). Conv and
/// linear weights are uniform with variance `gain / 12 / fan_in`.
pub fn formula_tensor(name: &str, shape: &[usize], gain: f64) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let (offset, scale): (f32, f32) = if name.ends_with("running_var") {
        (1.0, 0.4)
    } else if name.ends_with("running_mean") {
        (0.0, 0.2)
    } else if name.ends_with("layer_scale") {
        (0.5, 0.2)
    } else if shape.len() >= 2 {
        let fan_in: usize = shape[1..].iter().product();
        (0.0, (gain / fan_in.max(1) as f64).sqrt() as f32)
    } else if name.ends_with("weight") {
        (1.0, 0.2)
    } else {
        (0.0, 0.2)
    };
    formula_uniform(fnv1a64(name), n)
        .into_iter()
        .map(|u| u * scale + offset)
        .collect()
}

/// Fill every parameter with its formula value at He gain (`num_batches_tracked` with 0).
pub fn init_formula(g: &mut Graph) {
    init_formula_with_gain(g, HE_GAIN)
}

/// [`init_formula`] with another weight gain.
pub fn init_formula_with_gain(g: &mut Graph, gain: f64) {
    let params: Vec<_> = g.params().map(|(id, v)| (id, v.clone())).collect();
    for (id, v) in params {
        let shape = v.shape.clone().unwrap_or_default();
        let t = match v.dtype {
            DType::I64 => Tensor::new(shape.clone(), Data::I64(vec![0; shape.iter().product()])),
            _ => Tensor::from_f32(shape.clone(), formula_tensor(&v.name, &shape, gain)),
        };
        if let Ok(t) = t {
            g.tensors.insert(id, t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::Conv;
    use crate::GraphBuilder;

    fn tiny() -> Graph {
        let mut b = GraphBuilder::new("t");
        let x = b.input("input", &[1, 2, 4, 4]);
        let x = b.conv2d("conv", x, Conv::new(2, 3, 3).pad(1).bias(false));
        let x = b.batch_norm("bn", x, 3);
        b.finish(&[x])
    }

    #[test]
    fn formula_is_stable() {
        // Pinned values, shared with scripts/make_fixtures.py.
        // Pinned against an independent Python computation of the same formula.
        assert_eq!(fnv1a64("conv1.weight"), 0x69a2_9a2c_ee47_d254);
        let u = formula_uniform(fnv1a64("conv1.weight"), 3);
        assert_eq!(u, vec![0.045_074_94, 0.245_161_71, -0.477_078_32]);
        let v = formula_tensor("bn.running_var", &[4], HE_GAIN);
        assert!(v.iter().all(|v| *v >= 0.8 && *v < 1.2));
    }

    #[test]
    fn strict_load_names_every_problem() {
        let mut g = tiny();
        let sd = vec![
            ("conv.weight".to_string(), Tensor::zeros(&[3, 2, 3, 3])),
            ("bn.weight".to_string(), Tensor::zeros(&[4])),
            ("extra".to_string(), Tensor::zeros(&[1])),
        ];
        let err = load_state_dict(&mut g, sd, true).unwrap_err().to_string();
        assert!(
            err.contains("'bn.weight': file has shape [4], model expects [3]"),
            "{err}"
        );
        assert!(err.contains("missing key 'bn.running_var'"), "{err}");
        assert!(err.contains("unexpected key 'extra'"), "{err}");
        assert!(
            !err.contains("num_batches_tracked"),
            "optional keys may be absent: {err}"
        );
    }

    #[test]
    fn non_strict_load_reports() {
        let mut g = tiny();
        let sd = vec![
            ("conv.weight".to_string(), Tensor::zeros(&[3, 2, 3, 3])),
            ("extra".to_string(), Tensor::zeros(&[1])),
        ];
        let r = load_state_dict(&mut g, sd, false).unwrap();
        assert_eq!(r.loaded, 1);
        assert_eq!(r.unexpected, vec!["extra".to_string()]);
        assert_eq!(r.missing.len(), 4);
    }
}
