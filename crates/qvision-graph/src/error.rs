use qvision_kernels::KernelError;
use qvision_tensor::TensorError;
use thiserror::Error;

/// Errors from building, checking, loading or running a graph. Each names the node, value or
/// parameter at fault.
#[derive(Debug, Error)]
pub enum GraphError {
    #[error("node '{node}' ({op}): {msg}")]
    Node {
        node: String,
        op: String,
        msg: String,
    },
    #[error("parameter '{name}' has no value: load weights first (or use formula/random weights)")]
    MissingParam { name: String },
    #[error("input '{name}': {msg}")]
    Input { name: String, msg: String },
    #[error("weights do not match the model:\n{0}")]
    StateDict(String),
    #[error("graph: {0}")]
    Invalid(String),
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

impl GraphError {
    pub(crate) fn node(node: &str, op: &str, msg: impl std::fmt::Display) -> Self {
        GraphError::Node {
            node: node.to_string(),
            op: op.to_string(),
            msg: msg.to_string(),
        }
    }

    pub(crate) fn from_kernel(node: &str, op: &str, e: KernelError) -> Self {
        Self::node(node, op, e)
    }
}
