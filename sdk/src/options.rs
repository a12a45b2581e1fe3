//! Options for loading a model and for one generation.

use crate::config::SamplerKind;
use crate::error::{Error, Result};
use crate::graph_id::{GraphId, ModelPart};
use crate::manifest::Precision;
use crate::sampling::SamplingOptions;

/// Precision wanted for a part of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrecisionChoice {
    /// On the CPU: FP32 — the fastest file of every graph measured with tract 0.23.9 (INT8
    /// files run integer kernels but are slower there; FP16 on CPUs with native FP16
    /// arithmetic is not picked until verified on hardware, see `model::native_fp16`). On a
    /// GPU: FP16, else FP32.
    #[default]
    Auto,
    /// Exactly this precision; loading fails if the bundle lacks it.
    Exact(Precision),
}

impl std::str::FromStr for PrecisionChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("auto") {
            Ok(PrecisionChoice::Auto)
        } else {
            s.parse::<Precision>().map(PrecisionChoice::Exact)
        }
    }
}

/// Precision per part of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PartPrecisions {
    /// `text_embed` and `lm_head`.
    pub text: PrecisionChoice,
    pub backbone: PrecisionChoice,
    /// `patch_in` and `patch_out`.
    pub patch: PrecisionChoice,
    /// `vae_encoder` and `vae_decoder`.
    pub vae: PrecisionChoice,
}

impl PartPrecisions {
    /// The same choice for every part.
    pub fn all(choice: PrecisionChoice) -> Self {
        PartPrecisions {
            text: choice,
            backbone: choice,
            patch: choice,
            vae: choice,
        }
    }

    /// The choice for graph `id`.
    pub fn for_graph(&self, id: GraphId) -> PrecisionChoice {
        match id.part() {
            ModelPart::Text => self.text,
            ModelPart::Backbone => self.backbone,
            ModelPart::Patch => self.patch,
            ModelPart::Vae => self.vae,
        }
    }
}

/// Where graphs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// tract's CPU kernels.
    #[default]
    Cpu,
    /// tract-cuda (needs a `cuda-*` feature and, at run time, the driver, cudart, NVRTC with the
    /// CUDA headers, cuBLAS and cuDNN: `platform::preflight` checks them); fails otherwise,
    /// naming what is missing.
    Cuda,
    /// The GPU when tract-cuda can start, else the CPU with a logged reason.
    Auto,
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda),
            "auto" => Ok(Device::Auto),
            other => Err(format!(
                "unknown device `{other}` (expected cpu, cuda or auto)"
            )),
        }
    }
}

/// How to load a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    pub precision: PartPrecisions,
    /// Threads for this model's matrix products, 1..=1024 (`None`: one). The count belongs to
    /// the model: its graph runs set it on the calling thread for the duration of the run, so
    /// loading or running one model never changes another's, and nothing process-wide is set.
    /// More than one thread runs the products on a pool of that size, created on first use
    /// and kept for the process (tract caches one pool per thread count). Loading is not
    /// bound by it: [`Model::load`](crate::Model::load) reads the graph files on up to one
    /// thread per core.
    pub threads: Option<usize>,
    pub device: Device,
    /// Graphs kept on the CPU when the device is a GPU (default: `text_embed`, a table lookup
    /// not worth a device round trip).
    pub cpu_graphs: Vec<GraphId>,
    /// Most bytes the model may need (weights, KV cache at `max_seq_len`, largest activations;
    /// [`MemoryPlan`](crate::limits::MemoryPlan)); a bundle planning more is refused before any
    /// graph is read. `None`: no cap. Default [`DEFAULT_MEMORY_CAP`](crate::limits::DEFAULT_MEMORY_CAP).
    pub memory_cap: Option<u64>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            precision: PartPrecisions::default(),
            threads: None,
            device: Device::Cpu,
            cpu_graphs: vec![GraphId::TextEmbed],
            memory_cap: Some(crate::limits::DEFAULT_MEMORY_CAP),
        }
    }
}

/// Most matrix-product threads a model may ask for.
pub const MAX_THREADS: usize = 1024;

impl LoadOptions {
    /// Checks the values a caller can get wrong, before anything is read; errors name the
    /// option. [`Model::load`](crate::Model::load) calls it first.
    pub fn validate(&self) -> Result<()> {
        if let Some(n) = self.threads {
            if n == 0 || n > MAX_THREADS {
                return Err(Error::InvalidOption {
                    name: "threads".into(),
                    message: format!("must be in 1..={MAX_THREADS}, got {n}"),
                });
            }
        }
        if self.memory_cap == Some(0) {
            return Err(Error::InvalidOption {
                name: "memory_cap".into(),
                message: "must be more than 0 bytes (`None` for no cap)".into(),
            });
        }
        Ok(())
    }
}

/// What to do with prompt words the model's vocabulary does not have (they reach the model as
/// its unknown token, which it was never trained to draw).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownWords {
    /// Go on, and report them: an [`Event::UnknownWords`](crate::Event::UnknownWords) before
    /// anything runs, and a logged warning.
    #[default]
    Warn,
    /// Fail with [`crate::Error::UnknownWords`] before anything runs.
    Error,
    /// Go on silently.
    Allow,
}

impl std::str::FromStr for UnknownWords {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "warn" => Ok(UnknownWords::Warn),
            "error" => Ok(UnknownWords::Error),
            "allow" => Ok(UnknownWords::Allow),
            other => Err(format!(
                "unknown setting `{other}` (expected warn, error or allow)"
            )),
        }
    }
}

/// How to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Seed of every random draw (noise, token sampling): same seed, same output.
    pub seed: u64,
    /// Text tokens to generate at most. `None` (the default): [`DEFAULT_MAX_TOKENS`] for text
    /// and captions, none after the image of [`Request::Image`](crate::Request::Image) and
    /// [`Request::Edit`](crate::Request::Edit). `Some(n)` asks for up to `n` in every case
    /// (`Some(0)`: stop after the prompt or the image).
    pub max_tokens: Option<usize>,
    pub sampling: SamplingOptions,
    /// Diffusion steps (default: the manifest's recommendation).
    pub steps: Option<usize>,
    /// Sampler (default: the manifest's recommendation).
    pub sampler: Option<SamplerKind>,
    /// Classifier-free guidance scale (default: the manifest's; ignored for guidance-distilled
    /// models, where the unconditional pass is never run).
    pub guidance: Option<f32>,
    /// DDIM η (0: deterministic DDIM).
    pub eta: f32,
    /// Images the model may open by itself (BOI) during text generation.
    pub max_images: usize,
    /// Cut a prompt that does not fit the context (keeping its end) instead of failing.
    pub truncate_prompt: bool,
    /// Compute a preview for every diffusion step (cheap: a linear map of the latent).
    pub previews: bool,
    /// Prompt words outside the vocabulary: reported (default), an error, or allowed.
    pub unknown_words: UnknownWords,
}

/// Text tokens generated at most for text and caption requests when
/// [`GenerateOptions::max_tokens`] is `None`.
pub const DEFAULT_MAX_TOKENS: usize = 64;

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            seed: 0,
            max_tokens: None,
            sampling: SamplingOptions::default(),
            steps: None,
            sampler: None,
            guidance: None,
            eta: 0.0,
            max_images: 1,
            truncate_prompt: false,
            previews: true,
            unknown_words: UnknownWords::default(),
        }
    }
}

impl GenerateOptions {
    /// Checks the values a caller can get wrong; errors name the option. It needs no model:
    /// apps call it before loading one so a bad option fails at once.
    /// [`Model::generate`](crate::Model::generate) calls it too, and checks what depends on the
    /// model (the sampler's steps against its schedule) before running anything.
    pub fn validate(&self) -> Result<()> {
        self.sampling.validate()?;

        if let Some(steps) = self.steps {
            if steps == 0 || steps > 1000 {
                return Err(Error::InvalidOption {
                    name: "steps".into(),
                    message: format!("must be in 1..=1000, got {steps}"),
                });
            }
        }
        if let Some(g) = self.guidance {
            if !(g.is_finite() && g >= 1.0) {
                return Err(Error::InvalidOption {
                    name: "guidance".into(),
                    message: format!("must be a finite number >= 1, got {g}"),
                });
            }
        }
        if !(self.eta.is_finite() && (0.0..=1.0).contains(&self.eta)) {
            return Err(Error::InvalidOption {
                name: "eta".into(),
                message: format!("must be in [0, 1], got {}", self.eta),
            });
        }
        Ok(())
    }
}
