//! Helpers of the crate's tests: a graph run with no pass at all (the reference every rewrite
//! is checked against) and an element-wise comparison with a relative tolerance.

use crate::{Graph, Session, SessionOptions};
use qvision_tensor::Tensor;

/// `g` on `x` exactly as built: no pass, one thread.
pub(crate) fn run_unoptimized(g: &Graph, x: &Tensor) -> Vec<Tensor> {
    let plain = SessionOptions {
        optimize: false,
        threads: Some(1),
        ..Default::default()
    };
    Session::new(g, plain)
        .unwrap()
        .run(vec![x.clone()])
        .unwrap()
}

/// Every value of `got` within `tol * (1 + |want|)` of `want`, output by output, shapes equal.
pub(crate) fn assert_close(got: &[Tensor], want: &[Tensor], tol: f32) {
    assert_eq!(got.len(), want.len(), "outputs");
    for (a, b) in got.iter().zip(want) {
        assert_eq!(a.shape(), b.shape());
        for (p, q) in a.as_f32().unwrap().iter().zip(b.as_f32().unwrap()) {
            assert!((p - q).abs() <= tol * (1.0 + q.abs()), "{p} vs {q}");
        }
    }
}
