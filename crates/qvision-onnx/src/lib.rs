//! ONNX for qvision: export fp32 and int8 (QDQ) graphs, import fp32 and QDQ CNNs. The protobuf
//! codec is hand-written ([`proto`]); nothing outside Rust is needed at run time.

pub mod export;
pub mod import;
pub mod proto;

pub use export::{export, ExportOptions};
pub use import::{import, Imported};

/// Errors from ONNX export and import.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("ONNX: {0}")]
    Decode(String),
    #[error("ONNX export of node '{node}': {msg}")]
    Export { node: String, msg: String },
    #[error("ONNX import: node '{node}' ({op}, opset {opset}): {msg}")]
    Import {
        node: String,
        op: String,
        opset: i64,
        msg: String,
    },
}

/// Export to ONNX bytes.
pub fn to_bytes(g: &qvision_graph::Graph, opts: &ExportOptions) -> Result<Vec<u8>, OnnxError> {
    Ok(proto::encode(&export(g, opts)?))
}
