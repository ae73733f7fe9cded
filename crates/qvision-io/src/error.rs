use std::path::{Path, PathBuf};
use thiserror::Error;

/// Errors from reading or writing files. Each names the file, and where it helps the tensor.
#[derive(Debug, Error)]
pub enum IoError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// A format error not yet tied to a file (the loader adds the path).
    #[error("{0}")]
    Bad(String),
}

impl IoError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        IoError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn format(path: &Path, msg: impl Into<String>) -> Self {
        IoError::Format {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }

    pub(crate) fn bad(msg: impl Into<String>) -> Self {
        IoError::Bad(msg.into())
    }

    /// Attach a file name to a path-less error.
    pub fn in_file(self, path: &Path) -> Self {
        match self {
            IoError::Bad(msg) => IoError::format(path, msg),
            e => e,
        }
    }
}
