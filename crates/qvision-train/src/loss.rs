//! Losses.

use crate::ops::Buf;

/// Mean cross-entropy of `logits` (`[N, C]`) against class indices, with optional label
/// smoothing (PyTorch's `CrossEntropyLoss(label_smoothing=...)`). Returns the loss, the gradient
/// of the logits, and how many rows were predicted correctly (argmax).
pub fn cross_entropy(logits: &Buf, labels: &[usize], smoothing: f32) -> (f32, Vec<f32>, usize) {
    let c = *logits.shape.last().unwrap_or(&1);
    let n = labels.len().max(1);
    let mut grad = vec![0.0f32; logits.len()];
    let mut loss = 0.0f64;
    let mut correct = 0;
    for (i, (row, g)) in logits.data.chunks(c).zip(grad.chunks_mut(c)).enumerate() {
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let sum: f64 = row.iter().map(|&v| ((v - m) as f64).exp()).sum();
        let lse = m as f64 + sum.ln();
        let y = labels[i].min(c - 1);
        correct += (argmax(row) == y) as usize;
        let mean_logit: f64 = row.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
        loss += (1.0 - smoothing as f64) * (lse - row[y] as f64)
            + smoothing as f64 * (lse - mean_logit);
        for j in 0..c {
            let p = ((row[j] as f64) - lse).exp() as f32;
            let target = (1.0 - smoothing) * ((j == y) as u8 as f32) + smoothing / c as f32;
            g[j] = (p - target) / n as f32;
        }
    }
    ((loss / n as f64) as f32, grad, correct)
}

/// Index of the largest logit in each row.
pub fn argmax_rows(logits: &Buf) -> Vec<usize> {
    let c = *logits.shape.last().unwrap_or(&1);
    logits.data.chunks(c).map(argmax).collect()
}

/// Index of the first largest value.
fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (j, &v)| {
            if v > bv {
                (j, v)
            } else {
                (bi, bv)
            }
        })
        .0
}
