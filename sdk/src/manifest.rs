//! `manifest.json`: what a bundle holds and how its graphs are wired (see `docs/bundle.md`).
//!
//! The converter writes it, the runtime reads it; both use these types so the two can not drift.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{Config, DiffusionConfig, Geometry, SpecialTokens};
use crate::error::{Error, Result};
use crate::graph_id::GraphId;

/// Bundle format version this code reads and writes.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;

/// Numeric precision of a graph file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Fp16,
    Int8,
}

impl Precision {
    /// All precisions, in order.
    pub const ALL: [Precision; 3] = [Precision::Fp32, Precision::Fp16, Precision::Int8];

    /// Lowercase name, as in the manifest and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Int8 => "int8",
        }
    }

    /// The float type of the graph's float inputs and outputs.
    pub fn float_dtype(self) -> FloatDtype {
        match self {
            Precision::Fp16 => FloatDtype::Float16,
            Precision::Fp32 | Precision::Int8 => FloatDtype::Float32,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fp32" | "f32" => Ok(Precision::Fp32),
            "fp16" | "f16" => Ok(Precision::Fp16),
            "int8" | "i8" => Ok(Precision::Int8),
            other => Err(format!(
                "unknown precision `{other}` (expected fp32, fp16 or int8)"
            )),
        }
    }
}

/// Float element type of a graph file's float tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FloatDtype {
    Float32,
    Float16,
}

/// Element type of a graph input or output; `Float` is the file's [`FloatDtype`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoDtype {
    Float,
    Int64,
}

/// One graph input or output: name, element type, shape of numbers and symbols (`S`, `P+S`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: IoDtype,
    pub shape: Vec<String>,
}

/// One ONNX file of a graph at one precision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphFile {
    /// Path relative to the bundle directory.
    pub path: String,
    pub bytes: u64,
    pub float: FloatDtype,
    /// Whether the file runs integer kernels (MatMulInteger / ConvInteger).
    pub int8_ops: bool,
}

/// A graph: its interface and its files per precision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphEntry {
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    pub files: BTreeMap<Precision, GraphFile>,
}

/// Linear latent → RGB map for cheap previews: `rgb = weight · z + bias`, RGB in `[-1, 1]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preview {
    /// `[3][latent_channels]`.
    pub weight: Vec<Vec<f32>>,
    pub bias: [f32; 3],
}

/// The whole `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub producer: String,
    pub name: String,
    pub config: Config,
    pub geometry: Geometry,
    pub special_tokens: SpecialTokens,
    pub diffusion: DiffusionConfig,
    pub preview: Preview,
    pub tokenizer: String,
    pub precisions: Vec<Precision>,
    pub graphs: BTreeMap<String, GraphEntry>,
}

impl Manifest {
    /// Reads and checks `dir/manifest.json`: version, config rules, geometry and copies agree,
    /// every graph present with a file for every listed precision.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        Self::from_json(&text, &path)
    }

    /// Parses and checks manifest text; `path` names the file in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let bad = |message: String| Error::Manifest {
            path: path.to_path_buf(),
            message,
        };
        let version: serde_json::Value = serde_json::from_str(text).map_err(|e| Error::Json {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        match version.get("format_version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(MANIFEST_FORMAT_VERSION) => {}
            Some(v) => {
                return Err(bad(format!(
                    "unsupported format_version {v}: this SDK reads version {MANIFEST_FORMAT_VERSION}; \
                     convert the checkpoint again with a matching `transfusion` tool"
                )))
            }
            None => return Err(bad("missing `format_version`".into())),
        }
        let manifest: Manifest = serde_json::from_value(version).map_err(|e| Error::Json {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        manifest.config.validate()?;
        if manifest.geometry != manifest.config.geometry() {
            return Err(bad(
                "`geometry` does not match the one derived from `config`".into(),
            ));
        }
        if manifest.special_tokens != manifest.config.special_tokens {
            return Err(bad(
                "`special_tokens` differ from `config.special_tokens`".into()
            ));
        }
        if manifest.diffusion != manifest.config.diffusion {
            return Err(bad("`diffusion` differs from `config.diffusion`".into()));
        }
        let c = manifest.geometry.latent_channels;
        if manifest.preview.weight.len() != 3
            || manifest.preview.weight.iter().any(|r| r.len() != c)
        {
            return Err(bad(format!(
                "`preview.weight` must be 3 rows of {c} values"
            )));
        }
        if manifest.precisions.is_empty() {
            return Err(bad("`precisions` is empty".into()));
        }
        for id in GraphId::ALL {
            let name = id.name();
            let graph = manifest
                .graphs
                .get(name)
                .ok_or_else(|| bad(format!("graph `{name}` is missing")))?;
            for precision in &manifest.precisions {
                if !graph.files.contains_key(precision) {
                    return Err(bad(format!(
                        "graph `{name}` has no file for precision {precision}"
                    )));
                }
            }
            // Every file, not only those of the listed precisions: `Exact` and `Auto` pick from
            // `files`, so an unlisted entry is loadable too.
            for (precision, file) in &graph.files {
                let rel = Path::new(&file.path);
                if rel.is_absolute()
                    || rel
                        .components()
                        .any(|c| !matches!(c, std::path::Component::Normal(_)))
                {
                    return Err(bad(format!(
                        "graph `{name}` {precision}: file path `{}` must stay inside the bundle",
                        file.path
                    )));
                }
            }
        }
        Ok(manifest)
    }

    /// The path of bundle file `rel` (a graph or the tokenizer) in bundle `dir`, after checking
    /// that it resolves, through any symlinks, to a file inside the bundle: a link to
    /// `/etc/shadow` or to a graph elsewhere on the device is refused like a `../` path.
    pub fn bundle_file(dir: &Path, rel: &str) -> Result<std::path::PathBuf> {
        let path = dir.join(rel);
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| Error::Io { path: p, source }
        };
        let root = dir.canonicalize().map_err(io(dir))?;
        let real = path.canonicalize().map_err(io(&path))?;
        if !real.starts_with(&root) {
            return Err(Error::Manifest {
                path: dir.join("manifest.json"),
                message: format!(
                    "`{rel}` resolves to {}, outside the bundle {}: bundle files must be inside it \
                     (copy the file in instead of linking it)",
                    real.display(),
                    root.display()
                ),
            });
        }
        Ok(path)
    }

    /// The entry of graph `id` (present in every manifest [`Manifest::from_json`] accepted).
    pub fn graph(&self, id: GraphId) -> Result<&GraphEntry> {
        self.graphs.get(id.name()).ok_or_else(|| Error::Manifest {
            path: "manifest.json".into(),
            message: format!("graph `{id}` is missing"),
        })
    }
}
