//! The exact tensor list of a configuration (`docs/checkpoint.md`, "Tensor names") and the
//! initialisation rule of each tensor.
//!
//! [`tensor_specs`] is the single place that knows which weights a model has: `init` creates
//! them, `Checkpoint::load` verifies a file against them, the converter reads them by name.

use std::fmt;

use transfusion_sdk::config::{Config, PatchKind};

/// Which part of the model owns a tensor (the first component of its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    /// Token embedding and LM head.
    Text,
    /// Decoder layers and the final norm.
    Backbone,
    /// Timestep embedding MLP.
    Timestep,
    /// Patch layers (U-Net or linear) between latents and the backbone.
    Patch,
    /// Image autoencoder.
    Vae,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Text => "text",
            Part::Backbone => "backbone",
            Part::Timestep => "timestep",
            Part::Patch => "patch",
            Part::Vae => "vae",
        })
    }
}

/// Name, shape and owner of one weight tensor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorSpec {
    /// Name in `model.safetensors`, e.g. `backbone.layers.0.attn.q.weight`.
    pub name: String,
    /// Expected shape (PyTorch layout).
    pub shape: Vec<usize>,
    /// Part of the model that owns it.
    pub part: Part,
}

impl TensorSpec {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Collects specs in order for one part.
struct Specs {
    part: Part,
    out: Vec<TensorSpec>,
}

impl Specs {
    fn push(&mut self, name: impl Into<String>, shape: &[usize]) {
        self.out.push(TensorSpec {
            name: name.into(),
            shape: shape.to_vec(),
            part: self.part,
        });
    }

    /// `P.weight[out, in, k, k]`, `P.bias[out]`.
    fn conv(&mut self, p: &str, cin: usize, cout: usize, k: usize) {
        self.push(format!("{p}.weight"), &[cout, cin, k, k]);
        self.push(format!("{p}.bias"), &[cout]);
    }

    /// `P.weight[c]`, `P.bias[c]` of a GroupNorm.
    fn group_norm(&mut self, p: &str, c: usize) {
        self.push(format!("{p}.weight"), &[c]);
        self.push(format!("{p}.bias"), &[c]);
    }

    /// A ResBlock `P(cin → cout)`; `temb_dim` is the timestep embedding width when it has one.
    fn res_block(&mut self, p: &str, cin: usize, cout: usize, temb_dim: Option<usize>) {
        self.group_norm(&format!("{p}.norm1"), cin);
        self.conv(&format!("{p}.conv1"), cin, cout, 3);
        if let Some(d) = temb_dim {
            self.push(format!("{p}.temb_proj.weight"), &[cout, d]);
            self.push(format!("{p}.temb_proj.bias"), &[cout]);
        }
        self.group_norm(&format!("{p}.norm2"), cout);
        self.conv(&format!("{p}.conv2"), cout, cout, 3);
        if cin != cout {
            self.conv(&format!("{p}.skip"), cin, cout, 1);
        }
    }
}

/// Every tensor of the model described by `config` (assumed valid), in a fixed order: text,
/// backbone (layer by layer), timestep, patch layers, VAE encoder then decoder, each in the
/// order its layers run.
pub fn tensor_specs(config: &Config) -> Vec<TensorSpec> {
    let d = config.backbone.dim;
    let v = config.text.vocab_size;
    let f = config.backbone.ffn_dim;
    let hd = config.backbone.n_heads * config.backbone.head_dim;
    let mut s = Specs {
        part: Part::Text,
        out: Vec::new(),
    };
    s.push("text.embed.weight", &[v, d]);
    s.push("text.lm_head.weight", &[v, d]);

    s.part = Part::Backbone;
    for l in 0..config.backbone.n_layers {
        let p = format!("backbone.layers.{l}");
        s.push(format!("{p}.attn_norm.weight"), &[d]);
        for proj in ["q", "k", "v"] {
            s.push(format!("{p}.attn.{proj}.weight"), &[hd, d]);
        }
        s.push(format!("{p}.attn.o.weight"), &[d, hd]);
        s.push(format!("{p}.ffn_norm.weight"), &[d]);
        s.push(format!("{p}.ffn.gate.weight"), &[f, d]);
        s.push(format!("{p}.ffn.up.weight"), &[f, d]);
        s.push(format!("{p}.ffn.down.weight"), &[d, f]);
    }
    s.push("backbone.norm.weight", &[d]);

    s.part = Part::Timestep;
    let ft = config.patch.timestep_freq_dim;
    s.push("timestep.linear1.weight", &[d, ft]);
    s.push("timestep.linear1.bias", &[d]);
    s.push("timestep.linear2.weight", &[d, d]);
    s.push("timestep.linear2.bias", &[d]);

    s.part = Part::Patch;
    patch_specs(config, &mut s);
    s.part = Part::Vae;
    vae_specs(config, &mut s);
    s.out
}

fn patch_specs(config: &Config, s: &mut Specs) {
    let d = config.backbone.dim;
    let c = config.vae.latent_channels;
    match config.patch.kind {
        PatchKind::Linear => {
            let p = config.patch.size;
            let features = c * p * p;
            s.push("patch.in_proj.weight", &[d, features]);
            s.push("patch.in_proj.bias", &[d]);
            s.push("patch.out_proj.weight", &[features, d]);
            s.push("patch.out_proj.bias", &[features]);
        }
        PatchKind::Unet => {
            let u = &config.patch.channels;
            let (Some(&first), Some(&last)) = (u.first(), u.last()) else {
                return; // invalid configuration: no U-Net levels
            };
            let temb = Some(d);
            s.conv("patch.unet.conv_in", c, first, 3);
            let mut prev = first;
            for (i, &ui) in u.iter().enumerate() {
                s.res_block(&format!("patch.unet.down.{i}.res"), prev, ui, temb);
                s.conv(&format!("patch.unet.down.{i}.downsample"), ui, ui, 3);
                prev = ui;
            }
            s.res_block("patch.unet.mid_in", last, last, temb);
            s.conv("patch.unet.proj_in", last, d, 1);
            s.conv("patch.unet.proj_out", d, last, 1);
            s.res_block("patch.unet.mid_out", last, last, temb);
            let mut entering = last;
            for (i, &ui) in u.iter().enumerate().rev() {
                s.conv(
                    &format!("patch.unet.up.{i}.upsample"),
                    entering,
                    entering,
                    3,
                );
                s.res_block(&format!("patch.unet.up.{i}.res"), entering + ui, ui, temb);
                entering = ui;
            }
            s.group_norm("patch.unet.norm_out", first);
            s.conv("patch.unet.conv_out", first, c, 3);
        }
    }
    // Format-2 conditioning of the patch vectors, after the layers (PyTorch's order).
    if config.patch.has_position_embedding() {
        s.push("patch.pos_embed", &[config.geometry().num_patches, d]);
    }
    if config.patch.has_timestep_tokens() {
        s.push("patch.time_proj.weight", &[d, d]);
        s.push("patch.time_proj.bias", &[d]);
    }
}

fn vae_specs(config: &Config, s: &mut Specs) {
    let ch = &config.vae.channels;
    let (Some(&c0), Some(&cl)) = (ch.first(), ch.last()) else {
        return; // invalid configuration: no VAE levels
    };
    let latent = config.vae.latent_channels;
    let rgb = config.image.channels;
    let levels = ch.len() - 1;

    s.conv("vae.encoder.conv_in", rgb, c0, 3);
    let mut prev = c0;
    for (i, &ci) in ch.iter().enumerate() {
        s.res_block(&format!("vae.encoder.down.{i}.res"), prev, ci, None);
        if i < levels {
            s.conv(&format!("vae.encoder.down.{i}.downsample"), ci, ci, 3);
        }
        prev = ci;
    }
    s.res_block("vae.encoder.mid", cl, cl, None);
    s.group_norm("vae.encoder.norm_out", cl);
    s.conv("vae.encoder.conv_out", cl, 2 * latent, 3);

    s.conv("vae.decoder.conv_in", latent, cl, 3);
    s.res_block("vae.decoder.mid", cl, cl, None);
    let mut entering = cl;
    for (j, &cj) in ch.iter().enumerate().rev() {
        s.res_block(&format!("vae.decoder.up.{j}.res"), entering, cj, None);
        if j > 0 {
            s.conv(&format!("vae.decoder.up.{j}.upsample"), cj, cj, 3);
        }
        entering = cj;
    }
    s.group_norm("vae.decoder.norm_out", c0);
    s.conv("vae.decoder.conv_out", c0, rgb, 3);
}

/// How a freshly initialised tensor is filled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// All zeros (biases).
    Zeros,
    /// All ones (norm scales).
    Ones,
    /// Independent `N(0, std²)` samples.
    Normal { std: f32 },
}

/// Standard deviation of linear and embedding weights (GPT-2 / Llama convention).
pub const LINEAR_STD: f32 = 0.02;

/// The initialisation of `spec` in a model with `n_layers` decoder layers:
/// biases 0; RMSNorm and GroupNorm weights 1; convolutions `N(0, 1/fan_in)` (fan_in =
/// `in·kh·kw`, keeps activations' scale through the conv stacks); linear and embedding
/// weights `N(0, 0.02²)`, with the residual output projections `attn.o` and `ffn.down`
/// scaled by `1/√(2·n_layers)` so the residual stream does not grow with depth.
pub fn init_rule(spec: &TensorSpec, n_layers: usize) -> Init {
    let last = spec.name.rsplit('.').nth(1).unwrap_or("");
    if spec.name.ends_with(".bias") {
        Init::Zeros
    } else if last.contains("norm") {
        Init::Ones
    } else if spec.shape.len() == 4 {
        let fan_in: usize = spec.shape.iter().skip(1).product();
        Init::Normal {
            std: (1.0 / fan_in.max(1) as f64).sqrt() as f32,
        }
    } else if spec.name.ends_with(".attn.o.weight") || spec.name.ends_with(".ffn.down.weight") {
        Init::Normal {
            std: LINEAR_STD / ((2 * n_layers.max(1)) as f32).sqrt(),
        }
    } else {
        Init::Normal { std: LINEAR_STD }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::preset;
    use std::collections::HashMap;

    fn by_name(config: &Config) -> HashMap<String, TensorSpec> {
        let specs = tensor_specs(config);
        let map: HashMap<_, _> = specs.iter().map(|s| (s.name.clone(), s.clone())).collect();
        assert_eq!(map.len(), specs.len(), "duplicate tensor names");
        map
    }

    fn shape(map: &HashMap<String, TensorSpec>, name: &str) -> Vec<usize> {
        map.get(name)
            .unwrap_or_else(|| panic!("no {name}"))
            .shape
            .clone()
    }

    #[test]
    fn tiny_tensor_list() {
        let config = preset("tiny").unwrap();
        let v = config.text.vocab_size;
        let m = by_name(&config);
        assert_eq!(shape(&m, "text.embed.weight"), [v, 64]);
        assert_eq!(shape(&m, "backbone.layers.1.attn.o.weight"), [64, 64]);
        assert_eq!(shape(&m, "backbone.layers.1.ffn.down.weight"), [64, 128]);
        assert_eq!(shape(&m, "timestep.linear1.weight"), [64, 64]);
        assert_eq!(shape(&m, "patch.unet.conv_in.weight"), [16, 4, 3, 3]);
        assert_eq!(
            shape(&m, "patch.unet.down.0.res.temb_proj.weight"),
            [16, 64]
        );
        assert_eq!(shape(&m, "patch.unet.proj_in.weight"), [64, 16, 1, 1]);
        assert_eq!(
            shape(&m, "patch.unet.up.0.res.conv1.weight"),
            [16, 32, 3, 3]
        );
        assert_eq!(shape(&m, "patch.unet.up.0.res.skip.weight"), [16, 32, 1, 1]);
        assert_eq!(
            shape(&m, "vae.encoder.down.1.res.skip.weight"),
            [16, 8, 1, 1]
        );
        assert_eq!(shape(&m, "vae.encoder.conv_out.weight"), [8, 16, 3, 3]);
        assert_eq!(shape(&m, "vae.decoder.up.0.res.skip.bias"), [8]);
        assert_eq!(shape(&m, "vae.decoder.conv_out.weight"), [3, 8, 3, 3]);
        for absent in [
            "patch.unet.down.0.res.skip.weight",
            "vae.encoder.down.2.downsample.weight",
            "vae.decoder.up.0.upsample.weight",
            "vae.encoder.mid.temb_proj.weight",
            "patch.in_proj.weight",
        ] {
            assert!(!m.contains_key(absent), "{absent}");
        }
        // text 2 + layers 2·9 + norm 1 + timestep 4
        // U-Net: conv_in 2, down.0 (res with temb, no skip 10 + downsample 2), mid_in 10,
        // proj_in 2, proj_out 2, mid_out 10, up.0 (upsample 2 + res with skip 12), norm/conv_out 4
        // VAE encoder: conv_in 2, res 8 + ds 2, res 10 + ds 2, res 8, mid 8, norm_out 2, conv_out 2
        // VAE decoder: conv_in 2, mid 8, up.2 8 + 2, up.1 8 + 2, up.0 10, norm_out 2, conv_out 2
        // Format 2 (the presets): pos_embed 1, time_proj 2.
        let unet = 2 + 12 + 10 + 2 + 2 + 10 + 14 + 4;
        let vae = (2 + 10 + 12 + 8 + 8 + 2 + 2) + (2 + 8 + 10 + 10 + 10 + 2 + 2);
        assert_eq!(m.len(), 2 + 18 + 1 + 4 + unet + 3 + vae);
        assert_eq!(shape(&m, "patch.pos_embed"), [16, 64]);
        assert_eq!(shape(&m, "patch.time_proj.weight"), [64, 64]);
        assert_eq!(shape(&m, "patch.time_proj.bias"), [64]);
    }

    #[test]
    fn shapes64_unet_up_path() {
        let m = by_name(&preset("shapes64").unwrap());
        assert_eq!(
            shape(&m, "patch.unet.down.1.res.skip.weight"),
            [64, 32, 1, 1]
        );
        assert_eq!(shape(&m, "patch.unet.up.1.upsample.weight"), [64, 64, 3, 3]);
        assert_eq!(
            shape(&m, "patch.unet.up.1.res.conv1.weight"),
            [64, 128, 3, 3]
        );
        assert_eq!(shape(&m, "patch.unet.up.0.upsample.weight"), [64, 64, 3, 3]);
        assert_eq!(
            shape(&m, "patch.unet.up.0.res.conv1.weight"),
            [32, 96, 3, 3]
        );
        assert_eq!(shape(&m, "patch.unet.norm_out.weight"), [32]);
        assert_eq!(
            shape(&m, "vae.decoder.up.2.res.conv1.weight"),
            [64, 64, 3, 3]
        );
        assert_eq!(
            shape(&m, "vae.decoder.up.1.res.skip.weight"),
            [32, 64, 1, 1]
        );
        assert_eq!(
            shape(&m, "vae.decoder.up.1.upsample.weight"),
            [32, 32, 3, 3]
        );
    }

    #[test]
    fn linear_patch_layers() {
        let mut config = preset("tiny").unwrap();
        config.patch.kind = PatchKind::Linear;
        config.patch.channels.clear();
        config.validate().unwrap();
        let m = by_name(&config);
        assert_eq!(shape(&m, "patch.in_proj.weight"), [64, 16]);
        assert_eq!(shape(&m, "patch.out_proj.bias"), [16]);
        // in_proj, out_proj 4 + format 2's pos_embed 1, time_proj 2.
        assert_eq!(m.values().filter(|s| s.part == Part::Patch).count(), 7);
        assert!(!m.keys().any(|k| k.starts_with("patch.unet")));
    }

    #[test]
    fn format_1_has_no_patch_conditioning_tensors() {
        let mut config = preset("tiny").unwrap();
        config.format_version = 1;
        config.patch.position_embedding = None;
        config.patch.timestep_tokens = None;
        config.validate().unwrap();
        let m = by_name(&config);
        assert!(!m.contains_key("patch.pos_embed"));
        assert!(!m.keys().any(|k| k.starts_with("patch.time_proj")));
    }

    #[test]
    fn parts_match_names_and_paper_size() {
        let config = preset("paper-160m").unwrap();
        let specs = tensor_specs(&config);
        for spec in &specs {
            assert!(
                spec.name.starts_with(&format!("{}.", spec.part)),
                "{}",
                spec.name
            );
        }
        let params: usize = specs.iter().map(TensorSpec::numel).sum();
        assert!((130_000_000..230_000_000).contains(&params), "{params}");
    }

    #[test]
    fn init_rules() {
        let config = preset("tiny").unwrap();
        let m = by_name(&config);
        let rule = |name: &str| init_rule(&m[name], config.backbone.n_layers);
        assert_eq!(rule("backbone.norm.weight"), Init::Ones);
        assert_eq!(rule("patch.unet.down.0.res.norm1.weight"), Init::Ones);
        assert_eq!(rule("patch.unet.norm_out.bias"), Init::Zeros);
        assert_eq!(rule("text.embed.weight"), Init::Normal { std: 0.02 });
        assert_eq!(
            rule("backbone.layers.0.attn.o.weight"),
            Init::Normal { std: 0.01 }
        );
        assert_eq!(
            rule("vae.decoder.conv_out.weight"),
            Init::Normal {
                std: (1.0f64 / 72.0).sqrt() as f32
            }
        );
    }
}
