//! `transfusion eval`: GenEval-style evaluation of a bundle on the shapes domain.
//!
//! Each prompt ([`score::EvalPrompt`], default: [`score::default_prompts`], built from the
//! held-out colour–shape pairs) is generated with several seeds through the SDK
//! (`Model::generate` with `Request::Image`), and every image is scored by the deterministic
//! [`checker`]. Captioning is scored on held-out dataset images and as many train-split ones
//! (`Request::Caption`): the colour, shape and count words of the scene must appear in the
//! generated text. Pass rates are also broken down by size and shape ([`breakdown`]).
//!
//! Diagnostics beside it: [`vae::vae_roundtrip`] (the checker on dataset scenes passed through
//! the bundle's VAE: the ceiling of the pipeline) and [`images::score_images`] (the checker on
//! PNGs made elsewhere, with an `index.jsonl`).

pub mod breakdown;
pub mod checker;
pub mod images;
pub mod score;
pub mod vae;

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
use crate::shapes::scene::{sample, Scene, SceneKind, Split};
use crate::shapes::spec::{Shape, COUNT_WORDS, IMAGE_SIZE};
use breakdown::{shape_words, Breakdown, Tally};
use checker::{Checker, Detection};
use score::{check, Category, EvalPrompt, PromptSet};

/// Seed of the held-out dataset samples that captioning is scored on.
pub const CAPTION_SEED: u64 = 1234;

/// Seed of the train-split (seen-pair) dataset samples that captioning is also scored on. Not
/// the training file's seed (0): new scenes, but only colour–shape pairs the model was taught.
pub const CAPTION_SEED_SEEN: u64 = 4321;

/// Most tokens of a generated caption.
const CAPTION_TOKENS: usize = 32;

/// How to evaluate.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub prompts: Vec<EvalPrompt>,
    /// The set `prompts` were built from, for the report (`None`: read from `prompts_file`).
    pub prompt_set: Option<PromptSet>,
    /// The prompts file `prompts` were read from, for the report.
    pub prompts_file: Option<PathBuf>,
    /// Seeds per prompt (`0..seeds`).
    pub seeds: usize,
    /// Diffusion steps (default: the bundle's recommendation).
    pub steps: Option<usize>,
    /// Sampler (default: the bundle's recommendation).
    pub sampler: Option<SamplerKind>,
    /// Classifier-free guidance scale (default: the bundle's; 1 means no unconditional pass).
    pub guidance: Option<f32>,
    pub precision: PrecisionChoice,
    /// Held-out dataset images to caption, and as many train-split ones (0: skip captioning).
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
    /// The shape of every object of the reference scene, in scene order.
    pub object_shapes: Vec<Shape>,
    /// Per object of the reference scene: whether its shape word (singular or plural) appears.
    pub shapes_named: Vec<bool>,
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
    /// `heldout`, `seen`, or `None` for a prompts file.
    pub prompt_set: Option<PromptSet>,
    pub prompts_file: Option<PathBuf>,
    /// `(correct, total)` per category present.
    pub categories: BTreeMap<Category, (usize, usize)>,
    /// Image pass rates by size and shape.
    pub breakdown: Breakdown,
    pub images: Vec<ImageResult>,
    /// Captions of held-out dataset images ([`CAPTION_SEED`]).
    pub captions: Vec<CaptionResult>,
    /// Captions of train-split dataset images ([`CAPTION_SEED_SEEN`]).
    pub captions_seen: Vec<CaptionResult>,
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

    /// Fraction of held-out captions with every attribute right (`None` when none were scored).
    pub fn caption_accuracy(&self) -> Option<f64> {
        Tally::of(self.captions.iter().map(|c| c.pass)).accuracy()
    }

    /// Fraction of train-split captions with every attribute right.
    pub fn caption_accuracy_seen(&self) -> Option<f64> {
        Tally::of(self.captions_seen.iter().map(|c| c.pass)).accuracy()
    }

    /// The name of the prompt set in the report: `heldout`, `seen` or `file`.
    pub fn prompt_set_name(&self) -> &'static str {
        self.prompt_set.map_or("file", PromptSet::name)
    }

    /// The JSON document of `eval --json`: `overall`, one key per category, `caption_accuracy`,
    /// `caption_accuracy_seen`, the breakdowns, `steps`, `precision`, and the details.
    pub fn to_json(&self) -> Value {
        let mut doc = json!({
            "bundle": self.bundle,
            "prompt_set": self.prompt_set_name(),
            "prompts_file": self.prompts_file,
            "overall": self.overall(),
            "caption_accuracy": self.caption_accuracy(),
            "caption_accuracy_seen": self.caption_accuracy_seen(),
            "caption_attributes": caption_attributes(&self.captions),
            "caption_attributes_seen": caption_attributes(&self.captions_seen),
            "caption_by_shape": caption_by_shape(&self.captions),
            "caption_by_shape_seen": caption_by_shape(&self.captions_seen),
            "caption_shape_named": caption_shape_named(&self.captions),
            "caption_shape_named_seen": caption_shape_named(&self.captions_seen),
            "by_size": self.breakdown.by_size,
            "by_shape": self.breakdown.by_shape,
            "objects_by_size": self.breakdown.objects_by_size,
            "objects_by_shape": self.breakdown.objects_by_shape,
            "detected_shapes": self.breakdown.detected_shapes,
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
            "captions_seen": self.captions_seen,
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
            "bundle {} · {} steps · sampler {:?} · guidance {} · precision {} · {} seeds · \
             prompts {}\n",
            self.bundle,
            self.steps,
            self.sampler,
            self.guidance,
            self.precision,
            self.seeds,
            match &self.prompts_file {
                Some(path) => path.display().to_string(),
                None => self.prompt_set_name().to_string(),
            }
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
        s.push_str(&self.breakdown.text(""));
        for (name, captions) in [
            ("caption_accuracy", &self.captions),
            ("caption_accuracy_seen", &self.captions_seen),
        ] {
            let t = Tally::of(captions.iter().map(|c| c.pass));
            match t.accuracy() {
                Some(a) => s.push_str(&format!(
                    "{name:<21} {:>4}/{:<4} {a:>7.3}\n",
                    t.pass, t.total
                )),
                None => s.push_str(&format!("{name:<21} not measured\n")),
            }
            if t.total > 0 {
                s.push_str("  passing by shape:\n");
                s.push_str(&breakdown::table(&caption_by_shape(captions), "    "));
                s.push_str("  shape word named, per object:\n");
                s.push_str(&breakdown::table(&caption_shape_named(captions), "    "));
            }
        }
        s
    }
}

/// Colour, shape and count rates of `captions` (`null` where none apply).
fn caption_attributes(captions: &[CaptionResult]) -> Value {
    json!({
        "colours": Tally::of(captions.iter().map(|c| c.colours)).accuracy(),
        "shapes": Tally::of(captions.iter().map(|c| c.shapes)).accuracy(),
        "counts": Tally::of(captions.iter().filter_map(|c| c.count)).accuracy(),
    })
}

/// Captions passing, per shape of the reference scene's objects (a caption counts once under
/// each distinct shape of its scene).
pub fn caption_by_shape(captions: &[CaptionResult]) -> BTreeMap<String, Tally> {
    let mut map = BTreeMap::new();
    for c in captions {
        for key in shape_words(&c.object_shapes) {
            breakdown::count(&mut map, key, c.pass);
        }
    }
    map
}

/// Per object of the reference scenes, whether the caption names its shape, by shape.
pub fn caption_shape_named(captions: &[CaptionResult]) -> BTreeMap<String, Tally> {
    let mut map = BTreeMap::new();
    for c in captions {
        for (shape, &named) in c.object_shapes.iter().zip(&c.shapes_named) {
            breakdown::count(&mut map, shape.word(), named);
        }
    }
    map
}

/// Lowercase words of a text (letters and digits; punctuation splits).
fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Scores a generated caption against `scene`.
fn score_caption(index: u64, scene: &Scene, reference: String, generated: String) -> CaptionResult {
    let got = words(&generated);
    let has = |w: &str| got.iter().any(|g| g == w);
    let colours = scene.objects.iter().all(|o| has(o.colour.word()));
    let shapes_named: Vec<bool> = scene
        .objects
        .iter()
        .map(|o| has(o.shape.word()) || has(o.shape.plural()))
        .collect();
    let shapes = shapes_named.iter().all(|&n| n);
    let count = (scene.kind == SceneKind::Count).then(|| {
        COUNT_WORDS
            .get(scene.objects.len().saturating_sub(1))
            .is_some_and(|w| has(w))
    });
    CaptionResult {
        index,
        reference,
        generated,
        colours,
        shapes,
        object_shapes: scene.objects.iter().map(|o| o.shape).collect(),
        shapes_named,
        count,
        pass: colours && shapes && count != Some(false),
    }
}

/// Captions the first `n` samples of `split` under `seed` and scores them.
fn caption_set(
    model: &Model,
    seed: u64,
    split: Split,
    n: usize,
    progress: bool,
    prefix: &'static str,
) -> Result<Vec<CaptionResult>> {
    let mut captions = Vec::with_capacity(n);
    let bar = progress_bar(progress, n, prefix)?;
    for index in 0..n as u64 {
        let s = sample(seed, split, index);
        let image = RgbImage::new(IMAGE_SIZE, IMAGE_SIZE, render(&s.scene))?;
        let generate = GenerateOptions {
            seed: index,
            max_tokens: Some(CAPTION_TOKENS),
            sampling: SamplingOptions::greedy(),
            max_images: 0,
            previews: false,
            ..GenerateOptions::default()
        };
        let out = model.generate(Request::Caption { image: &image }, &generate, |_| {
            Control::Continue
        })?;
        let reference = crate::shapes::caption::text(&s.words);
        let result = score_caption(index, &s.scene, reference, out.text());
        log::debug!(
            "caption {} {index}: `{}` → `{}` ({})",
            split.name(),
            result.reference,
            result.generated,
            if result.pass { "pass" } else { "fail" }
        );
        captions.push(result);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(captions)
}

/// A progress bar of `len` steps (hidden unless `show`).
pub(crate) fn progress_bar(show: bool, len: usize, prefix: &'static str) -> Result<ProgressBar> {
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
    let mut breakdown = Breakdown::default();
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
                max_tokens: Some(0),
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
            breakdown.add(&p.expect, &detections, pass);
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
    let captions = caption_set(
        &model,
        CAPTION_SEED,
        Split::HeldOut,
        options.captions,
        options.progress,
        "captions",
    )?;
    let captions_seen = caption_set(
        &model,
        CAPTION_SEED_SEEN,
        Split::Train,
        options.captions,
        options.progress,
        "seen",
    )?;
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
            .iter()
            .map(|(g, p)| (g.to_string(), p.name().to_string()))
            .collect(),
        model_image_size: size,
        seeds: options.seeds,
        prompt_set: options.prompt_set,
        prompts_file: options.prompts_file.clone(),
        categories,
        breakdown,
        images,
        captions,
        captions_seen,
        notes,
    })
}
