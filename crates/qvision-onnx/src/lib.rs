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

/// Export to ONNX bytes (models whose weights fit protobuf's 2 GB limit).
pub fn to_bytes(g: &qvision_graph::Graph, opts: &ExportOptions) -> Result<Vec<u8>, OnnxError> {
    let m = export(g, opts)?;
    if initializer_bytes(&m) > EXTERNAL_ABOVE {
        return Err(OnnxError::Export {
            node: g.name.clone(),
            msg: "the weights exceed protobuf's 2 GB: write a file with external data (to_files)"
                .into(),
        });
    }
    Ok(proto::encode(&m))
}

/// Weights above this many bytes go to an external data file (protobuf stops at 2 GB).
const EXTERNAL_ABOVE: usize = 1 << 30;

fn initializer_bytes(m: &proto::Model) -> usize {
    m.graph.initializers.iter().map(|t| t.raw.len()).sum()
}

/// Export to `path`; a model over 1 GB of weights keeps them in `<file name>.data` beside it,
/// as ONNX's external data. Returns the files written. Writes are atomic.
pub fn to_files(
    g: &qvision_graph::Graph,
    opts: &ExportOptions,
    path: &std::path::Path,
) -> Result<Vec<std::path::PathBuf>, OnnxError> {
    let io = |e: qvision_io::IoError| OnnxError::Decode(format!("{}: {e}", path.display()));
    let mut m = export(g, opts)?;
    let mut files = vec![path.to_path_buf()];
    if initializer_bytes(&m) > EXTERNAL_ABOVE {
        let name = format!(
            "{}.data",
            path.file_name()
                .map_or("model.onnx".into(), |n| n.to_string_lossy())
        );
        let data_path = path.with_file_name(&name);
        let mut data = Vec::with_capacity(initializer_bytes(&m));
        for t in &mut m.graph.initializers {
            if t.raw.len() >= 1024 {
                while data.len() % 64 != 0 {
                    data.push(0);
                }
                let off = data.len() as u64;
                data.extend_from_slice(&t.raw);
                t.external = Some((name.clone(), off, t.raw.len() as u64));
                t.raw = vec![];
            }
        }
        qvision_io::atomic::write(&data_path, &data).map_err(io)?;
        files.push(data_path);
    }
    qvision_io::atomic::write(path, &proto::encode(&m)).map_err(io)?;
    Ok(files)
}
