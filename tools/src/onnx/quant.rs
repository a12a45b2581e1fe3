//! INT8 quantization: which parts are quantized and the per-output-channel symmetric weights.

use crate::error::{Error, Result};

/// A group of layers that `--int8` can select.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantGroup {
    /// The backbone's linear layers (attention and SwiGLU projections) and the LM head.
    Backbone,
    /// Patch projections: linear patch layers, U-Net 1×1 projections, timestep MLP.
    Patch,
    /// The U-Net's convolutions and timestep projections.
    Unet,
    /// The VAE's convolutions.
    Vae,
}

/// The set of groups quantized in an INT8 bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int8Parts {
    pub backbone: bool,
    pub patch: bool,
    pub unet: bool,
    pub vae: bool,
}

impl Default for Int8Parts {
    /// Every group: patch/U-Net layers, the backbone's linear layers and the VAE's
    /// convolutions; norms, softmax and embeddings stay float.
    fn default() -> Self {
        Int8Parts {
            backbone: true,
            patch: true,
            unet: true,
            vae: true,
        }
    }
}

impl Int8Parts {
    /// Whether `group` is quantized.
    pub fn contains(self, group: QuantGroup) -> bool {
        match group {
            QuantGroup::Backbone => self.backbone,
            QuantGroup::Patch => self.patch,
            QuantGroup::Unet => self.unet,
            QuantGroup::Vae => self.vae,
        }
    }

    /// Names of the selected groups, comma-separated.
    pub fn describe(self) -> String {
        let all = [
            ("backbone", self.backbone),
            ("patch", self.patch),
            ("unet", self.unet),
            ("vae", self.vae),
        ];
        all.iter()
            .filter(|(_, on)| *on)
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl std::str::FromStr for Int8Parts {
    type Err = String;
    /// Parses `patch,unet,vae,backbone` (any subset, comma-separated).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = Int8Parts {
            backbone: false,
            patch: false,
            unet: false,
            vae: false,
        };
        for word in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "backbone" => parts.backbone = true,
                "patch" => parts.patch = true,
                "unet" => parts.unet = true,
                "vae" => parts.vae = true,
                other => {
                    return Err(format!(
                        "unknown INT8 part `{other}` (expected any of patch,unet,vae,backbone)"
                    ))
                }
            }
        }
        Ok(parts)
    }
}

/// Symmetric per-channel int8 quantization of `w`; `channel_of(i)` gives element `i`'s output
/// channel (`< channels`, else an error). Returns the int8 values and one scale per channel
/// (`w ≈ q · scale`).
pub fn quantize_per_channel(
    w: &[f32],
    channels: usize,
    channel_of: impl Fn(usize) -> usize,
) -> Result<(Vec<i8>, Vec<f32>)> {
    let channel = |i: usize| {
        let c = channel_of(i);
        (c < channels).then_some(c).ok_or_else(|| {
            Error::Invalid(format!(
                "int8 quantization: weight {i} maps to channel {c}, but there are {channels}"
            ))
        })
    };
    let mut max_abs = vec![0f32; channels];
    for (i, &v) in w.iter().enumerate() {
        if let Some(m) = max_abs.get_mut(channel(i)?) {
            *m = m.max(v.abs());
        }
    }
    let scales: Vec<f32> = max_abs
        .iter()
        .map(|&m| if m > 0.0 { m / 127.0 } else { 1.0 })
        .collect();
    let q = w
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let scale = scales.get(channel(i)?).copied().unwrap_or(1.0);
            Ok((v / scale).round().clamp(-127.0, 127.0) as i8)
        })
        .collect::<Result<_>>()?;
    Ok((q, scales))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_channel_roundtrip_error_is_below_half_a_step() {
        // Two channels with very different ranges: each keeps its own resolution.
        let w = [0.5f32, -1.0, 0.25, 0.001, -0.002, 0.0015];
        let (q, s) = quantize_per_channel(&w, 2, |i| i / 3).unwrap();
        assert_eq!(q[1], -127);
        assert_eq!(q[4], -127);
        for (i, &v) in w.iter().enumerate() {
            let back = f32::from(q[i]) * s[i / 3];
            assert!(
                (back - v).abs() <= s[i / 3] / 2.0 + 1e-9,
                "{i}: {back} vs {v}"
            );
        }
    }

    #[test]
    fn zero_channel_gets_unit_scale() {
        let (q, s) = quantize_per_channel(&[0.0, 0.0], 1, |_| 0).unwrap();
        assert_eq!(q, vec![0, 0]);
        assert_eq!(s, vec![1.0]);
    }

    #[test]
    fn a_channel_out_of_range_is_an_error() {
        let err = quantize_per_channel(&[1.0, 2.0, 3.0], 2, |i| i).unwrap_err();
        assert!(
            err.to_string().contains("weight 2 maps to channel 2"),
            "{err}"
        );
    }

    #[test]
    fn parses_parts() {
        let p: Int8Parts = "patch, vae".parse().unwrap();
        assert!(p.patch && p.vae && !p.unet && !p.backbone);
        assert!("patch,gpu".parse::<Int8Parts>().is_err());
        assert_eq!(Int8Parts::default().describe(), "backbone,patch,unet,vae");
    }
}
