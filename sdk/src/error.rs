//! The SDK's one error type.

use std::path::PathBuf;

/// Everything that can go wrong loading or running a bundle.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {message}")]
    Json { path: String, message: String },
    #[error("config key `{key}`: expected {expected}, found {found}")]
    InvalidConfig {
        key: String,
        expected: String,
        found: String,
    },
    #[error("graph `{graph}` ({path}): {message}")]
    Graph {
        graph: String,
        path: PathBuf,
        message: String,
    },
    #[error("invalid option `{name}`: {message}")]
    InvalidOption { name: String, message: String },
    #[error("numerical failure in {what}: {message}")]
    Numerical { what: String, message: String },
    #[error("manifest {path}: {message}")]
    Manifest { path: PathBuf, message: String },
}

/// Result with the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
