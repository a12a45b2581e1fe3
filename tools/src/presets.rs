//! Named model configurations: `tiny` for tests, `shapes64` (the default edge model) and
//! `paper-160m` (the smallest model size of the Transfusion paper, at 256×256).
//!
//! Every preset is config format 2 with both patch conditionings on (a 2-D position and the
//! timestep in every patch vector, docs/checkpoint.md), has 16 latent patches per image, the shapes vocabulary
//! ([`crate::vocab::VOCAB_SIZE`]) and special tokens `pad 0, bos 1, eos 2, boi 3, eoi 4, unk 5`.

use transfusion_sdk::config::{
    BackboneConfig, Config, DiffusionConfig, ImageConfig, PatchConfig, PatchKind, Prediction,
    SamplerKind, Schedule, SpecialTokens, TextConfig, VaeConfig, CONFIG_FORMAT_VERSION,
};

use crate::error::{Error, Result};
use crate::vocab::VOCAB_SIZE;

/// Names accepted by [`preset`].
pub const PRESETS: &[&str] = &["tiny", "shapes64", "paper-160m"];

/// Sizes that differ between presets.
struct Sizes {
    image: usize,
    vae_channels: &'static [usize],
    latent_channels: usize,
    patch: usize,
    unet_channels: &'static [usize],
    timestep_freq_dim: usize,
    dim: usize,
    n_layers: usize,
    n_heads: usize,
    ffn_dim: usize,
    max_seq_len: usize,
}

/// The configuration of the preset `name`, validated; [`Error::UnknownPreset`] lists the
/// known names otherwise.
pub fn preset(name: &str) -> Result<Config> {
    let sizes = match name {
        "tiny" => Sizes {
            image: 32,
            vae_channels: &[8, 16, 16],
            latent_channels: 4,
            patch: 2,
            unet_channels: &[16],
            timestep_freq_dim: 64,
            dim: 64,
            n_layers: 2,
            n_heads: 1,
            ffn_dim: 128,
            max_seq_len: 128,
        },
        // The edge default. The VAE and U-Net are kept narrow on purpose: at 64×64 the VAE's
        // full-resolution convolutions dominate the FLOPs ([32, 64, 128] cost 1.43 GFLOPs per
        // decode, [16, 32, 64] 0.36), and flat synthetic scenes need few channels.
        "shapes64" => Sizes {
            image: 64,
            vae_channels: &[16, 32, 64],
            latent_channels: 4,
            patch: 4,
            unet_channels: &[32, 64],
            timestep_freq_dim: 256,
            dim: 256,
            n_layers: 8,
            n_heads: 4,
            ffn_dim: 704,
            max_seq_len: 256,
        },
        "paper-160m" => Sizes {
            image: 256,
            vae_channels: &[64, 128, 256, 256],
            latent_channels: 8,
            patch: 8,
            unet_channels: &[128, 256, 512],
            timestep_freq_dim: 256,
            dim: 768,
            n_layers: 16,
            n_heads: 12,
            ffn_dim: 2048,
            max_seq_len: 512,
        },
        _ => {
            return Err(Error::UnknownPreset {
                name: name.to_string(),
                known: PRESETS.iter().map(|p| p.to_string()).collect(),
            })
        }
    };
    let config = build(name, &sizes);
    config.validate()?;
    Ok(config)
}

fn build(name: &str, s: &Sizes) -> Config {
    const HEAD_DIM: usize = 64;
    Config {
        format_version: CONFIG_FORMAT_VERSION,
        name: name.to_string(),
        text: TextConfig {
            vocab_size: VOCAB_SIZE,
            max_seq_len: s.max_seq_len,
        },
        special_tokens: SpecialTokens {
            pad: 0,
            bos: 1,
            eos: 2,
            boi: 3,
            eoi: 4,
            unk: 5,
        },
        backbone: BackboneConfig {
            dim: s.dim,
            n_layers: s.n_layers,
            n_heads: s.n_heads,
            head_dim: HEAD_DIM,
            ffn_dim: s.ffn_dim,
            norm_eps: 1e-5,
            rope_theta: 10000.0,
        },
        image: ImageConfig {
            size: s.image,
            channels: 3,
        },
        vae: VaeConfig {
            latent_channels: s.latent_channels,
            channels: s.vae_channels.to_vec(),
            scale: 1.0,
            shift: 0.0,
        },
        patch: PatchConfig {
            kind: PatchKind::Unet,
            size: s.patch,
            channels: s.unet_channels.to_vec(),
            timestep_freq_dim: s.timestep_freq_dim,
            position_embedding: Some(true),
            timestep_tokens: Some(true),
        },
        diffusion: DiffusionConfig {
            schedule: Schedule::Cosine,
            prediction: Prediction::Epsilon,
            train_timesteps: 1000,
            sampler: SamplerKind::Ddim,
            steps: 4,
            guidance: 1.0,
            guidance_distilled: false,
            timesteps: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_validates_with_16_patches() {
        for name in PRESETS {
            let config = preset(name).unwrap();
            config.validate().unwrap();
            assert_eq!(config.name, *name);
            assert_eq!(config.geometry().num_patches, 16, "{name}");
            let json = serde_json::to_string(&config).unwrap();
            assert_eq!(Config::from_json(&json, "preset").unwrap(), config);
        }
    }

    #[test]
    fn geometry_of_each_preset() {
        let g = preset("tiny").unwrap().geometry();
        assert_eq!((g.latent_size, g.latent_channels, g.patch_grid), (8, 4, 4));
        let g = preset("shapes64").unwrap().geometry();
        assert_eq!((g.latent_size, g.latent_channels, g.patch_grid), (16, 4, 4));
        let g = preset("paper-160m").unwrap().geometry();
        assert_eq!((g.latent_size, g.latent_channels, g.patch_grid), (32, 8, 4));
    }

    #[test]
    fn unknown_preset_lists_the_known_ones() {
        let message = preset("huge").unwrap_err().to_string();
        assert!(
            message.contains("huge") && message.contains("shapes64"),
            "{message}"
        );
    }
}
