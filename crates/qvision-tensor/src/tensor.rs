use crate::{DType, QParams};
use thiserror::Error;

/// Errors from building or viewing tensors.
#[derive(Debug, Error, PartialEq)]
pub enum TensorError {
    #[error("shape {shape:?} holds {expected} elements but {got} were given")]
    ShapeMismatch {
        shape: Vec<usize>,
        expected: usize,
        got: usize,
    },
    #[error("expected a {expected} tensor, found {got}")]
    DType { expected: DType, got: DType },
}

/// Number of elements of a shape.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Owned element storage.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    U8(Vec<u8>),
    I8(Vec<i8>),
    Bool(Vec<bool>),
}

impl Data {
    pub fn dtype(&self) -> DType {
        match self {
            Data::F32(_) => DType::F32,
            Data::I64(_) => DType::I64,
            Data::I32(_) => DType::I32,
            Data::U8(_) => DType::U8,
            Data::I8(_) => DType::I8,
            Data::Bool(_) => DType::Bool,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::I32(v) => v.len(),
            Data::U8(v) => v.len(),
            Data::I8(v) => v.len(),
            Data::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A dense, contiguous, row-major tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Data,
    qparams: Option<QParams>,
}

impl Tensor {
    /// Build a tensor, checking that the data fills the shape.
    pub fn new(shape: Vec<usize>, data: Data) -> Result<Self, TensorError> {
        let expected = numel(&shape);
        if expected != data.len() {
            return Err(TensorError::ShapeMismatch {
                shape,
                expected,
                got: data.len(),
            });
        }
        Ok(Tensor {
            shape,
            data,
            qparams: None,
        })
    }

    pub fn from_f32(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, TensorError> {
        Self::new(shape, Data::F32(data))
    }

    pub fn from_i64(shape: Vec<usize>, data: Vec<i64>) -> Result<Self, TensorError> {
        Self::new(shape, Data::I64(data))
    }

    /// A zero-filled f32 tensor.
    pub fn zeros(shape: &[usize]) -> Self {
        Tensor {
            shape: shape.to_vec(),
            data: Data::F32(vec![0.0; numel(shape)]),
            qparams: None,
        }
    }

    /// A 0-d f32 tensor.
    pub fn scalar(v: f32) -> Self {
        Tensor {
            shape: vec![],
            data: Data::F32(vec![v]),
            qparams: None,
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    pub fn data(&self) -> &Data {
        &self.data
    }

    pub fn into_data(self) -> Data {
        self.data
    }

    pub fn qparams(&self) -> Option<&QParams> {
        self.qparams.as_ref()
    }

    pub fn with_qparams(mut self, q: QParams) -> Self {
        self.qparams = Some(q);
        self
    }

    /// Same data under a new shape with the same element count.
    pub fn reshape(mut self, shape: Vec<usize>) -> Result<Self, TensorError> {
        let expected = numel(&shape);
        if expected != self.data.len() {
            return Err(TensorError::ShapeMismatch {
                shape,
                expected,
                got: self.data.len(),
            });
        }
        self.shape = shape;
        Ok(self)
    }

    pub fn as_f32(&self) -> Result<&[f32], TensorError> {
        match &self.data {
            Data::F32(v) => Ok(v),
            d => Err(TensorError::DType {
                expected: DType::F32,
                got: d.dtype(),
            }),
        }
    }

    pub fn as_f32_mut(&mut self) -> Result<&mut [f32], TensorError> {
        match &mut self.data {
            Data::F32(v) => Ok(v),
            d => Err(TensorError::DType {
                expected: DType::F32,
                got: d.dtype(),
            }),
        }
    }

    pub fn into_f32(self) -> Result<Vec<f32>, TensorError> {
        match self.data {
            Data::F32(v) => Ok(v),
            d => Err(TensorError::DType {
                expected: DType::F32,
                got: d.dtype(),
            }),
        }
    }

    pub fn from_u8(shape: Vec<usize>, data: Vec<u8>) -> Result<Self, TensorError> {
        Self::new(shape, Data::U8(data))
    }

    pub fn as_u8(&self) -> Result<&[u8], TensorError> {
        match &self.data {
            Data::U8(v) => Ok(v),
            d => Err(TensorError::DType {
                expected: DType::U8,
                got: d.dtype(),
            }),
        }
    }

    pub fn as_i8(&self) -> Result<&[i8], TensorError> {
        match &self.data {
            Data::I8(v) => Ok(v),
            d => Err(TensorError::DType {
                expected: DType::I8,
                got: d.dtype(),
            }),
        }
    }

    pub fn as_i32(&self) -> Result<&[i32], TensorError> {
        match &self.data {
            Data::I32(v) => Ok(v),
            d => Err(TensorError::DType {
                expected: DType::I32,
                got: d.dtype(),
            }),
        }
    }

    pub fn as_i64(&self) -> Result<&[i64], TensorError> {
        match &self.data {
            Data::I64(v) => Ok(v),
            d => Err(TensorError::DType {
                expected: DType::I64,
                got: d.dtype(),
            }),
        }
    }

    pub fn as_i64_mut(&mut self) -> Result<&mut [i64], TensorError> {
        match &mut self.data {
            Data::I64(v) => Ok(v),
            d => Err(TensorError::DType {
                expected: DType::I64,
                got: d.dtype(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_must_match_data() {
        assert!(Tensor::from_f32(vec![2, 3], vec![0.0; 6]).is_ok());
        let err = Tensor::from_f32(vec![2, 3], vec![0.0; 5]).unwrap_err();
        assert!(err.to_string().contains("6 elements"));
    }

    #[test]
    fn reshape_keeps_data() {
        let t = Tensor::from_f32(vec![2, 3], (0..6).map(|v| v as f32).collect()).unwrap();
        let r = t.reshape(vec![3, 2]).unwrap();
        assert_eq!(r.shape(), &[3, 2]);
        assert_eq!(r.as_f32().unwrap()[5], 5.0);
        assert!(r.reshape(vec![4]).is_err());
    }

    #[test]
    fn dtype_checks() {
        let t = Tensor::from_i64(vec![1], vec![3]).unwrap();
        assert!(t.as_f32().is_err());
        assert_eq!(t.as_i64().unwrap(), &[3]);
        assert_eq!(t.dtype().to_string(), "i64");
    }
}
