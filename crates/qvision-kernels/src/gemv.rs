//! Vector-matrix product for one row: a linear layer at batch 1 (a classifier head:
//! 1280x1000 in MobileNetV2, 2048x1000 in ResNet-50). It is bound by reading the weights
//! (5-8 MB, not in cache between runs), so the weight rows are split into contiguous bands,
//! one per task, each streamed once into a partial sum of the outputs; the partial sums are
//! added in band order at the end. The bands depend on the sizes only, so the result does not
//! depend on the thread count or the ISA.

use crate::isa::{self, Isa};
use crate::{shape_err, KernelError};
use rayon::prelude::*;

/// Weight rows per band, at least: a band's partial sum (`n` values) must be worth its add.
const MIN_ROWS: usize = 64;
/// Bands, at most: enough to share out over a few threads.
const MAX_BANDS: usize = 8;

/// `y = x W (+ bias)` with `x` of `k` values and `w` `k x n`, row-major.
pub fn gemv(x: &[f32], w: &[f32], n: usize, bias: Option<&[f32]>) -> Result<Vec<f32>, KernelError> {
    gemv_isa(isa::current(), x, w, n, bias)
}

/// [`gemv`] on a given ISA (tests).
pub fn gemv_isa(
    isa: Isa,
    x: &[f32],
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
) -> Result<Vec<f32>, KernelError> {
    let k = x.len();
    if w.len() != k * n {
        return Err(shape_err(
            "gemv",
            format!("weight holds {} values, want {k}x{n}", w.len()),
        ));
    }
    if bias.is_some_and(|b| b.len() != n) {
        return Err(shape_err("gemv", "bias length does not match the output"));
    }
    let mut y = qvision_tensor::pool::take(n);
    match bias {
        Some(b) => y.copy_from_slice(b),
        None => y.fill(0.0),
    }
    if k == 0 || n == 0 {
        return Ok(y);
    }
    let rows = k.div_ceil(k.div_ceil(MIN_ROWS).clamp(1, MAX_BANDS));
    // one partial sum per band of `rows` weight rows (the last band may be shorter)
    let mut partial = qvision_tensor::pool::take(k.div_ceil(rows) * n);
    partial
        .par_chunks_mut(n)
        .zip(w.par_chunks(rows * n))
        .zip(x.par_chunks(rows))
        .for_each(|((acc, wb), xb)| {
            acc.fill(0.0);
            accumulate(isa, xb, wb, acc);
        });
    for acc in partial.chunks(n) {
        add_into(isa, &mut y, acc);
    }
    qvision_tensor::pool::recycle(partial);
    Ok(y)
}

/// `acc += x W` for the rows of one band, eight rows per pass over `acc`.
#[inline(always)]
fn accumulate_body(x: &[f32], w: &[f32], acc: &mut [f32]) {
    let n = acc.len();
    let mut groups = x.chunks_exact(8);
    let mut rows = w.chunks_exact(8 * n);
    for (xg, wg) in (&mut groups).zip(&mut rows) {
        let r: [&[f32]; 8] = std::array::from_fn(|i| &wg[i * n..(i + 1) * n]);
        for j in 0..n {
            acc[j] += ((xg[0] * r[0][j] + xg[1] * r[1][j]) + (xg[2] * r[2][j] + xg[3] * r[3][j]))
                + ((xg[4] * r[4][j] + xg[5] * r[5][j]) + (xg[6] * r[6][j] + xg[7] * r[7][j]));
        }
    }
    for (&xi, wi) in groups
        .remainder()
        .iter()
        .zip(rows.remainder().chunks_exact(n))
    {
        for (a, &wv) in acc.iter_mut().zip(wi) {
            *a += xi * wv;
        }
    }
}
crate::isa::multiversion!(fn accumulate(x: &[f32], w: &[f32], acc: &mut [f32]) => accumulate_body);

#[inline(always)]
fn add_into_body(y: &mut [f32], acc: &[f32]) {
    for (a, b) in y.iter_mut().zip(acc) {
        *a += b;
    }
}
crate::isa::multiversion!(fn add_into(y: &mut [f32], acc: &[f32]) => add_into_body);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn gemv_matches_naive(k in 0usize..700, n in 0usize..90, bias in any::<bool>(), threads in 1usize..4,
                              seed in any::<u64>()) {
            let x = reference::pseudo_random(k, seed);
            let w = reference::pseudo_random(k * n, seed ^ 1);
            let b = reference::pseudo_random(n, seed ^ 2);
            let mut want: Vec<f64> = if bias { b.iter().map(|&v| v as f64).collect() } else { vec![0.0; n] };
            for i in 0..k {
                for j in 0..n {
                    want[j] += x[i] as f64 * w[i * n + j] as f64;
                }
            }
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut first: Option<Vec<f32>> = None;
            for isa in isa::available() {
                let y = pool.install(|| gemv_isa(isa, &x, &w, n, bias.then_some(b.as_slice()))).unwrap();
                prop_assert_eq!(y.len(), n);
                for (a, e) in y.iter().zip(&want) {
                    prop_assert!((*a as f64 - e).abs() <= 1e-5 * (1.0 + k as f64), "{:?}: {} vs {}", isa, a, e);
                }
                // every ISA sums in the same order: the same bits
                match &first {
                    None => first = Some(y),
                    Some(f) => prop_assert_eq!(f, &y, "{:?} differs from the first ISA", isa),
                }
            }
        }
    }

    #[test]
    fn mismatched_sizes_are_errors() {
        assert!(gemv(&[1.0; 4], &[1.0; 11], 3, None).is_err());
        assert!(gemv(&[1.0; 4], &[1.0; 12], 3, Some(&[0.0; 2])).is_err());
        assert_eq!(
            gemv(&[1.0; 4], &[1.0; 12], 3, Some(&[0.5; 3])).unwrap(),
            vec![4.5; 3]
        );
    }
}
