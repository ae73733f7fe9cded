//! f32 matrix multiplication. The inner kernels come from rten-gemm (AVX-512, AVX2+FMA, NEON and a
//! generic fallback, chosen at run time); this module owns the weight prepacking and the calling
//! conventions the convolution and linear ops use.

use crate::{shape_err, KernelError};
use rten_gemm::{
    BiasVector, GemmExecutor, GemmInputA, GemmInputB, GemmUninitOptions, PackedAMatrix,
};
use rten_tensor::NdTensorView;
use std::mem::MaybeUninit;

thread_local! {
    // The executor is not `Sync`; each thread keeps one. All pick the same kernel for this CPU,
    // so a matrix packed on one thread is valid on every other.
    static EXEC: GemmExecutor<f32> = GemmExecutor::default();
}

fn with_executor<R>(f: impl FnOnce(&GemmExecutor<f32>) -> R) -> R {
    EXEC.with(f)
}

/// Name of the f32 GEMM kernel chosen for this CPU (for bench reports).
pub fn kernel_name() -> String {
    with_executor(|e| e.kernel_name().to_string())
}

/// A left-hand (weight) matrix packed once for repeated products.
pub struct PackedMatrix {
    packed: PackedAMatrix<f32>,
    rows: usize,
    cols: usize,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedMatrix({}x{})", self.rows, self.cols)
    }
}

impl PackedMatrix {
    /// Pack a row-major `rows x cols` matrix.
    pub fn pack(data: &[f32], rows: usize, cols: usize) -> Result<Self, KernelError> {
        if data.len() != rows * cols {
            return Err(shape_err(
                "gemm",
                format!("matrix of {} values is not {rows}x{cols}", data.len()),
            ));
        }
        let view = NdTensorView::from_data([rows, cols], data);
        Ok(PackedMatrix {
            packed: with_executor(|e| e.prepack_a(view)),
            rows,
            cols,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// Left-hand operand of [`matmul`].
pub enum Lhs<'a> {
    Packed(&'a PackedMatrix),
    /// Row-major `rows x cols`.
    Plain {
        data: &'a [f32],
        rows: usize,
        cols: usize,
    },
}

impl Lhs<'_> {
    fn dims(&self) -> (usize, usize) {
        match self {
            Lhs::Packed(p) => (p.rows, p.cols),
            Lhs::Plain { rows, cols, .. } => (*rows, *cols),
        }
    }
}

/// Optional bias added to each row (`Column`, one value per output row) or each column.
#[derive(Clone, Copy)]
pub enum Bias<'a> {
    PerRow(&'a [f32]),
    PerCol(&'a [f32]),
}

/// `out[m x n] = a[m x k] · b[k x n] (+ bias)`. `b` is row-major with row stride `ldb >= n`.
pub fn matmul(
    out: &mut [f32],
    a: Lhs<'_>,
    b: &[f32],
    n: usize,
    ldb: usize,
    bias: Option<Bias<'_>>,
) -> Result<(), KernelError> {
    let (m, k) = a.dims();
    if out.len() != m * n {
        return Err(shape_err(
            "gemm",
            format!("output holds {} values, want {m}x{n}", out.len()),
        ));
    }
    if ldb < n || (k > 0 && b.len() < (k - 1) * ldb + n) {
        return Err(shape_err(
            "gemm",
            format!("rhs of {} values is not {k}x{n} (stride {ldb})", b.len()),
        ));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        out.fill(0.0);
        add_bias(out, m, n, bias);
        return Ok(());
    }
    let bias_vec = match bias {
        Some(Bias::PerRow(v)) if v.len() == m => Some(BiasVector::Column(v)),
        Some(Bias::PerCol(v)) if v.len() == n => Some(BiasVector::Row(v)),
        Some(_) => return Err(shape_err("gemm", "bias length does not match the output")),
        None => None,
    };
    let b_view = NdTensorView::from_data_with_strides([k, n], b, [ldb, 1])
        .map_err(|e| shape_err("gemm", format!("rhs layout: {e:?}")))?;
    let a_in = match &a {
        Lhs::Packed(p) => GemmInputA::Packed(&p.packed),
        Lhs::Plain { data, rows, cols } => {
            if data.len() != rows * cols {
                return Err(shape_err("gemm", "lhs size does not match its shape"));
            }
            GemmInputA::Unpacked(NdTensorView::from_data([*rows, *cols], *data))
        }
    };
    // rten-gemm writes every output element (beta is implicitly zero).
    let out_uninit: &mut [MaybeUninit<f32>] = as_uninit(out);
    with_executor(|e| {
        e.gemm_uninit(
            out_uninit,
            a_in,
            GemmInputB::Unpacked(b_view),
            GemmUninitOptions {
                bias: bias_vec,
                ..Default::default()
            },
        )
        .map(|_| ())
    })
    .map_err(|e| shape_err("gemm", format!("{e:?}")))?;
    Ok(())
}

fn as_uninit(out: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: MaybeUninit<f32> is layout-compatible with f32, and every f32 is a valid
    // MaybeUninit<f32>; the slice keeps its length and lifetime.
    unsafe {
        std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<MaybeUninit<f32>>(), out.len())
    }
}

fn add_bias(out: &mut [f32], m: usize, n: usize, bias: Option<Bias<'_>>) {
    match bias {
        Some(Bias::PerRow(v)) => {
            for (r, row) in out.chunks_mut(n).enumerate().take(m) {
                row.iter_mut().for_each(|x| *x += v[r]);
            }
        }
        Some(Bias::PerCol(v)) => {
            for row in out.chunks_mut(n) {
                row.iter_mut().zip(v).for_each(|(x, b)| *x += b);
            }
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn matmul_matches_reference(m in 1usize..40, k in 1usize..70, n in 1usize..50, pad in 0usize..5,
                                     packed in any::<bool>(), seed in any::<u64>()) {
            let a = reference::pseudo_random(m * k, seed);
            let ldb = n + pad;
            let b = reference::pseudo_random(k * ldb, seed ^ 1);
            let bias = reference::pseudo_random(m, seed ^ 2);
            let mut out = vec![0.0; m * n];
            let pm;
            let lhs = if packed {
                pm = PackedMatrix::pack(&a, m, k).unwrap();
                Lhs::Packed(&pm)
            } else {
                Lhs::Plain { data: &a, rows: m, cols: k }
            };
            matmul(&mut out, lhs, &b, n, ldb, Some(Bias::PerRow(&bias))).unwrap();
            let want = reference::matmul(&a, &b, m, k, n, ldb, Some(&bias));
            for (x, y) in out.iter().zip(&want) {
                prop_assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let mut out = vec![0.0; 4];
        let a = [1.0; 4];
        let r = matmul(
            &mut out,
            Lhs::Plain {
                data: &a,
                rows: 2,
                cols: 2,
            },
            &[1.0; 3],
            2,
            2,
            None,
        );
        assert!(r.is_err());
    }
}

/// A read-only matrix view: element `(r, c)` is `data[r * row_stride + c * col_stride]`, so a
/// transposed view is the same data with the strides swapped.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `rows x cols` matrix.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose, without copying.
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    fn view(&self) -> Result<NdTensorView<'a, f32, 2>, KernelError> {
        NdTensorView::from_data_with_strides(
            [self.rows, self.cols],
            self.data,
            [self.row_stride, self.col_stride],
        )
        .map_err(|e| shape_err("gemm", format!("matrix layout: {e:?}")))
    }
}

/// `out[m x n] = a · b + beta · out` for strided operands (the training backward passes use the
/// transposed views: `dW = dY · Xᵀ`, `dX = Wᵀ · dY`).
pub fn gemm_strided(
    out: &mut [f32],
    a: MatRef<'_>,
    b: MatRef<'_>,
    beta: f32,
) -> Result<(), KernelError> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k || out.len() != m * n {
        return Err(shape_err(
            "gemm",
            format!(
                "{}x{} by {}x{} into {} values",
                a.rows,
                a.cols,
                b.rows,
                b.cols,
                out.len()
            ),
        ));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        out.iter_mut().for_each(|v| *v *= beta);
        return Ok(());
    }
    let (av, bv) = (a.view()?, b.view()?);
    with_executor(|e| {
        e.gemm(
            out,
            GemmInputA::Unpacked(av),
            GemmInputB::Unpacked(bv),
            rten_gemm::GemmOptions {
                beta,
                ..Default::default()
            },
        )
    })
    .map_err(|e| shape_err("gemm", format!("{e:?}")))
}

#[cfg(test)]
mod strided_tests {
    use super::*;

    #[test]
    fn transposed_operands_match_the_naive_product() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut out = vec![1.0; m * n];
        let av = MatRef::new(&a, m, k);
        let bv = MatRef::new(&bt, n, k).t();
        gemm_strided(&mut out, av, bv, 0.5).unwrap();
        for i in 0..m {
            for j in 0..n {
                let want: f32 = 0.5 + (0..k).map(|p| a[i * k + p] * bt[j * k + p]).sum::<f32>();
                assert!((out[i * n + j] - want).abs() < 1e-5);
            }
        }
    }
}
