//! The model configuration (`config.json` of a checkpoint, embedded verbatim in a bundle's
//! manifest) and the geometry derived from it.
//!
//! This is the single definition of the model family's hyper-parameters: the converter reads it
//! to build graphs and the runtime reads it to size caches and images. See `docs/checkpoint.md`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Newest checkpoint format version this code reads and writes. Format 2 adds
/// `patch.position_embedding` and `patch.timestep_tokens`; format 1 (no such keys, both off)
/// is still read.
pub const CONFIG_FORMAT_VERSION: u32 = 2;

/// Oldest checkpoint format version this code reads.
pub const CONFIG_FORMAT_VERSION_MIN: u32 = 1;

/// Number of groups of every GroupNorm (VAE and U-Net).
pub const NORM_GROUPS: usize = 8;

/// Epsilon of every GroupNorm.
pub const GROUP_NORM_EPS: f32 = 1e-5;

/// A whole model configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub format_version: u32,
    /// Preset or model name, informational.
    pub name: String,
    pub text: TextConfig,
    pub special_tokens: SpecialTokens,
    pub backbone: BackboneConfig,
    pub image: ImageConfig,
    pub vae: VaeConfig,
    pub patch: PatchConfig,
    pub diffusion: DiffusionConfig,
}

/// Text side: vocabulary and context length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub max_seq_len: usize,
}

/// Ids of the special tokens; BOI/EOI delimit an image block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecialTokens {
    pub pad: u32,
    pub bos: u32,
    pub eos: u32,
    pub boi: u32,
    pub eoi: u32,
    pub unk: u32,
}

impl SpecialTokens {
    /// `(name, id)` pairs, in a fixed order.
    pub fn all(&self) -> [(&'static str, u32); 6] {
        [
            ("pad", self.pad),
            ("bos", self.bos),
            ("eos", self.eos),
            ("boi", self.boi),
            ("eoi", self.eoi),
            ("unk", self.unk),
        ]
    }
}

/// The Llama-style decoder shared by text and image positions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackboneConfig {
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub norm_eps: f32,
    pub rope_theta: f32,
}

/// Pixel-space image geometry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    pub size: usize,
    pub channels: usize,
}

/// Convolutional VAE: `channels.len() - 1` stride-2 levels; latent scale/shift normalise latents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaeConfig {
    pub latent_channels: usize,
    pub channels: Vec<usize>,
    pub scale: f32,
    pub shift: f32,
}

/// Which layers turn latent patches into backbone vectors and back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PatchKind {
    /// U-Net down/up blocks with skip connections (paper Table 6: better at 16 patches).
    Unet,
    /// One linear layer each way, timestep embedding added.
    Linear,
}

/// Patch layers between the latent and the backbone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchConfig {
    pub kind: PatchKind,
    /// Latent pixels per patch side.
    pub size: usize,
    /// U-Net channels per level (`log2(size)` entries); empty for `linear`.
    #[serde(default)]
    pub channels: Vec<usize>,
    pub timestep_freq_dim: usize,
    /// Format 2 (required there, absent in format 1): a learned position per patch-grid cell,
    /// `patch.pos_embed [N, D]`, added to the patch vectors — the 2-D place of each patch,
    /// which 1-D RoPE over the sequence does not give.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position_embedding: Option<bool>,
    /// Format 2: `patch.time_proj(SiLU(temb))` added to the patch vectors, so the backbone
    /// sees the noise level of the image it attends to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestep_tokens: Option<bool>,
}

impl PatchConfig {
    /// Whether the patch vectors get `patch.pos_embed` (format 2 with the key on).
    pub fn has_position_embedding(&self) -> bool {
        self.position_embedding == Some(true)
    }

    /// Whether the patch vectors get `patch.time_proj` of the timestep (format 2, key on).
    pub fn has_timestep_tokens(&self) -> bool {
        self.timestep_tokens == Some(true)
    }
}

/// Noise schedule of the forward process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Cosine,
    Linear,
    Flow,
}

/// What the network predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Prediction {
    Epsilon,
    V,
    X0,
    Flow,
}

/// Recommended sampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    Ddim,
    #[serde(rename = "dpmpp_2m")]
    DpmPp2M,
    Euler,
    Lcm,
}

impl std::str::FromStr for SamplerKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ddim" => Ok(SamplerKind::Ddim),
            "dpmpp_2m" | "dpm++2m" | "dpmpp2m" => Ok(SamplerKind::DpmPp2M),
            "euler" => Ok(SamplerKind::Euler),
            "lcm" => Ok(SamplerKind::Lcm),
            other => Err(format!(
                "unknown sampler `{other}` (expected ddim, dpmpp_2m, euler or lcm)"
            )),
        }
    }
}

/// Diffusion settings and the recommended way to sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffusionConfig {
    pub schedule: Schedule,
    pub prediction: Prediction,
    pub train_timesteps: usize,
    pub sampler: SamplerKind,
    pub steps: usize,
    pub guidance: f32,
    pub guidance_distilled: bool,
    /// The model timesteps of the recommended `steps`-step trajectory, noisiest first
    /// (VP schedules; optional, default the trailing grid of
    /// [`crate::diffusion::schedule::trailing_timesteps`]; checked by
    /// [`crate::diffusion::schedule::check_grid`]). A distilled student can sample better on
    /// another grid than the one it was trained on (`models/shapes64` does); other step
    /// counts keep the trailing grid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timesteps: Option<Vec<usize>>,
}

impl DiffusionConfig {
    /// The timesteps of a `steps`-step trajectory: the configured grid when it has `steps`
    /// entries, else `None` (the sampler's trailing grid).
    pub fn grid(&self, steps: usize) -> Option<&[usize]> {
        self.timesteps.as_deref().filter(|t| t.len() == steps)
    }
}

/// One U-Net skip tensor: channels and spatial size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkipShape {
    pub channels: usize,
    pub size: usize,
}

/// Sizes derived from a validated [`Config`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Geometry {
    pub image_size: usize,
    pub image_channels: usize,
    pub latent_channels: usize,
    pub latent_size: usize,
    pub patch_size: usize,
    pub patch_grid: usize,
    pub num_patches: usize,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_seq_len: usize,
    pub skips: Vec<SkipShape>,
}

fn invalid(key: &str, expected: impl Into<String>, found: impl std::fmt::Display) -> Error {
    Error::InvalidConfig {
        key: key.to_string(),
        expected: expected.into(),
        found: found.to_string(),
    }
}

impl Config {
    /// Parses and validates `config.json` text; `origin` names the file in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Self> {
        let config: Config = serde_json::from_str(text).map_err(|e| Error::Json {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// VAE downsampling levels `L` (factor `2^L`).
    pub fn vae_levels(&self) -> usize {
        self.vae.channels.len().saturating_sub(1)
    }

    /// U-Net levels `K` (`patch.size = 2^K`); 0 for linear patch layers.
    pub fn unet_levels(&self) -> usize {
        match self.patch.kind {
            PatchKind::Unet => self.patch.channels.len(),
            PatchKind::Linear => 0,
        }
    }

    /// Checks every rule of `docs/checkpoint.md`; the error names the key.
    pub fn validate(&self) -> Result<()> {
        if !(CONFIG_FORMAT_VERSION_MIN..=CONFIG_FORMAT_VERSION).contains(&self.format_version) {
            return Err(invalid(
                "format_version",
                format!("{CONFIG_FORMAT_VERSION_MIN}..={CONFIG_FORMAT_VERSION}"),
                self.format_version,
            ));
        }
        self.validate_format_keys()?;
        let positive = [
            ("text.vocab_size", self.text.vocab_size),
            ("text.max_seq_len", self.text.max_seq_len),
            ("backbone.dim", self.backbone.dim),
            ("backbone.n_layers", self.backbone.n_layers),
            ("backbone.n_heads", self.backbone.n_heads),
            ("backbone.head_dim", self.backbone.head_dim),
            ("backbone.ffn_dim", self.backbone.ffn_dim),
            ("image.size", self.image.size),
            ("image.channels", self.image.channels),
            ("vae.latent_channels", self.vae.latent_channels),
            ("patch.size", self.patch.size),
            ("patch.timestep_freq_dim", self.patch.timestep_freq_dim),
            ("diffusion.train_timesteps", self.diffusion.train_timesteps),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, "a positive number", value));
            }
        }
        let b = &self.backbone;
        if b.dim != b.n_heads * b.head_dim {
            return Err(invalid(
                "backbone.dim",
                format!("n_heads * head_dim = {}", b.n_heads * b.head_dim),
                b.dim,
            ));
        }
        if !b.head_dim.is_multiple_of(2) {
            return Err(invalid(
                "backbone.head_dim",
                "an even number (RoPE)",
                b.head_dim,
            ));
        }
        if !(b.norm_eps > 0.0 && b.norm_eps.is_finite()) {
            return Err(invalid(
                "backbone.norm_eps",
                "a positive number",
                b.norm_eps,
            ));
        }
        if !(b.rope_theta > 1.0 && b.rope_theta.is_finite()) {
            return Err(invalid("backbone.rope_theta", "a number > 1", b.rope_theta));
        }
        if !self.patch.timestep_freq_dim.is_multiple_of(2) {
            return Err(invalid(
                "patch.timestep_freq_dim",
                "an even number",
                self.patch.timestep_freq_dim,
            ));
        }
        self.validate_special_tokens()?;
        self.validate_image()?;
        self.validate_diffusion()
    }

    /// Format-2 keys: required from format 2 on, refused in format 1.
    fn validate_format_keys(&self) -> Result<()> {
        let keys = [
            ("patch.position_embedding", self.patch.position_embedding),
            ("patch.timestep_tokens", self.patch.timestep_tokens),
        ];
        for (key, value) in keys {
            match (self.format_version >= 2, value) {
                (true, None) => return Err(invalid(key, "true or false (format 2)", "no key")),
                (false, Some(v)) => {
                    return Err(invalid(
                        "format_version",
                        format!("2 (`{key}` is a format-2 key)"),
                        format!("{} with `{key}` = {v}", self.format_version),
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn validate_special_tokens(&self) -> Result<()> {
        let all = self.special_tokens.all();
        for (name, id) in all {
            if id as usize >= self.text.vocab_size {
                return Err(invalid(
                    &format!("special_tokens.{name}"),
                    format!("an id below text.vocab_size = {}", self.text.vocab_size),
                    id,
                ));
            }
        }
        for (i, (name, id)) in all.iter().enumerate() {
            if let Some((other, _)) = all.iter().take(i).find(|(_, o)| o == id) {
                return Err(invalid(
                    &format!("special_tokens.{name}"),
                    format!("an id different from special_tokens.{other}"),
                    id,
                ));
            }
        }
        Ok(())
    }

    fn validate_image(&self) -> Result<()> {
        if self.vae.channels.is_empty() {
            return Err(invalid("vae.channels", "at least one entry", "[]"));
        }
        for (i, &c) in self.vae.channels.iter().enumerate() {
            if c == 0 || !c.is_multiple_of(NORM_GROUPS) {
                return Err(invalid(
                    &format!("vae.channels[{i}]"),
                    format!("a positive multiple of {NORM_GROUPS} (GroupNorm groups)"),
                    c,
                ));
            }
        }
        if !(self.vae.scale.is_finite() && self.vae.scale != 0.0) {
            return Err(invalid(
                "vae.scale",
                "a finite non-zero number",
                self.vae.scale,
            ));
        }
        if !self.vae.shift.is_finite() {
            return Err(invalid("vae.shift", "a finite number", self.vae.shift));
        }
        let factor = 1usize << self.vae_levels();
        if !self.image.size.is_multiple_of(factor) {
            return Err(invalid(
                "image.size",
                format!("a multiple of the VAE factor {factor} (2^(len(vae.channels)-1))"),
                self.image.size,
            ));
        }
        let latent = self.image.size / factor;
        if !latent.is_multiple_of(self.patch.size) {
            return Err(invalid(
                "patch.size",
                format!("a divisor of the latent size {latent}"),
                self.patch.size,
            ));
        }
        match self.patch.kind {
            PatchKind::Unet => {
                let p = self.patch.size;
                if p < 2 || !p.is_power_of_two() {
                    return Err(invalid(
                        "patch.size",
                        "a power of two >= 2 for unet patch layers",
                        p,
                    ));
                }
                let levels = p.trailing_zeros() as usize;
                if self.patch.channels.len() != levels {
                    return Err(invalid(
                        "patch.channels",
                        format!("{levels} entries (log2(patch.size))"),
                        self.patch.channels.len(),
                    ));
                }
                for (i, &c) in self.patch.channels.iter().enumerate() {
                    if c == 0 || !c.is_multiple_of(NORM_GROUPS) {
                        return Err(invalid(
                            &format!("patch.channels[{i}]"),
                            format!("a positive multiple of {NORM_GROUPS} (GroupNorm groups)"),
                            c,
                        ));
                    }
                }
            }
            PatchKind::Linear => {
                if !self.patch.channels.is_empty() {
                    return Err(invalid(
                        "patch.channels",
                        "no entries for linear patch layers",
                        self.patch.channels.len(),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_diffusion(&self) -> Result<()> {
        let d = &self.diffusion;
        let flow_schedule = d.schedule == Schedule::Flow;
        let flow_prediction = d.prediction == Prediction::Flow;
        if flow_schedule != flow_prediction {
            return Err(invalid(
                "diffusion.prediction",
                if flow_schedule {
                    "flow (the flow schedule predicts velocity)"
                } else {
                    "epsilon, v or x0 (flow prediction needs the flow schedule)"
                },
                format!("{:?}", d.prediction).to_lowercase(),
            ));
        }
        if d.steps == 0 || d.steps > 1000 {
            return Err(invalid("diffusion.steps", "1..=1000", d.steps));
        }
        if !(d.guidance >= 1.0 && d.guidance.is_finite()) {
            return Err(invalid("diffusion.guidance", "a number >= 1", d.guidance));
        }
        if let Some(ts) = &d.timesteps {
            let key = "diffusion.timesteps";
            let shown = format!("{ts:?}");
            if flow_schedule {
                return Err(invalid(
                    key,
                    "no key (the flow schedule has no timestep grid)",
                    shown,
                ));
            }
            crate::diffusion::schedule::check_grid(ts, d.steps, d.train_timesteps)
                .map_err(|expected| invalid(key, expected, shown))?;
        }
        Ok(())
    }

    /// Sizes derived from the configuration (assumes [`Config::validate`] passed).
    pub fn geometry(&self) -> Geometry {
        let latent_size = self.image.size >> self.vae_levels();
        let patch_grid = latent_size / self.patch.size.max(1);
        let skips = self
            .patch
            .channels
            .iter()
            .take(self.unet_levels())
            .enumerate()
            .map(|(i, &channels)| SkipShape {
                channels,
                size: latent_size >> i,
            })
            .collect();
        Geometry {
            image_size: self.image.size,
            image_channels: self.image.channels,
            latent_channels: self.vae.latent_channels,
            latent_size,
            patch_size: self.patch.size,
            patch_grid,
            num_patches: patch_grid * patch_grid,
            dim: self.backbone.dim,
            n_layers: self.backbone.n_layers,
            n_heads: self.backbone.n_heads,
            head_dim: self.backbone.head_dim,
            vocab_size: self.text.vocab_size,
            max_seq_len: self.text.max_seq_len,
            skips,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn tiny_json() -> String {
        r#"{
          "format_version": 1, "name": "tiny",
          "text": { "vocab_size": 64, "max_seq_len": 128 },
          "special_tokens": { "pad": 0, "bos": 1, "eos": 2, "boi": 3, "eoi": 4, "unk": 5 },
          "backbone": { "dim": 64, "n_layers": 2, "n_heads": 1, "head_dim": 64, "ffn_dim": 128,
                        "norm_eps": 1e-5, "rope_theta": 10000.0 },
          "image": { "size": 32, "channels": 3 },
          "vae": { "latent_channels": 4, "channels": [8, 16, 16], "scale": 1.0, "shift": 0.0 },
          "patch": { "kind": "unet", "size": 2, "channels": [16], "timestep_freq_dim": 64 },
          "diffusion": { "schedule": "cosine", "prediction": "epsilon", "train_timesteps": 1000,
                         "sampler": "ddim", "steps": 4, "guidance": 1.0, "guidance_distilled": false }
        }"#
        .to_string()
    }

    fn err_of(json: &str) -> String {
        match Config::from_json(json, "config.json") {
            Ok(_) => panic!("config was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn tiny_geometry() {
        let c = Config::from_json(&tiny_json(), "config.json").unwrap();
        let g = c.geometry();
        assert_eq!(g.latent_size, 8);
        assert_eq!(g.patch_grid, 4);
        assert_eq!(g.num_patches, 16);
        assert_eq!(
            g.skips,
            vec![SkipShape {
                channels: 16,
                size: 8
            }]
        );
    }

    #[test]
    fn sampling_grid_is_optional_and_checked() {
        let plain = Config::from_json(&tiny_json(), "config.json").unwrap();
        assert_eq!(plain.diffusion.grid(4), None);
        assert!(!serde_json::to_string(&plain)
            .unwrap()
            .contains("\"timesteps\""));
        let with = |ts: &str| {
            tiny_json().replace(
                "\"guidance_distilled\": false",
                &format!("\"guidance_distilled\": false, \"timesteps\": {ts}"),
            )
        };
        let c = Config::from_json(&with("[999, 937, 749, 499]"), "config.json").unwrap();
        assert_eq!(c.diffusion.grid(4), Some(&[999, 937, 749, 499][..]));
        assert_eq!(c.diffusion.grid(8), None);
        let back = serde_json::to_string(&c).unwrap();
        assert_eq!(Config::from_json(&back, "config.json").unwrap(), c);
        for bad in [
            "[999, 749, 499]",
            "[998, 937, 749, 499]",
            "[999, 749, 749, 499]",
        ] {
            let e = err_of(&with(bad));
            assert!(e.contains("diffusion.timesteps"), "{bad}: {e}");
        }
    }

    #[test]
    fn rejects_bad_values_naming_the_key() {
        let cases = [
            ("\"head_dim\": 64", "\"head_dim\": 32", "backbone.dim"),
            ("\"size\": 2,", "\"size\": 3,", "patch.size"),
            ("\"vocab_size\": 64", "\"vocab_size\": 5", "special_tokens."),
            ("\"unk\": 5", "\"unk\": 4", "special_tokens.unk"),
            (
                "\"channels\": [8, 16, 16]",
                "\"channels\": [8, 12, 16]",
                "vae.channels[1]",
            ),
            ("\"steps\": 4", "\"steps\": 0", "diffusion.steps"),
            (
                "\"prediction\": \"epsilon\"",
                "\"prediction\": \"flow\"",
                "diffusion.prediction",
            ),
        ];
        for (from, to, key) in cases {
            let json = tiny_json().replace(from, to);
            assert_ne!(json, tiny_json(), "{from}");
            let message = err_of(&json);
            assert!(message.contains(key), "{message} should name {key}");
        }
    }

    fn format_2(position: &str, timestep: &str) -> String {
        let keys = [
            ("position_embedding", position),
            ("timestep_tokens", timestep),
        ]
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!(", \"{k}\": {v}"))
        .collect::<String>();
        tiny_json()
            .replace("\"format_version\": 1", "\"format_version\": 2")
            .replace(
                "\"timestep_freq_dim\": 64 }",
                &format!("\"timestep_freq_dim\": 64{keys} }}"),
            )
    }

    #[test]
    fn format_1_reads_with_no_patch_conditioning() {
        let c = Config::from_json(&tiny_json(), "config.json").unwrap();
        assert!(!c.patch.has_position_embedding() && !c.patch.has_timestep_tokens());
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("position_embedding"), "{json}");
    }

    #[test]
    fn format_2_keys_are_required_there_and_refused_in_format_1() {
        let c = Config::from_json(&format_2("true", "false"), "config.json").unwrap();
        assert!(c.patch.has_position_embedding() && !c.patch.has_timestep_tokens());
        let back = Config::from_json(&serde_json::to_string(&c).unwrap(), "again").unwrap();
        assert_eq!(back, c);
        let message = err_of(&format_2("true", ""));
        assert!(message.contains("patch.timestep_tokens"), "{message}");
        let v1 = tiny_json().replace(
            "\"timestep_freq_dim\": 64 }",
            "\"timestep_freq_dim\": 64, \"position_embedding\": false }",
        );
        let message = err_of(&v1);
        assert!(
            message.contains("format_version") && message.contains("patch.position_embedding"),
            "{message}"
        );
        let message =
            err_of(&tiny_json().replace("\"format_version\": 1", "\"format_version\": 3"));
        assert!(message.contains("format_version"), "{message}");
    }

    #[test]
    fn rejects_unknown_keys() {
        let json = tiny_json().replace("\"rope_theta\"", "\"rope_thta\"");
        let message = err_of(&json);
        assert!(message.contains("rope_thta"), "{message}");
    }
}
