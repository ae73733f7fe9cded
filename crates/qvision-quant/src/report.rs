//! Per-layer error of a converted graph (`qvision quantize --report`): every value the int8
//! graph holds in u8 is read back and compared with the same value of the fp32 graph, on the
//! same inputs, as a signal-to-quantization-noise ratio.

use crate::convert::ConvertReport;
use crate::QuantError;
use qvision_graph::{Graph, Session, SessionOptions};
use qvision_tensor::Tensor;
use std::collections::HashMap;

/// The error of one int8 layer's output.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerError {
    pub node: String,
    pub kind: String,
    /// Output SQNR in dB over all inputs (infinite where exact).
    pub sqnr_db: f64,
}

/// Run `fp32` (the prepared graph that was calibrated) and `int8` (its conversion) on `inputs`
/// and measure every int8 node's output. Rows follow the int8 graph's node order.
pub fn layer_sqnr(
    fp32: &Graph,
    int8: &Graph,
    report: &ConvertReport,
    inputs: &[Tensor],
    threads: Option<usize>,
) -> Result<Vec<LayerError>, QuantError> {
    let opts = SessionOptions {
        threads,
        blocked: Some(false),
        ..Default::default()
    };
    let err = |e: qvision_graph::GraphError| QuantError::Shape(e.to_string());
    let fs = Session::new(fp32, opts.clone()).map_err(err)?;
    let qs = Session::new(int8, opts).map_err(err)?;
    let by_u8: HashMap<&str, usize> = report
        .values
        .iter()
        .enumerate()
        .map(|(i, v)| (v.u8_name.as_str(), i))
        .collect();
    let wanted: HashMap<&str, usize> = report
        .values
        .iter()
        .enumerate()
        .map(|(i, v)| (v.name.as_str(), i))
        .collect();
    // (signal, noise) per quantized value
    let mut acc = vec![(0.0f64, 0.0f64); report.values.len()];
    for x in inputs {
        let mut reference: HashMap<usize, Vec<f32>> = HashMap::new();
        fs.run_observed(vec![x.clone()], &mut |node, outs| {
            for (v, t) in node.outputs.iter().zip(outs) {
                if let (Some(&i), Ok(d)) =
                    (wanted.get(fs.graph().values[v.0].name.as_str()), t.as_f32())
                {
                    reference.insert(i, d.to_vec());
                }
            }
        })
        .map_err(err)?;
        let mut got: HashMap<usize, Vec<f32>> = HashMap::new();
        qs.run_observed(vec![x.clone()], &mut |node, outs| {
            for (v, t) in node.outputs.iter().zip(outs) {
                let Some(&i) = by_u8.get(qs.graph().values[v.0].name.as_str()) else {
                    continue;
                };
                let (Ok(q), qv) = (t.as_u8(), &report.values[i]) else {
                    continue;
                };
                let deq = |b: u8| (b as i32 - qv.zero_point) as f32 * qv.scale;
                let s = t.shape();
                let vals = if qv.nhwc && s.len() == 4 {
                    let (n, hw, c) = (s[0], s[1] * s[2], s[3]);
                    let mut y = vec![0.0; q.len()];
                    for b in 0..n {
                        for p in 0..hw {
                            for ch in 0..c {
                                y[(b * c + ch) * hw + p] = deq(q[(b * hw + p) * c + ch]);
                            }
                        }
                    }
                    y
                } else {
                    q.iter().map(|&b| deq(b)).collect()
                };
                got.insert(i, vals);
            }
        })
        .map_err(err)?;
        for (i, r) in reference {
            if let Some(g) = got.get(&i).filter(|g| g.len() == r.len()) {
                for (a, b) in r.iter().zip(g) {
                    acc[i].0 += (*a as f64) * (*a as f64);
                    acc[i].1 += ((a - b) as f64).powi(2);
                }
            }
        }
    }
    let kinds: HashMap<&str, &str> = report
        .int8
        .iter()
        .map(|(n, k)| (n.as_str(), k.as_str()))
        .collect();
    Ok(report
        .values
        .iter()
        .zip(acc)
        .map(|(v, (s, n))| LayerError {
            node: v.node.clone(),
            kind: kinds.get(v.node.as_str()).unwrap_or(&"").to_string(),
            sqnr_db: if n == 0.0 {
                f64::INFINITY
            } else {
                10.0 * (s / n).log10()
            },
        })
        .collect())
}
