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
    #[error("context full: {message}")]
    Context { message: String },
    #[error("manifest {path}: {message}")]
    Manifest { path: PathBuf, message: String },
    /// A `tokenizer.json` that can't be read, disagrees with the config's special tokens, or
    /// fails to encode/decode; `path` is the tokenizer file.
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    /// Prompt words outside the model's vocabulary, with
    /// [`UnknownWords::Error`](crate::options::UnknownWords::Error).
    #[error("the prompt has words the model does not know: {}", words.join(", "))]
    UnknownWords { words: Vec<String> },
    /// An image could not be built, decoded or encoded. `path` names the file, or the origin the
    /// caller gave (an upload name, `RgbImage::from_chw`, ...) for in-memory images.
    #[error("image {path}: {message}")]
    Image { path: String, message: String },
}

impl From<transfusion_image::Error> for Error {
    fn from(e: transfusion_image::Error) -> Self {
        match e {
            transfusion_image::Error::Io { path, source } => Error::Io { path, source },
            transfusion_image::Error::Image { path, message } => Error::Image { path, message },
            transfusion_image::Error::NotFinite { what, message } => {
                Error::Numerical { what, message }
            }
        }
    }
}

/// Result with the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs `f`, turning a panic inside it into `Err` with the panic's message.
///
/// For dependencies that panic on some malformed files instead of failing (tract's ONNX import,
/// tokenizers' JSON reader: both found by fuzzing, docs/bad-inputs.md): a bundle file must give
/// an error, not abort the app.
pub(crate) fn catch_panic<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string())
    })
}
