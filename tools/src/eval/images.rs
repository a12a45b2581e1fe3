//! `transfusion eval --score-images DIR`: the checker on PNGs made elsewhere (the PyTorch
//! sampler's diagnostics, another runtime), with the same report shape as `eval`.
//!
//! `DIR/index.jsonl` has one JSON object per line (blank lines skipped), `file` naming a PNG
//! relative to `DIR`, and either
//!
//! * a prompt, in the form of a `--prompts` file line ([`super::score::EvalPrompt`]: `prompt`,
//!   `objects`, optional `relation`, `mode`; `category` optional here, lines without one are
//!   counted under `uncategorized`), or
//! * `"scene": {"split": "train" | "heldout" | "all", "seed": S, "index": I}`: dataset sample
//!   `I` of that split under seed `S` (`transfusion dataset shapes --seed S --split SPLIT`),
//!   counted under `scene` and scored against its full ground truth
//!   ([`super::score::ground_truth`]), or with [`SceneTruth::Caption`] against what its caption
//!   names ([`super::score::caption_truth`]: sizes only where the caption names them).
//!
//! Images must be 64×64.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use transfusion_sdk::RgbImage;

use super::breakdown::{Breakdown, Tally};
use super::checker::{Checker, Detection};
use super::progress_bar;
use super::score::{caption_truth, check, ground_truth, Category, Expectation};
use crate::error::{Error, Result};
use crate::shapes::caption::text;
use crate::shapes::scene::{sample, Scene, Split};
use crate::shapes::spec::IMAGE_SIZE;

/// The index file inside the directory.
pub const INDEX_FILE: &str = "index.jsonl";

/// Group of the lines that name a dataset scene.
pub const SCENE_GROUP: &str = "scene";

/// What an image of a dataset scene must show (`eval --score-images DIR --scene-truth T`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SceneTruth {
    /// Every object with shape, colour and size, the named position and relation: right for
    /// an image that started from the scene itself (a VAE round trip, a partly noised scene).
    #[default]
    Full,
    /// What the caption names (sizes only where it names them): right for an image drawn
    /// from the caption alone, from pure noise.
    Caption,
}

impl SceneTruth {
    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            SceneTruth::Full => "full",
            SceneTruth::Caption => "caption",
        }
    }

    /// What an image of `scene` must show under this truth.
    pub fn of(self, scene: &Scene) -> Expectation {
        match self {
            SceneTruth::Full => ground_truth(scene),
            SceneTruth::Caption => caption_truth(scene),
        }
    }
}

impl std::str::FromStr for SceneTruth {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "full" => Ok(SceneTruth::Full),
            "caption" => Ok(SceneTruth::Caption),
            other => Err(format!(
                "unknown scene truth `{other}` (expected full or caption)"
            )),
        }
    }
}

/// Group of the prompt lines without a category.
pub const UNCATEGORIZED: &str = "uncategorized";

/// A prompt line of the index: an [`super::score::EvalPrompt`] whose category may be missing.
#[derive(Debug, Clone, Deserialize)]
struct IndexPrompt {
    #[serde(default)]
    category: Option<Category>,
    prompt: String,
    #[serde(flatten)]
    expect: Expectation,
}

/// `"scene": {...}` of an index line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SceneRef {
    split: String,
    seed: u64,
    index: u64,
}

/// One line of the index: the file and everything else.
#[derive(Debug, Clone, Deserialize)]
struct IndexLine {
    file: String,
    #[serde(default)]
    scene: Option<SceneRef>,
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

/// One image to score, from a line of the index.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    /// 1-based line of `index.jsonl`.
    pub line: usize,
    pub file: PathBuf,
    /// The category name, [`SCENE_GROUP`] or [`UNCATEGORIZED`].
    pub group: String,
    /// The prompt, or the scene's caption.
    pub prompt: String,
    pub expect: Expectation,
}

/// Parses line `n` (1-based) of `path`.
fn parse_line(path: &Path, n: usize, line: &str, truth: SceneTruth) -> Result<IndexEntry> {
    let at = |message: String| Error::Invalid(format!("{}:{n}: {message}", path.display()));
    let parsed: IndexLine = serde_json::from_str(line).map_err(|e| {
        at(format!(
            "expected {{\"file\": ..., <a prompt line>}} or {{\"file\": ..., \"scene\": \
             {{\"split\", \"seed\", \"index\"}}}}: {e}"
        ))
    })?;
    if parsed.file.trim().is_empty() {
        return Err(at("`file` is empty, expected a PNG name".into()));
    }
    let file = PathBuf::from(&parsed.file);
    if let Some(scene) = parsed.scene {
        if let Some(key) = ["prompt", "objects", "relation", "mode"]
            .iter()
            .find(|k| parsed.rest.contains_key(**k))
        {
            return Err(at(format!(
                "has both `scene` and `{key}`; a line is either a prompt or a scene"
            )));
        }
        let split: Split = scene
            .split
            .parse()
            .map_err(|e: String| at(format!("scene: {e}")))?;
        let s = sample(scene.seed, split, scene.index);
        return Ok(IndexEntry {
            line: n,
            file,
            group: SCENE_GROUP.into(),
            prompt: text(&s.words),
            expect: truth.of(&s.scene),
        });
    }
    let prompt: IndexPrompt = serde_json::from_value(Value::Object(parsed.rest))
        .map_err(|e| at(format!("not a prompt (the form of a --prompts line): {e}")))?;
    if prompt.expect.objects.is_empty() {
        return Err(at("`objects` is empty, expected at least one object".into()));
    }
    if let Some(r) = prompt.expect.relation {
        let len = prompt.expect.objects.len();
        if r.subject >= len || r.object >= len {
            return Err(at(format!(
                "relation refers to object {} of {len}",
                r.subject.max(r.object)
            )));
        }
    }
    Ok(IndexEntry {
        line: n,
        file,
        group: prompt
            .category
            .map_or(UNCATEGORIZED, Category::name)
            .to_string(),
        prompt: prompt.prompt,
        expect: prompt.expect,
    })
}

/// Reads `path` (an `index.jsonl`): one entry per non-blank line, scene lines expecting
/// `truth`; errors name the line.
pub fn read_index(path: &Path, truth: SceneTruth) -> Result<Vec<IndexEntry>> {
    let content = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in content.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(parse_line(path, i + 1, line, truth)?);
    }
    if out.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no images listed, expected one JSON object per line",
            path.display()
        )));
    }
    Ok(out)
}

/// One scored image.
#[derive(Debug, Clone, Serialize)]
pub struct ScoredImage {
    pub file: PathBuf,
    pub group: String,
    pub prompt: String,
    pub pass: bool,
    pub detections: Vec<Detection>,
}

/// The report of `--score-images`.
#[derive(Debug, Clone, Serialize)]
pub struct ImagesReport {
    pub dir: PathBuf,
    /// What the scene lines were scored against.
    pub scene_truth: SceneTruth,
    /// Pass counts per group: category names, `scene`, `uncategorized`.
    pub categories: BTreeMap<String, Tally>,
    pub breakdown: Breakdown,
    pub images: Vec<ScoredImage>,
}

impl ImagesReport {
    /// Mean of the group accuracies (as `eval`'s overall over its categories).
    pub fn overall(&self) -> Option<f64> {
        let scores: Vec<f64> = self
            .categories
            .values()
            .filter_map(Tally::accuracy)
            .collect();
        (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64)
    }

    /// The JSON document: `overall`, one key per group with its accuracy, `counts`, the
    /// breakdowns and the per-image verdicts.
    pub fn to_json(&self) -> Value {
        let mut doc = json!({
            "dir": self.dir,
            "scene_truth": self.scene_truth,
            "overall": self.overall(),
            "counts": self.categories.iter()
                .map(|(k, t)| (k.clone(), json!({"correct": t.pass, "total": t.total})))
                .collect::<serde_json::Map<String, Value>>(),
            "by_size": self.breakdown.by_size,
            "by_shape": self.breakdown.by_shape,
            "objects_by_size": self.breakdown.objects_by_size,
            "objects_by_shape": self.breakdown.objects_by_shape,
            "detected_shapes": self.breakdown.detected_shapes,
            "images": self.images,
        });
        if let Some(map) = doc.as_object_mut() {
            for (k, t) in &self.categories {
                map.insert(k.clone(), json!(t.accuracy()));
            }
        }
        doc
    }

    /// A human-readable summary.
    pub fn to_text(&self) -> String {
        let mut s = format!("{} images in {}\n", self.images.len(), self.dir.display());
        if self.categories.contains_key(SCENE_GROUP) {
            s.push_str(&format!(
                "scenes scored against: {}\n",
                match self.scene_truth {
                    SceneTruth::Full => "their full ground truth",
                    SceneTruth::Caption => "what their captions name",
                }
            ));
        }
        s.push_str(&format!(
            "{:<20} {:>9} {:>6}\n",
            "category", "correct", "acc"
        ));
        for (k, t) in &self.categories {
            s.push_str(&format!("{k:<20} {}\n", t.text()));
        }
        match self.overall() {
            Some(o) => s.push_str(&format!("{:<20} {:>9} {o:>6.3}\n", "overall", "")),
            None => s.push_str("overall              not measured\n"),
        }
        s.push_str(&self.breakdown.text(""));
        s
    }
}

/// Scores every image listed in `dir/index.jsonl` (see the module documentation), its scene
/// lines against `truth`.
pub fn score_images(dir: &Path, truth: SceneTruth, progress: bool) -> Result<ImagesReport> {
    let entries = read_index(&dir.join(INDEX_FILE), truth)?;
    let checker = Checker::new();
    let mut categories: BTreeMap<String, Tally> = BTreeMap::new();
    let mut breakdown = Breakdown::default();
    let mut images = Vec::with_capacity(entries.len());
    let bar = progress_bar(progress, entries.len(), "images")?;
    for entry in entries {
        let path = dir.join(&entry.file);
        let image = RgbImage::load_png(&path)?;
        if image.width() != IMAGE_SIZE || image.height() != IMAGE_SIZE {
            return Err(Error::Invalid(format!(
                "{} ({INDEX_FILE} line {}): image is {}×{}, expected {IMAGE_SIZE}×{IMAGE_SIZE}",
                path.display(),
                entry.line,
                image.width(),
                image.height()
            )));
        }
        let detections = checker.detect(&image)?;
        let pass = check(&entry.expect, &detections);
        log::debug!(
            "{}: `{}` {}",
            path.display(),
            entry.prompt,
            if pass { "pass" } else { "fail" }
        );
        categories.entry(entry.group.clone()).or_default().add(pass);
        breakdown.add(&entry.expect, &detections, pass);
        images.push(ScoredImage {
            file: entry.file,
            group: entry.group,
            prompt: entry.prompt,
            pass,
            detections,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(ImagesReport {
        dir: dir.to_path_buf(),
        scene_truth: truth,
        categories,
        breakdown,
        images,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::score::{default_prompts, MatchMode};
    use crate::shapes::render::render;
    use crate::shapes::spec::Size;

    fn write(dir: &Path, lines: &[String]) {
        std::fs::write(dir.join(INDEX_FILE), lines.join("\n") + "\n").unwrap();
    }

    fn save_scene(dir: &Path, file: &str, seed: u64, split: Split, index: u64) {
        let s = sample(seed, split, index);
        let image = RgbImage::new(IMAGE_SIZE, IMAGE_SIZE, render(&s.scene)).unwrap();
        image.save_png(dir.join(file)).unwrap();
    }

    #[test]
    fn rendered_scenes_and_prompts_score_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut lines = Vec::new();
        for (k, (split, name)) in [(Split::Train, "train"), (Split::HeldOut, "heldout")]
            .into_iter()
            .enumerate()
        {
            for i in 0..6u64 {
                let file = format!("{name}_{i}.png");
                save_scene(dir.path(), &file, 5 + k as u64, split, i);
                lines.push(format!(
                    r#"{{"file": "{file}", "scene": {{"split": "{name}", "seed": {}, "index": {i}}}}}"#,
                    5 + k
                ));
            }
        }
        // A prompt line (the form of a --prompts file) about a rendered scene: sample 0 of
        // train/seed 5 holds its first object, so "contains" that object passes.
        let s = sample(5, Split::Train, 0).scene;
        let first = s.objects.first().unwrap();
        lines.push(format!(
            r#"{{"file": "train_0.png", "category": "colors", "prompt": "p", "objects": [{{"shape": "{}", "colour": "{}"}}], "mode": "contains"}}"#,
            first.shape.word(),
            first.colour.word()
        ));
        lines.push(String::new());
        write(dir.path(), &lines);
        let report = score_images(dir.path(), SceneTruth::Full, false).unwrap();
        assert_eq!(report.images.len(), 13);
        assert_eq!(report.overall(), Some(1.0));
        let scenes = report.categories.get(SCENE_GROUP).unwrap();
        assert_eq!((scenes.pass, scenes.total), (12, 12));
        assert_eq!(report.categories.get("colors").unwrap().total, 1);
        assert!(report
            .breakdown
            .by_shape
            .values()
            .all(|t| t.accuracy() == Some(1.0)));
        assert!(
            report.breakdown.by_size.contains_key("small")
                || report.breakdown.by_size.contains_key("large")
        );
        let json = report.to_json();
        assert_eq!(json["overall"], 1.0);
        assert_eq!(json["scene"], 1.0);
        assert_eq!(json["counts"]["scene"]["total"], 12);

        // The wrong ground truth fails: every scene line pointing at another sample's image.
        let lines: Vec<String> = (0..6u64)
            .map(|i| {
                format!(
                    r#"{{"file": "train_{i}.png", "scene": {{"split": "train", "seed": 5, "index": {}}}}}"#,
                    (i + 1) % 6
                )
            })
            .collect();
        write(dir.path(), &lines);
        let report = score_images(dir.path(), SceneTruth::Full, false).unwrap();
        assert_eq!(report.categories.get(SCENE_GROUP).unwrap().pass, 0);
    }

    /// A single-object train scene (seed 5) without a named position whose caption names
    /// the size (`mention_size`) or not, drawn with its object at the other size.
    fn resized_single(dir: &Path, mention_size: bool) -> String {
        let (index, mut scene) = (0..500u64)
            .map(|i| (i, sample(5, Split::Train, i).scene))
            .find(|(_, s)| {
                s.kind == crate::shapes::scene::SceneKind::Single
                    && s.position.is_none()
                    && s.mention_size == mention_size
            })
            .expect("a single-object scene of each kind in 500 samples");
        let object = &mut scene.objects[0];
        let (small, large) = (Size::Small.sides().0 + 1, Size::Large.sides().0 + 1);
        object.side = if object.size == Size::Small {
            large
        } else {
            small
        };
        object.x0 = object.x0.min((IMAGE_SIZE - 2 - object.side) as i32);
        object.y0 = object.y0.min((IMAGE_SIZE - 2 - object.side) as i32);
        let file = format!("resized_{mention_size}.png");
        let image = RgbImage::new(IMAGE_SIZE, IMAGE_SIZE, render(&scene)).unwrap();
        image.save_png(dir.join(&file)).unwrap();
        format!(
            r#"{{"file": "{file}", "scene": {{"split": "train", "seed": 5, "index": {index}}}}}"#
        )
    }

    #[test]
    fn caption_truth_leaves_out_the_sizes_a_caption_does_not_name() {
        let dir = tempfile::tempdir().unwrap();
        let lines = [
            resized_single(dir.path(), false),
            resized_single(dir.path(), true),
        ];
        write(dir.path(), &lines);
        let verdicts = |truth| {
            let report = score_images(dir.path(), truth, false).unwrap();
            assert_eq!(report.to_json()["scene_truth"], truth.name());
            report.images.iter().map(|i| i.pass).collect::<Vec<_>>()
        };
        // The full truth wants the scene's sizes; the caption's only where it names them.
        assert_eq!(verdicts(SceneTruth::Full), [false, false]);
        assert_eq!(verdicts(SceneTruth::Caption), [true, false]);
        for truth in [SceneTruth::Full, SceneTruth::Caption] {
            assert_eq!(truth.name().parse::<SceneTruth>(), Ok(truth));
        }
        assert!("sizes"
            .parse::<SceneTruth>()
            .unwrap_err()
            .contains("full or caption"));
    }

    #[test]
    fn bad_lines_are_errors_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(INDEX_FILE);
        let ok = r#"{"file": "a.png", "scene": {"split": "train", "seed": 1, "index": 0}}"#;
        let cases = [
            ("not json", "expected {\"file\""),
            (
                r#"{"scene": {"split": "train", "seed": 1, "index": 0}}"#,
                "file",
            ),
            (
                r#"{"file": "", "scene": {"split": "train", "seed": 1, "index": 0}}"#,
                "empty",
            ),
            (
                r#"{"file": "a.png", "scene": {"split": "test", "seed": 1, "index": 0}}"#,
                "unknown split",
            ),
            (
                r#"{"file": "a.png", "scene": {"split": "train", "index": 0}}"#,
                "seed",
            ),
            (
                r#"{"file": "a.png", "scene": {"split": "train", "seed": 1, "index": 0}, "prompt": "x"}"#,
                "both",
            ),
            (r#"{"file": "a.png", "prompt": "a red circle"}"#, "objects"),
            (
                r#"{"file": "a.png", "prompt": "x", "objects": []}"#,
                "empty",
            ),
            (
                r#"{"file": "a.png", "prompt": "x", "objects": [{"shape": "blob"}]}"#,
                "blob",
            ),
            (
                r#"{"file": "a.png", "prompt": "x", "objects": [{"shape": "star"}], "relation": {"subject": 0, "relation": "above", "object": 1}}"#,
                "relation",
            ),
        ];
        for (bad, expected) in cases {
            std::fs::write(&path, format!("{ok}\n\n{bad}\n")).unwrap();
            let err = read_index(&path, SceneTruth::Full).unwrap_err().to_string();
            assert!(
                err.contains(&format!("{}:3:", path.display())) && err.contains(expected),
                "{bad}: {err}"
            );
        }
        std::fs::write(&path, "\n\n").unwrap();
        assert!(read_index(&path, SceneTruth::Full)
            .unwrap_err()
            .to_string()
            .contains("no images"));
    }

    #[test]
    fn prompt_lines_reuse_the_prompts_file_form() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(INDEX_FILE);
        let prompts = default_prompts();
        let lines: Vec<String> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut v = serde_json::to_value(p).unwrap();
                v["file"] = json!(format!("{i}.png"));
                v.to_string()
            })
            .collect();
        std::fs::write(&path, lines.join("\n")).unwrap();
        let entries = read_index(&path, SceneTruth::Full).unwrap();
        assert_eq!(entries.len(), prompts.len());
        for (e, p) in entries.iter().zip(&prompts) {
            assert_eq!(e.expect, p.expect);
            assert_eq!(e.group, p.category.name());
            assert_eq!(e.prompt, p.prompt);
        }
        // Without a category.
        std::fs::write(
            &path,
            r#"{"file": "x.png", "prompt": "two stars", "objects": [{"shape": "star"}, {"shape": "star"}], "mode": "count"}"#,
        )
        .unwrap();
        let entries = read_index(&path, SceneTruth::Full).unwrap();
        assert_eq!(entries[0].group, UNCATEGORIZED);
        assert_eq!(entries[0].expect.mode, MatchMode::Count);
    }

    #[test]
    fn images_of_another_size_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        RgbImage::filled(32, 32, [0, 0, 0])
            .unwrap()
            .save_png(dir.path().join("small.png"))
            .unwrap();
        write(
            dir.path(),
            &[
                r#"{"file": "small.png", "scene": {"split": "train", "seed": 1, "index": 0}}"#
                    .into(),
            ],
        );
        let err = score_images(dir.path(), SceneTruth::Full, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("small.png") && err.contains("32×32") && err.contains("64×64"),
            "{err}"
        );
        write(
            dir.path(),
            &[
                r#"{"file": "missing.png", "scene": {"split": "train", "seed": 1, "index": 0}}"#
                    .into(),
            ],
        );
        let err = score_images(dir.path(), SceneTruth::Full, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.png"), "{err}");
    }
}
