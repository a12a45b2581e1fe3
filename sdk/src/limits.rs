//! What a bundle may make the SDK allocate, bounded before anything is read.
//!
//! A bundle comes from elsewhere: its manifest could claim a `max_seq_len` of a billion or a
//! backbone far larger than its weight files. [`MemoryPlan::for_bundle`] estimates, from the
//! manifest and the sizes of the files that would be loaded (`stat` only), the most memory the
//! model can need — weights, the KV cache at `max_seq_len`, attention scores and the VAE's
//! largest activations — and checks the config's dimensions against the weight files. `Model::load`
//! refuses a bundle whose plan exceeds [`LoadOptions::memory_cap`](crate::LoadOptions) or whose
//! files are too small for its dimensions, before reading a graph.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::graph_id::GraphId;
use crate::manifest::{Manifest, Precision};

/// Default [`LoadOptions::memory_cap`](crate::LoadOptions): 4 GiB, half of an 8 GB Jetson Orin
/// Nano, far above the shipped models (shapes64 plans ~40 MB; paper-160m ~1.2 GB in FP32).
pub const DEFAULT_MEMORY_CAP: u64 = 4 << 30;

/// Bytes the model may need at most, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryPlan {
    /// Graph files at the chosen precisions, plus the tokenizer (tract holds the weights).
    pub weights: u64,
    /// Keys and values of every layer at `max_seq_len` (f32).
    pub kv_cache: u64,
    /// The largest transient buffers: attention scores over a full-length prefix, the attention
    /// mask, and the VAE decoder's widest feature maps.
    pub activations: u64,
}

impl MemoryPlan {
    /// The whole plan (saturating: absurd dimensions give `u64::MAX`, never a wrap).
    pub fn total(&self) -> u64 {
        self.weights
            .saturating_add(self.kv_cache)
            .saturating_add(self.activations)
    }

    /// The plan for loading `files` (graph name, precision, path) of the bundle described by
    /// `manifest`. Fails when a file is missing or smaller than the config's dimensions need.
    pub fn for_bundle(
        manifest: &Manifest,
        files: &[(GraphId, Precision, PathBuf)],
        tokenizer: &Path,
    ) -> Result<Self> {
        let config = &manifest.config;
        let mut weights = file_size(tokenizer)?;
        for (id, precision, path) in files {
            let size = file_size(path)?;
            let params = min_params(config, *id);
            let need = params.saturating_mul(weight_bytes(*precision));
            if size < need {
                return Err(Error::Graph {
                    graph: id.name().to_string(),
                    path: path.clone(),
                    message: format!(
                        "file is {size} bytes, but the config's dimensions need at least {need} \
                         ({params} {precision} weights); the manifest does not describe this file"
                    ),
                });
            }
            weights = weights.saturating_add(size);
        }
        let g = &manifest.geometry;
        let [layers, seq, dim, heads] =
            [g.n_layers, g.max_seq_len, g.dim, g.n_heads].map(|v| v as u64);
        let f32s = |n: u64| n.saturating_mul(4);
        let kv_cache = f32s(mul(&[2, layers, seq, dim]));
        let scores = f32s(mul(&[heads, seq, seq]));
        let mask = f32s(mul(&[seq, seq]));
        let widest = config.vae.channels.iter().copied().max().unwrap_or(0) as u64;
        let side = g.image_size as u64;
        // Input, output and one skip of the widest block alive at once.
        let vae = f32s(mul(&[3, widest, side, side]));
        Ok(MemoryPlan {
            weights,
            kv_cache,
            activations: scores.saturating_add(mask).max(vae),
        })
    }

    /// `Ok` when the plan fits `cap` bytes; otherwise an error that names each part.
    pub fn check(&self, cap: u64, dir: &Path) -> Result<()> {
        if self.total() <= cap {
            return Ok(());
        }
        Err(Error::Manifest {
            path: dir.join("manifest.json"),
            message: format!(
                "the model may need {} (weights {}, KV cache at max_seq_len {}, activations {}), \
                 more than the memory cap of {}; raise LoadOptions::memory_cap if this device \
                 has the memory",
                human(self.total()),
                human(self.weights),
                human(self.kv_cache),
                human(self.activations),
                human(cap)
            ),
        })
    }
}

fn mul(factors: &[u64]) -> u64 {
    factors.iter().fold(1u64, |acc, &f| acc.saturating_mul(f))
}

fn file_size(path: &Path) -> Result<u64> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// Bytes per weight at `precision` (INT8 graphs keep norms and biases in f32, but most weights
/// are i8 / u8).
fn weight_bytes(precision: Precision) -> u64 {
    match precision {
        Precision::Fp32 => 4,
        Precision::Fp16 => 2,
        Precision::Int8 => 1,
    }
}

/// A lower bound on the weights of graph `id` implied by the config: the matrices every
/// conforming graph stores (embeddings, attention and SwiGLU projections). The patch and VAE
/// graphs depend on their block layout and count as 0.
fn min_params(config: &Config, id: GraphId) -> u64 {
    let b = &config.backbone;
    let [vocab, dim, ffn, layers] =
        [config.text.vocab_size, b.dim, b.ffn_dim, b.n_layers].map(|v| v as u64);
    match id {
        GraphId::TextEmbed | GraphId::LmHead => mul(&[vocab, dim]),
        GraphId::Backbone => mul(&[layers, dim, mul(&[4, dim]).saturating_add(mul(&[3, ffn]))]),
        GraphId::PatchIn | GraphId::PatchOut | GraphId::VaeEncoder | GraphId::VaeDecoder => 0,
    }
}

fn human(bytes: u64) -> String {
    if bytes == u64::MAX {
        return "more than 16 EiB".into();
    }
    let mib = bytes as f64 / (1024.0 * 1024.0);
    if mib >= 1024.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_saturate_instead_of_wrapping() {
        assert_eq!(mul(&[u64::MAX, 2]), u64::MAX);
        assert_eq!(mul(&[3, 4, 5]), 60);
        let plan = MemoryPlan {
            weights: u64::MAX,
            kv_cache: 1,
            activations: 1,
        };
        assert_eq!(plan.total(), u64::MAX);
        assert!(plan.check(u64::MAX - 1, Path::new("b")).is_err());
    }

    #[test]
    fn the_error_names_every_part_and_the_cap() {
        let plan = MemoryPlan {
            weights: 3 << 20,
            kv_cache: 5 << 30,
            activations: 1 << 20,
        };
        let err = plan
            .check(DEFAULT_MEMORY_CAP, Path::new("bundle"))
            .unwrap_err();
        let text = err.to_string();
        for part in [
            "weights 3.0 MiB",
            "KV cache at max_seq_len 5.0 GiB",
            "4.0 GiB",
        ] {
            assert!(text.contains(part), "{text}");
        }
        assert!(plan.check(6 << 30, Path::new("bundle")).is_ok());
    }
}
