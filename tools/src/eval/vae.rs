//! `transfusion eval BUNDLE --vae-roundtrip N`: the ceiling of the whole pipeline.
//!
//! Every generated image is a latent decoded by the bundle's `vae_decoder`, and every captioned
//! image is read through its `vae_encoder`. This renders `N` train-split dataset scenes
//! ([`VAE_SEED`]), passes each through the encoder and the decoder
//! ([`transfusion_sdk::Model::vae_roundtrip`]) and scores both the original render and the
//! round trip with the checker against the scene's full ground truth
//! ([`score::ground_truth`]). Originals pass at the checker's own ceiling (1.0 on renders); the
//! round trips' pass rate is the most a perfect transformer could reach through this VAE.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{json, Value};
use transfusion_sdk::{LoadOptions, Model, PartPrecisions, PrecisionChoice, RgbImage};

use super::breakdown::{Breakdown, Tally};
use super::checker::{Checker, Detection};
use super::progress_bar;
use super::score::{self, check};
use crate::error::{Error, Result};
use crate::shapes::caption::text;
use crate::shapes::render::render;
use crate::shapes::scene::{sample, Split};
use crate::shapes::spec::IMAGE_SIZE;

/// Seed of the train-split scenes of the round trip.
pub const VAE_SEED: u64 = 777;

/// How to run the round trip.
#[derive(Debug, Clone)]
pub struct VaeOptions {
    /// Scenes to render and pass through the VAE (at least 1).
    pub count: usize,
    pub precision: PrecisionChoice,
    pub threads: Option<usize>,
    /// Save every original and round trip here as `{index:03}_original.png`, `{index:03}_vae.png`.
    pub save_images: Option<PathBuf>,
    pub progress: bool,
}

/// One scene: its caption, both verdicts and what the checker found in the round trip.
#[derive(Debug, Clone, Serialize)]
pub struct VaeScene {
    pub index: u64,
    pub caption: String,
    pub original_pass: bool,
    pub roundtrip_pass: bool,
    /// PSNR of the round trip against the original (at 64×64), dB.
    pub psnr: f64,
    pub roundtrip_detections: Vec<Detection>,
}

/// The round trip's results.
#[derive(Debug, Clone, Serialize)]
pub struct VaeReport {
    pub bundle: String,
    /// The requested precision.
    pub precision: String,
    pub graph_precisions: BTreeMap<String, String>,
    pub model_image_size: usize,
    pub seed: u64,
    pub split: Split,
    pub original: Tally,
    pub roundtrip: Tally,
    pub original_breakdown: Breakdown,
    pub roundtrip_breakdown: Breakdown,
    /// Mean PSNR of the round trips, dB.
    pub mean_psnr: f64,
    pub scenes: Vec<VaeScene>,
    pub notes: Vec<String>,
}

/// PSNR of `b` against `a` (same size), in dB; 99 for identical images.
pub fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
    let n = a.data().len().max(1) as f64;
    let se: f64 = a
        .data()
        .iter()
        .zip(b.data())
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum();
    if se == 0.0 {
        return 99.0;
    }
    10.0 * (255.0f64.powi(2) / (se / n)).log10()
}

impl VaeReport {
    /// The JSON document of `eval --vae-roundtrip --json`.
    pub fn to_json(&self) -> Value {
        json!({
            "bundle": self.bundle,
            "diagnostic": "vae_roundtrip",
            "count": self.scenes.len(),
            "seed": self.seed,
            "split": self.split,
            "original_accuracy": self.original.accuracy(),
            "roundtrip_accuracy": self.roundtrip.accuracy(),
            "original": self.original,
            "roundtrip": self.roundtrip,
            "mean_psnr": self.mean_psnr,
            "by_size": {
                "original": self.original_breakdown.by_size,
                "roundtrip": self.roundtrip_breakdown.by_size,
            },
            "by_shape": {
                "original": self.original_breakdown.by_shape,
                "roundtrip": self.roundtrip_breakdown.by_shape,
            },
            "objects_by_size": {
                "original": self.original_breakdown.objects_by_size,
                "roundtrip": self.roundtrip_breakdown.objects_by_size,
            },
            "objects_by_shape": {
                "original": self.original_breakdown.objects_by_shape,
                "roundtrip": self.roundtrip_breakdown.objects_by_shape,
            },
            "detected_shapes": {
                "original": self.original_breakdown.detected_shapes,
                "roundtrip": self.roundtrip_breakdown.detected_shapes,
            },
            "precision": self.precision,
            "graph_precisions": self.graph_precisions,
            "model_image_size": self.model_image_size,
            "notes": self.notes,
            "scenes": self.scenes,
        })
    }

    /// A human-readable summary: both pass rates, then by size and shape side by side.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "bundle {} · VAE round trip of {} {} scenes (seed {}) · precision {} · mean PSNR \
             {:.2} dB\n",
            self.bundle,
            self.scenes.len(),
            self.split.name(),
            self.seed,
            self.precision,
            self.mean_psnr
        );
        for note in &self.notes {
            s.push_str(&format!("note: {note}\n"));
        }
        s.push_str(&format!(
            "{:<24} {:>15} {:>15}\n",
            "", "original", "round trip"
        ));
        s.push_str(&format!(
            "{:<24} {} {}\n",
            "scenes passing",
            self.original.text(),
            self.roundtrip.text()
        ));
        let (o, r) = (&self.original_breakdown, &self.roundtrip_breakdown);
        for (title, a, b) in [
            ("scenes by size", &o.by_size, &r.by_size),
            ("scenes by shape", &o.by_shape, &r.by_shape),
            (
                "objects found by size",
                &o.objects_by_size,
                &r.objects_by_size,
            ),
            (
                "objects found by shape",
                &o.objects_by_shape,
                &r.objects_by_shape,
            ),
        ] {
            s.push_str(&format!("{title}:\n"));
            for (key, t) in a {
                let rt = b.get(key).copied().unwrap_or_default();
                s.push_str(&format!("  {key:<22} {} {}\n", t.text(), rt.text()));
            }
        }
        for (name, b) in [("original", o), ("round trip", r)] {
            let seen: Vec<String> = b
                .detected_shapes
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            s.push_str(&format!("detected shapes, {name}: {}\n", seen.join(", ")));
        }
        s
    }
}

/// Runs the round trip on the bundle in `bundle` (see the module documentation).
pub fn vae_roundtrip(bundle: &Path, options: &VaeOptions) -> Result<VaeReport> {
    if options.count == 0 {
        return Err(Error::Invalid(
            "--vae-roundtrip needs at least 1 scene".into(),
        ));
    }
    let load = LoadOptions {
        precision: PartPrecisions::all(options.precision),
        threads: options.threads,
        ..LoadOptions::default()
    };
    let model = Model::load(bundle, &load)?;
    let size = model.manifest().geometry.image_size;
    let mut notes = Vec::new();
    if size != IMAGE_SIZE as usize {
        notes.push(format!(
            "the model's VAE works at {size}×{size}: renders are resized to it before encoding \
             and the round trips back to {IMAGE_SIZE}×{IMAGE_SIZE} before checking (part of \
             the loss is the resizing)"
        ));
    }
    if let Some(dir) = &options.save_images {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let checker = Checker::new();
    let (mut original, mut roundtrip) = (Tally::default(), Tally::default());
    let (mut original_breakdown, mut roundtrip_breakdown) =
        (Breakdown::default(), Breakdown::default());
    let mut scenes = Vec::with_capacity(options.count);
    let bar = progress_bar(options.progress, options.count, "vae")?;
    for index in 0..options.count as u64 {
        let s = sample(VAE_SEED, Split::Train, index);
        let expect = score::ground_truth(&s.scene);
        let image = RgbImage::new(IMAGE_SIZE, IMAGE_SIZE, render(&s.scene))?;
        let decoded = model.vae_roundtrip(&image)?;
        let decoded = if decoded.width() != IMAGE_SIZE || decoded.height() != IMAGE_SIZE {
            decoded.resize(IMAGE_SIZE, IMAGE_SIZE)?
        } else {
            decoded
        };
        if let Some(dir) = &options.save_images {
            image.save_png(dir.join(format!("{index:03}_original.png")))?;
            decoded.save_png(dir.join(format!("{index:03}_vae.png")))?;
        }
        let original_detections = checker.detect(&image)?;
        let original_pass = check(&expect, &original_detections);
        if !original_pass {
            log::warn!(
                "scene {index} (`{}`) fails the checker before the VAE: {original_detections:?}",
                text(&s.words)
            );
        }
        let detections = checker.detect(&decoded)?;
        let roundtrip_pass = check(&expect, &detections);
        original.add(original_pass);
        roundtrip.add(roundtrip_pass);
        original_breakdown.add(&expect, &original_detections, original_pass);
        roundtrip_breakdown.add(&expect, &detections, roundtrip_pass);
        scenes.push(VaeScene {
            index,
            caption: text(&s.words),
            original_pass,
            roundtrip_pass,
            psnr: psnr(&image, &decoded),
            roundtrip_detections: detections,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let mean_psnr = scenes.iter().map(|s| s.psnr).sum::<f64>() / scenes.len().max(1) as f64;
    Ok(VaeReport {
        bundle: bundle.display().to_string(),
        precision: match options.precision {
            PrecisionChoice::Auto => "auto".to_string(),
            PrecisionChoice::Exact(p) => p.name().to_string(),
        },
        graph_precisions: model
            .precisions()
            .iter()
            .map(|(g, p)| (g.to_string(), p.name().to_string()))
            .collect(),
        model_image_size: size,
        seed: VAE_SEED,
        split: Split::Train,
        original,
        roundtrip,
        original_breakdown,
        roundtrip_breakdown,
        mean_psnr,
        scenes,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psnr_is_infinite_like_for_equal_and_falls_with_error() {
        let a = RgbImage::filled(4, 4, [100, 100, 100]).unwrap();
        let b = RgbImage::filled(4, 4, [110, 100, 100]).unwrap();
        let c = RgbImage::filled(4, 4, [140, 100, 100]).unwrap();
        assert_eq!(psnr(&a, &a), 99.0);
        // MSE = 100 / 3 → 10·log10(65025·3/100) ≈ 32.9 dB.
        assert!((psnr(&a, &b) - 32.90).abs() < 0.01, "{}", psnr(&a, &b));
        assert!(psnr(&a, &c) < psnr(&a, &b));
    }
}
