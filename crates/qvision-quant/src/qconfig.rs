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

/// Per-node qconfig choices (PyTorch's `QConfigMapping`): a global qconfig, then overrides by
/// op type (`set_object_type`) and by node name (`set_module_name`, `*` wildcards allowed). An
/// override of `None` keeps the node in fp32. Later rules win; names win over op types.
#[derive(Clone, Debug, PartialEq)]
pub struct QConfigMapping {
    pub global: QConfig,
    pub object_types: Vec<(String, Option<QConfig>)>,
    pub module_names: Vec<(String, Option<QConfig>)>,
}

impl QConfigMapping {
    pub fn new(global: QConfig) -> Self {
        QConfigMapping {
            global,
            object_types: vec![],
            module_names: vec![],
        }
    }

    /// Override every node of an op type (`Conv2d`, `Linear`, `Add`, `Hardswish`, ...).
    pub fn set_object_type(mut self, kind: &str, q: Option<QConfig>) -> Self {
        self.object_types.push((kind.to_string(), q));
        self
    }

    /// Override nodes whose name matches `pattern` (`*` matches any run of characters).
    pub fn set_module_name(mut self, pattern: &str, q: Option<QConfig>) -> Self {
        self.module_names.push((pattern.to_string(), q));
        self
    }

    /// The qconfig for a node, or `None` to keep it in fp32.
    pub fn qconfig_for(&self, name: &str, kind: &str) -> Option<QConfig> {
        if let Some((_, q)) = self.module_names.iter().rev().find(|(p, _)| glob(p, name)) {
            return *q;
        }
        if let Some((_, q)) = self.object_types.iter().rev().find(|(k, _)| k == kind) {
            return *q;
        }
        Some(self.global)
    }
}

impl From<QConfig> for QConfigMapping {
    fn from(q: QConfig) -> Self {
        QConfigMapping::new(q)
    }
}

/// `*`-wildcard match of a whole name.
pub fn glob(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod mapping_tests {
    use super::*;

    #[test]
    fn names_win_over_types_and_later_rules_win() {
        let x86 = QConfig::default_for(Backend::X86);
        let arm = QConfig::default_for(Backend::Arm);
        let m = QConfigMapping::new(x86)
            .set_object_type("Linear", None)
            .set_module_name("features.*.conv", Some(arm))
            .set_module_name("features.1*", None);
        assert_eq!(m.qconfig_for("classifier.1", "Linear"), None);
        assert_eq!(m.qconfig_for("features.3.conv", "Conv2d"), Some(arm));
        assert_eq!(m.qconfig_for("features.12.conv", "Conv2d"), None);
        assert_eq!(m.qconfig_for("features.3.other", "Conv2d"), Some(x86));
        assert!(glob("*", "anything") && glob("a*b*c", "aXbYc") && !glob("a*b", "ab.c"));
    }
}
