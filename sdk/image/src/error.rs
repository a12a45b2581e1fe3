//! The image crate's one error type.

use std::path::PathBuf;

/// What can go wrong building, converting, reading or writing an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened, read or written; `path` is the file the caller named.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An image could not be built, decoded or encoded. `path` names the file, or the origin
    /// the caller gave (an upload name, `RgbImage::from_chw`, ...) for in-memory images.
    #[error("image {path}: {message}")]
    Image { path: String, message: String },
    /// A float tensor to convert holds NaN or infinity; `what` names it (`image`, `preview`).
    #[error("numerical failure in {what}: {message}")]
    NotFinite { what: String, message: String },
}

/// Result with the image crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
