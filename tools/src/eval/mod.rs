//! `transfusion eval`: GenEval-style evaluation of a bundle on the shapes domain.
//!
//! Each prompt ([`score::EvalPrompt`], default: [`score::default_prompts`], built from the
//! held-out colour–shape pairs) is generated with several seeds through the SDK
//! (`Model::generate` with `Request::Image`), and every image is scored by the deterministic
//! [`checker`]. Captioning is scored on held-out dataset images (`Request::Caption`): the
//! colour, shape and count words of the scene must appear in the generated text.

pub mod checker;
pub mod score;

use std::collections::BTreeMap;
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::{json, Value};
use transfusion_sdk::config::SamplerKind;
use transfusion_sdk::{
    Control, GenerateOptions, LoadOptions, Model, PartPrecisions, PrecisionChoice, Request,
    RgbImage, SamplingOptions,
};

use crate::error::{Error, Result};
use crate::shapes::render::render;
use crate::shapes::scene::{sample, SceneKind, Split};
use crate::shapes::spec::{COUNT_WORDS, IMAGE_SIZE};
use checker::{Checker, Detection};
use score::{check, Category, EvalPrompt};

/// Seed of the held-out dataset samples that captioning is scored on.
pub const CAPTION_SEED: u64 = 1234;

/// Most tokens of a generated caption.
const CAPTION_TOKENS: usize = 32;

/// How to evaluate.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub prompts: Vec<EvalPrompt>,
    /// Seeds per prompt (`0..seeds`).
    pub seeds: usize,
    /// Diffusion steps (default: the bundle's recommendation).
    pub steps: Option<usize>,
    /// Sampler (default: the bundle's recommendation).
    pub sampler: Option<SamplerKind>,
    /// Classifier-free guidance scale (default: the bundle's; 1 means no unconditional pass).
    pub guidance: Option<f32>,
    pub precision: PrecisionChoice,
    /// Held-out dataset images to caption (0: skip captioning).
    pub captions: usize,
    pub threads: Option<usize>,
    /// Save every generated image here as `{prompt:03}_{seed}.png`.
    pub save_images: Option<PathBuf>,
    pub progress: bool,
}

/// One generated image and its verdict.
#[derive(Debug, Clone, Serialize)]
pub struct ImageResult {
    pub category: Category,
    pub prompt: String,
    pub seed: u64,
    pub pass: bool,
    pub detections: Vec<Detection>,
}

/// One caption and its verdict.
#[derive(Debug, Clone, Serialize)]
pub struct CaptionResult {
    pub index: u64,
    pub reference: String,
    pub generated: String,
    pub colours: bool,
    pub shapes: bool,
    /// `None` when the scene is not a counting scene.
    pub count: Option<bool>,
    pub pass: bool,
}

/// The evaluation's results.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub bundle: String,
    pub steps: usize,
    pub sampler: SamplerKind,
    pub guidance: f32,
    /// The requested precision (`auto`, `fp32`, ...).
    pub precision: String,
    /// The precision each graph ran at.
    pub graph_precisions: BTreeMap<String, String>,
    pub model_image_size: usize,
    pub seeds: usize,
    /// `(correct, total)` per category present.
    pub categories: BTreeMap<Category, (usize, usize)>,
    pub images: Vec<ImageResult>,
    pub captions: Vec<CaptionResult>,
    pub notes: Vec<String>,
}

fn ratio(n: usize, d: usize) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

impl EvalReport {
    /// Accuracy of a category, if it has prompts.
    pub fn accuracy(&self, category: Category) -> Option<f64> {
        self.categories
            .get(&category)
            .and_then(|&(n, d)| ratio(n, d))
    }

    /// Mean of the category accuracies (GenEval's overall score).
    pub fn overall(&self) -> f64 {
        let scores: Vec<f64> = Category::ALL
            .iter()
            .filter_map(|&c| self.accuracy(c))
            .collect();
        ratio(1, scores.len()).map_or(0.0, |inv| scores.iter().sum::<f64>() * inv)
    }

    /// Fraction of captions with every attribute right (`None` when none were scored).
    pub fn caption_accuracy(&self) -> Option<f64> {
        ratio(
            self.captions.iter().filter(|c| c.pass).count(),
            self.captions.len(),
        )
    }

    /// The JSON document of `eval --json`: `overall`, one key per category, `caption_accuracy`,
    /// `steps`, `precision`, and the details.
    pub fn to_json(&self) -> Value {
        let mut doc = json!({
            "bundle": self.bundle,
            "overall": self.overall(),
            "caption_accuracy": self.caption_accuracy(),
            "caption_attributes": {
                "colours": ratio(self.captions.iter().filter(|c| c.colours).count(), self.captions.len()),
                "shapes": ratio(self.captions.iter().filter(|c| c.shapes).count(), self.captions.len()),
                "counts": ratio(
                    self.captions.iter().filter(|c| c.count == Some(true)).count(),
                    self.captions.iter().filter(|c| c.count.is_some()).count()),
            },
            "steps": self.steps,
            "sampler": self.sampler,
            "guidance": self.guidance,
            "precision": self.precision,
            "graph_precisions": self.graph_precisions,
            "model_image_size": self.model_image_size,
            "seeds": self.seeds,
            "counts": self.categories.iter()
                .map(|(c, &(n, d))| (c.name().to_string(), json!({"correct": n, "total": d})))
                .collect::<serde_json::Map<String, Value>>(),
            "notes": self.notes,
            "images": self.images,
            "captions": self.captions,
        });
        if let Some(map) = doc.as_object_mut() {
            for c in Category::ALL {
                map.insert(c.name().to_string(), json!(self.accuracy(c)));
            }
        }
        doc
    }

    /// A human-readable summary.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "bundle {} · {} steps · sampler {:?} · guidance {} · precision {} · {} seeds\n",
            self.bundle, self.steps, self.sampler, self.guidance, self.precision, self.seeds
        );
        for note in &self.notes {
            s.push_str(&format!("note: {note}\n"));
        }
        s.push_str(&format!(
            "{:<20} {:>9} {:>8}\n",
            "category", "correct", "acc"
        ));
        for (c, &(n, d)) in &self.categories {
            let acc = ratio(n, d).unwrap_or(0.0);
            s.push_str(&format!(
                "{:<20} {:>4}/{:<4} {:>8.3}\n",
                c.name(),
                n,
                d,
                acc
            ));
        }
        s.push_str(&format!(
            "{:<20} {:>9} {:>8.3}\n",
            "overall",
            "",
            self.overall()
        ));
        match self.caption_accuracy() {
            Some(a) => s.push_str(&format!(
                "{:<20} {:>4}/{:<4} {:>8.3}\n",
                "caption_accuracy",
                self.captions.iter().filter(|c| c.pass).count(),
                self.captions.len(),
                a
            )),
            None => s.push_str("caption_accuracy     not measured\n"),
        }
        s
    }
}

/// Lowercase words of a text (letters and digits; punctuation splits).
fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Scores a generated caption against sample `index` of the held-out captioning set.
fn score_caption(index: u64, reference: String, generated: String) -> CaptionResult {
    let s = sample(CAPTION_SEED, Split::HeldOut, index);
    let got = words(&generated);
    let has = |w: &str| got.iter().any(|g| g == w);
    let colours = s.scene.objects.iter().all(|o| has(o.colour.word()));
    let shapes = s
        .scene
        .objects
        .iter()
        .all(|o| has(o.shape.word()) || has(o.shape.plural()));
    let count = (s.scene.kind == SceneKind::Count).then(|| {
        COUNT_WORDS
            .get(s.scene.objects.len().saturating_sub(1))
            .is_some_and(|w| has(w))
    });
    CaptionResult {
        index,
        reference,
        generated,
        colours,
        shapes,
        count,
        pass: colours && shapes && count != Some(false),
    }
}

fn progress_bar(show: bool, len: usize, prefix: &'static str) -> Result<ProgressBar> {
    if !show {
        return Ok(ProgressBar::hidden());
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {msg}")
            .map_err(|e| Error::Invalid(e.to_string()))?,
    );
    bar.set_prefix(prefix);
    Ok(bar)
}

/// Evaluates the bundle in `bundle` (see the module documentation).
pub fn evaluate(bundle: &std::path::Path, options: &EvalOptions) -> Result<EvalReport> {
    if options.seeds == 0 {
        return Err(Error::Invalid("--seeds must be at least 1".into()));
    }
    let load = LoadOptions {
        precision: PartPrecisions::all(options.precision),
        threads: options.threads,
        ..LoadOptions::default()
    };
    let model = Model::load(bundle, &load)?;
    let manifest = model.manifest();
    let size = manifest.geometry.image_size;
    let steps = options.steps.unwrap_or(manifest.diffusion.steps);
    let sampler = options.sampler.unwrap_or(manifest.diffusion.sampler);
    let guidance = options.guidance.unwrap_or(manifest.diffusion.guidance);
    let mut notes = Vec::new();
    if size != IMAGE_SIZE as usize {
        notes.push(format!(
            "the model makes {size}×{size} images; they are resized to {IMAGE_SIZE}×{IMAGE_SIZE} \
             (RgbImage::resize) before checking"
        ));
    }
    if let Some(dir) = &options.save_images {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let checker = Checker::new();
    let mut categories: BTreeMap<Category, (usize, usize)> = BTreeMap::new();
    let mut images = Vec::new();
    let bar = progress_bar(
        options.progress,
        options.prompts.len() * options.seeds,
        "images",
    )?;
    for (k, p) in options.prompts.iter().enumerate() {
        for seed in 0..options.seeds as u64 {
            let generate = GenerateOptions {
                seed,
                max_tokens: 0,
                steps: Some(steps),
                sampler: Some(sampler),
                guidance: Some(guidance),
                max_images: 1,
                previews: false,
                ..GenerateOptions::default()
            };
            let out = model.generate(Request::Image { prompt: &p.prompt }, &generate, |_| {
                Control::Continue
            })?;
            let image: &RgbImage = out.images().first().copied().ok_or_else(|| {
                Error::Invalid(format!("no image generated for prompt `{}`", p.prompt))
            })?;
            if let Some(dir) = &options.save_images {
                image.save_png(dir.join(format!("{k:03}_{seed}.png")))?;
            }
            let detections = checker.detect(image)?;
            let pass = check(&p.expect, &detections);
            let entry = categories.entry(p.category).or_insert((0, 0));
            entry.0 += usize::from(pass);
            entry.1 += 1;
            images.push(ImageResult {
                category: p.category,
                prompt: p.prompt.clone(),
                seed,
                pass,
                detections,
            });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let mut captions = Vec::new();
    let bar = progress_bar(options.progress, options.captions, "captions")?;
    for index in 0..options.captions as u64 {
        let s = sample(CAPTION_SEED, Split::HeldOut, index);
        let image = RgbImage::new(IMAGE_SIZE, IMAGE_SIZE, render(&s.scene))?;
        let generate = GenerateOptions {
            seed: index,
            max_tokens: CAPTION_TOKENS,
            sampling: SamplingOptions::greedy(),
            max_images: 0,
            previews: false,
            ..GenerateOptions::default()
        };
        let out = model.generate(Request::Caption { image: &image }, &generate, |_| {
            Control::Continue
        })?;
        let reference = crate::shapes::caption::text(&s.words);
        captions.push(score_caption(index, reference, out.text()));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(EvalReport {
        bundle: bundle.display().to_string(),
        steps,
        sampler,
        guidance,
        precision: match options.precision {
            PrecisionChoice::Auto => "auto".to_string(),
            PrecisionChoice::Exact(p) => p.name().to_string(),
        },
        graph_precisions: model
            .precisions()
            .into_iter()
            .map(|(g, p)| (g.to_string(), p.name().to_string()))
            .collect(),
        model_image_size: size,
        seeds: options.seeds,
        categories,
        images,
        captions,
        notes,
    })
}
