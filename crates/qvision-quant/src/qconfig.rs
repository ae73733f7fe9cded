//! Quantized dtypes, schemes, and the per-backend defaults (PyTorch's `get_default_qconfig`).

/// A quantized integer type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QDType {
    /// `torch.quint8`.
    QUInt8,
    /// `torch.qint8`.
    QInt8,
}

impl QDType {
    /// `(quant_min, quant_max)`, halved when `reduce_range` (one bit less, as fbgemm needs
    /// where `vpmaddubsw` could saturate).
    pub fn range(self, reduce_range: bool) -> (i32, i32) {
        match (self, reduce_range) {
            (QDType::QUInt8, false) => (0, 255),
            (QDType::QUInt8, true) => (0, 127),
            (QDType::QInt8, false) => (-128, 127),
            (QDType::QInt8, true) => (-64, 63),
        }
    }
}

/// How values map to integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QScheme {
    PerTensorAffine,
    PerTensorSymmetric,
    /// One scale per output channel (axis 0), zero point 0.
    PerChannelSymmetric,
    PerChannelAffine,
}

impl QScheme {
    pub fn is_symmetric(self) -> bool {
        matches!(
            self,
            QScheme::PerTensorSymmetric | QScheme::PerChannelSymmetric
        )
    }

    pub fn is_per_channel(self) -> bool {
        matches!(
            self,
            QScheme::PerChannelSymmetric | QScheme::PerChannelAffine
        )
    }
}

/// Target kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// u8 affine activations, s8 symmetric per-channel weights (fbgemm/onednn style). qvision's
    /// VNNI and exact-AVX2 kernels accumulate without saturation, so `reduce_range` is off.
    X86,
    /// Per-tensor weights, like qnnpack.
    Arm,
}

/// Activation and weight quantization settings (PyTorch's `QConfig`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QConfig {
    pub activation_dtype: QDType,
    pub activation_scheme: QScheme,
    pub weight_dtype: QDType,
    pub weight_scheme: QScheme,
    pub reduce_range: bool,
}

impl QConfig {
    /// The defaults for a backend.
    pub fn default_for(backend: Backend) -> Self {
        match backend {
            Backend::X86 => QConfig {
                activation_dtype: QDType::QUInt8,
                activation_scheme: QScheme::PerTensorAffine,
                weight_dtype: QDType::QInt8,
                weight_scheme: QScheme::PerChannelSymmetric,
                reduce_range: false,
            },
            Backend::Arm => QConfig {
                activation_dtype: QDType::QUInt8,
                activation_scheme: QScheme::PerTensorAffine,
                weight_dtype: QDType::QInt8,
                weight_scheme: QScheme::PerTensorSymmetric,
                reduce_range: false,
            },
        }
    }
}
