//! The tools' one error type. Every variant names the file, tensor or key involved and says
//! what was expected and what was found, so a failing command tells the user what to fix.

use std::path::PathBuf;

/// An image error (PNG file, size, non-finite pixels) is reported as the SDK reports it.
impl From<transfusion_image::Error> for Error {
    fn from(e: transfusion_image::Error) -> Self {
        Error::Sdk(e.into())
    }
}

/// Any failure of a `transfusion` tools command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file or directory failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An error of the SDK that already names its origin (e.g. invalid JSON in a named file).
    #[error(transparent)]
    Sdk(#[from] transfusion_sdk::Error),
    /// `config.json` was read but is not a valid configuration (the SDK error names the key).
    #[error("{path}: {source}")]
    Config {
        path: PathBuf,
        #[source]
        source: transfusion_sdk::Error,
    },
    /// `model.safetensors` could not be parsed or written.
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    /// A tensor the configuration requires is absent.
    #[error("{path}: missing tensor `{name}` (required by the configuration)")]
    MissingTensor { path: PathBuf, name: String },
    /// Several tensors the configuration requires are absent (all named).
    #[error(
        "{path}: missing tensors {} (required by the configuration, format_version {format_version}; \
         docs/checkpoint.md lists each format's tensors)",
        names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
    )]
    MissingTensors {
        path: PathBuf,
        names: Vec<String>,
        format_version: u32,
    },
    /// A tensor the configuration does not define is present.
    #[error("{path}: unexpected tensor `{name}` (not part of this configuration's model)")]
    UnexpectedTensor { path: PathBuf, name: String },
    /// A tensor has the wrong shape for the configuration.
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    TensorShape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A tensor is stored in a data type other than F32 or F16.
    #[error("{path}: tensor `{name}` has dtype {found}, expected F32 or F16")]
    TensorDtype {
        path: PathBuf,
        name: String,
        found: String,
    },
    /// A tensor contains NaN or infinite values.
    #[error("{path}: tensor `{name}` contains NaN or infinite values, expected finite weights")]
    NonFinite { path: PathBuf, name: String },
    /// The output path of a command already holds something.
    #[error("{path} exists and is not empty; choose another path or remove it")]
    OutputExists { path: PathBuf },
    /// A preset name that is not one of [`crate::presets::PRESETS`].
    #[error("unknown preset `{name}`, expected one of: {}", known.join(", "))]
    UnknownPreset { name: String, known: Vec<String> },
    /// `tokenizer.json` is malformed or disagrees with the configuration.
    #[error("{path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    /// Any other invalid input or state of a command, described in words.
    #[error("{0}")]
    Invalid(String),
}

/// Result with the tools' [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
