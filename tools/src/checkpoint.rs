//! A checkpoint directory (`docs/checkpoint.md`): `config.json`, `model.safetensors`,
//! `tokenizer.json`. Loading verifies everything against the configuration so later stages
//! (conversion, verification) can index tensors without re-checking; saving is atomic.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, View};
use serde_json::Value;
use transfusion_sdk::Config;

use crate::error::{Error, Result};
pub use crate::publish::ensure_output_free;
use crate::publish::write_dir_atomically;
use crate::tensors::tensor_specs;
use crate::vocab;

/// File name of the configuration inside a checkpoint.
pub const CONFIG_FILE: &str = "config.json";
/// File name of the weights inside a checkpoint.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the tokenizer inside a checkpoint.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// One weight tensor, widened to f32, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first (PyTorch layout, e.g. `[out, in]` for a linear weight).
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values.
    pub data: Vec<f32>,
}

/// A verified checkpoint in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Directory it was loaded from (empty for a checkpoint built in memory); names files in
    /// errors.
    pub dir: PathBuf,
    /// The validated `config.json`.
    pub config: Config,
    /// Every tensor of [`tensor_specs`], by name.
    pub tensors: BTreeMap<String, Tensor>,
    /// Contents of `tokenizer.json`, kept as read so saving does not change the tokenizer.
    pub tokenizer: Value,
}

impl Checkpoint {
    /// Reads and verifies the checkpoint in `dir`: a valid `config.json`; a `model.safetensors`
    /// holding exactly the tensors of [`tensor_specs`] with their shapes, in F32 or F16 (widened),
    /// all finite; a `tokenizer.json` whose special ids and size agree with the configuration.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config = read_config(&dir.join(CONFIG_FILE))?;
        let weights_path = dir.join(WEIGHTS_FILE);
        let bytes = std::fs::read(&weights_path).map_err(|e| Error::io(&weights_path, e))?;
        let tensors = read_tensors(&weights_path, &bytes, &config)?;
        drop(bytes);
        let tokenizer_path = dir.join(TOKENIZER_FILE);
        let tokenizer = vocab::read_tokenizer(&tokenizer_path, &config)?;
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            config,
            tensors,
            tokenizer,
        })
    }

    /// The tensor `name`; [`Error::MissingTensor`] when the model has none of that name.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            path: self.dir.join(WEIGHTS_FILE),
            name: name.to_string(),
        })
    }

    /// Checks the in-memory checkpoint as [`Checkpoint::load`] checks files: valid config,
    /// exactly the specified tensors with matching shapes and element counts, finite values.
    /// `path` names the weights in errors.
    pub fn validate(&self, path: &Path) -> Result<()> {
        self.config.validate().map_err(|source| Error::Config {
            path: path.with_file_name(CONFIG_FILE),
            source,
        })?;
        let specs = tensor_specs(&self.config);
        for spec in &specs {
            let tensor = self
                .tensors
                .get(&spec.name)
                .ok_or_else(|| Error::MissingTensor {
                    path: path.to_path_buf(),
                    name: spec.name.clone(),
                })?;
            if tensor.shape != spec.shape {
                return Err(Error::TensorShape {
                    path: path.to_path_buf(),
                    name: spec.name.clone(),
                    expected: spec.shape.clone(),
                    found: tensor.shape.clone(),
                });
            }
            if tensor.data.len() != spec.numel() {
                return Err(Error::Invalid(format!(
                    "{}: tensor `{}` has {} values, expected {} for shape {:?}",
                    path.display(),
                    spec.name,
                    tensor.data.len(),
                    spec.numel(),
                    spec.shape
                )));
            }
            if tensor.data.iter().any(|x| !x.is_finite()) {
                return Err(Error::NonFinite {
                    path: path.to_path_buf(),
                    name: spec.name.clone(),
                });
            }
        }
        if self.tensors.len() != specs.len() {
            let known: std::collections::HashSet<&str> =
                specs.iter().map(|s| s.name.as_str()).collect();
            if let Some(name) = self.tensors.keys().find(|k| !known.contains(k.as_str())) {
                return Err(Error::UnexpectedTensor {
                    path: path.to_path_buf(),
                    name: name.clone(),
                });
            }
        }
        Ok(())
    }

    /// Writes the checkpoint to `dir`, which must not exist or be empty
    /// ([`Error::OutputExists`] otherwise, leaving it untouched). The files are written into a
    /// temporary directory beside `dir` and renamed into place at the end, so a failure leaves
    /// nothing half-written.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        ensure_output_free(dir)?;
        self.validate(&dir.join(WEIGHTS_FILE))?;
        write_dir_atomically(dir, |tmp| self.write_files(tmp))
    }

    fn write_files(&self, dir: &Path) -> Result<()> {
        let config_path = dir.join(CONFIG_FILE);
        let config = serde_json::to_string_pretty(&self.config)
            .map_err(|e| Error::Invalid(format!("cannot serialise the configuration: {e}")))?;
        std::fs::write(&config_path, config + "\n").map_err(|e| Error::io(&config_path, e))?;

        let weights_path = dir.join(WEIGHTS_FILE);
        let views = self
            .tensors
            .iter()
            .map(|(name, t)| (name.as_str(), F32View(t)));
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(views, Some(metadata), &weights_path).map_err(|e| {
            Error::Safetensors {
                path: weights_path.clone(),
                message: e.to_string(),
            }
        })?;

        let tokenizer_path = dir.join(TOKENIZER_FILE);
        let tokenizer = serde_json::to_string_pretty(&self.tokenizer)
            .map_err(|e| Error::Invalid(format!("cannot serialise the tokenizer: {e}")))?;
        std::fs::write(&tokenizer_path, tokenizer + "\n")
            .map_err(|e| Error::io(&tokenizer_path, e))?;
        Ok(())
    }
}

/// Reads and validates `config.json`; errors name the file.
fn read_config(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Config::from_json(&text, &path.display().to_string()).map_err(|e| match e {
        // Already names the file.
        e @ transfusion_sdk::Error::Json { .. } => Error::Sdk(e),
        source => Error::Config {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Parses safetensors `bytes` and checks them against the tensor list of `config`.
fn read_tensors(path: &Path, bytes: &[u8], config: &Config) -> Result<BTreeMap<String, Tensor>> {
    let file = SafeTensors::deserialize(bytes).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let specs = tensor_specs(config);
    let present: std::collections::HashSet<&str> = file.names().into_iter().collect();
    let missing: Vec<&str> = specs
        .iter()
        .filter(|s| !present.contains(s.name.as_str()))
        .map(|s| s.name.as_str())
        .collect();
    if missing.len() > 1 {
        // Every missing name at once: a checkpoint of an older format lacks several.
        return Err(Error::MissingTensors {
            path: path.to_path_buf(),
            names: missing.iter().map(|n| n.to_string()).collect(),
            format_version: config.format_version,
        });
    }
    let mut tensors = BTreeMap::new();
    for spec in &specs {
        let view = file.tensor(&spec.name).map_err(|_| Error::MissingTensor {
            path: path.to_path_buf(),
            name: spec.name.clone(),
        })?;
        let dtype = view.dtype();
        if !matches!(dtype, Dtype::F32 | Dtype::F16) {
            return Err(Error::TensorDtype {
                path: path.to_path_buf(),
                name: spec.name.clone(),
                found: dtype.to_string(),
            });
        }
        if view.shape() != spec.shape.as_slice() {
            return Err(Error::TensorShape {
                path: path.to_path_buf(),
                name: spec.name.clone(),
                expected: spec.shape.clone(),
                found: view.shape().to_vec(),
            });
        }
        let data: Vec<f32> = match dtype {
            Dtype::F16 => view
                .data()
                .as_chunks::<2>()
                .0
                .iter()
                .map(|&b| half::f16::from_le_bytes(b).to_f32())
                .collect(),
            _ => view
                .data()
                .as_chunks::<4>()
                .0
                .iter()
                .map(|&b| f32::from_le_bytes(b))
                .collect(),
        };
        if data.iter().any(|x| !x.is_finite()) {
            return Err(Error::NonFinite {
                path: path.to_path_buf(),
                name: spec.name.clone(),
            });
        }
        tensors.insert(
            spec.name.clone(),
            Tensor {
                shape: spec.shape.clone(),
                data,
            },
        );
    }
    let mut names = file.names();
    names.sort();
    if let Some(name) = names.into_iter().find(|n| !tensors.contains_key(*n)) {
        return Err(Error::UnexpectedTensor {
            path: path.to_path_buf(),
            name: name.to_string(),
        });
    }
    Ok(tensors)
}

/// Serialises a [`Tensor`] as little-endian F32, one tensor at a time (no full copy in memory).
struct F32View<'a>(&'a Tensor);

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.0.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.0.data.iter().flat_map(|x| x.to_le_bytes()).collect())
    }

    fn data_len(&self) -> usize {
        self.0.data.len() * 4
    }
}
