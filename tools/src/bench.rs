//! `transfusion bench`: speed and memory of a bundle on this machine, through the SDK's public
//! API (issue #3; results and method in `docs/performance.md`).
//!
//! For every precision × thread count the bundle is loaded once (`load_ms`), then it measures
//! text prefill and greedy decode speed and, for every step count, the latency of one image
//! generated after a prompt (p50/p90 with a per-part breakdown), the same generation with every
//! diffusion step recomputing the whole sequence (no prefix cache), and, with `--ort`, the same
//! ONNX graphs under onnxruntime with the same orchestration (`tools/bench/ort_bench.py`).

mod measure;
mod ort;
pub mod profile;
mod stats;
pub mod sustained;

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use transfusion_sdk::manifest::Precision;
use transfusion_sdk::{Device, LoadOptions, Model, PartPrecisions, PrecisionChoice};

pub use measure::{prompt, Prompt};
pub use ort::{python, OrtReport, OrtStep};
pub use stats::{percentile, Machine};

use crate::error::{Error, Result};
use measure::{ImageJob, ImageSamples, Variant};
use stats::{ms, p50, p90};

/// What to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchOptions {
    pub precisions: Vec<Precision>,
    /// Matrix-product threads (tract's pool; onnxruntime's `intra_op_num_threads`).
    pub threads: Vec<usize>,
    /// Diffusion step counts.
    pub steps: Vec<usize>,
    /// Measured repetitions of each measurement.
    pub runs: usize,
    /// Unmeasured repetitions before them.
    pub warmup: usize,
    /// Words in the prompt before the image (and in the prefill measurement).
    pub prompt_tokens: usize,
    /// Greedy tokens in the decode measurement.
    pub decode_tokens: usize,
    /// Also run the onnxruntime baseline.
    pub ort: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Where tract runs the graphs (`cpu`, `cuda`, `auto`).
    pub device: Device,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            precisions: vec![Precision::Fp32, Precision::Int8],
            threads: vec![1],
            steps: vec![1, 2, 4, 8],
            runs: 10,
            warmup: 1,
            prompt_tokens: 32,
            decode_tokens: 32,
            ort: false,
            progress: false,
            device: Device::Cpu,
        }
    }
}

impl BenchOptions {
    /// Checks the values a caller can get wrong.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Invalid(format!("bench: {m}")));
        if self.precisions.is_empty() || self.threads.is_empty() || self.steps.is_empty() {
            return bad("--precision, --threads and --steps need at least one value each");
        }
        if self.threads.iter().any(|&t| t == 0 || t > 1024) {
            return bad("--threads values must be in 1..=1024");
        }
        if self.steps.iter().any(|&s| s == 0 || s > 1000) {
            return bad("--steps values must be in 1..=1000");
        }
        if self.runs == 0 {
            return bad("--runs must be at least 1");
        }
        if self.prompt_tokens == 0 {
            return bad("--prompt-tokens must be at least 1");
        }
        Ok(())
    }
}

/// One precision × threads × steps result. Times in milliseconds; `*_p50` per-part values are
/// medians of each part on its own (they need not add up to the median total).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BenchRow {
    pub precision: String,
    pub threads: usize,
    pub steps: usize,
    pub prompt_tokens: usize,
    /// `Model::load` wall time (read, check, optimise all seven graphs).
    pub load_ms: f64,
    /// Resident memory right after loading, MiB (`VmRSS`; `None` off Linux).
    pub rss_after_load_mb: Option<f64>,
    /// Peak resident memory of this configuration, MiB (`VmHWM`, reset before loading where
    /// the kernel allows; `None` off Linux). The reset goes back to the current RSS, so memory
    /// the allocator kept from an earlier configuration of the same process still counts: run
    /// one precision per process for clean figures.
    pub peak_rss_mb: Option<f64>,
    pub image_ms_p50: f64,
    pub image_ms_p90: f64,
    pub text_embed_ms_p50: f64,
    pub backbone_ms_p50: f64,
    /// `patch_in` + `patch_out`.
    pub patch_ms_p50: f64,
    pub vae_decode_ms_p50: f64,
    /// Outside the graphs: sampler, tokenizer, tensor copies.
    pub host_ms_p50: f64,
    /// Prefill of `[BOS] + prompt` (`text_prefill_tokens` tokens).
    pub text_prefill_tokens: usize,
    pub text_prefill_tok_s: f64,
    pub text_decode_tokens: usize,
    pub text_decode_tok_s: f64,
    /// Every diffusion step recomputes the whole sequence.
    pub nocache_image_ms_p50: f64,
    pub nocache_image_ms_p90: f64,
    pub nocache_backbone_ms_p50: f64,
    /// `nocache_image_ms_p50 / image_ms_p50`: the prefix cache's speed-up.
    pub nocache_over_cache: f64,
    pub ort_image_ms_p50: Option<f64>,
    pub ort_image_ms_p90: Option<f64>,
    pub ort_text_embed_ms_p50: Option<f64>,
    pub ort_backbone_ms_p50: Option<f64>,
    pub ort_patch_ms_p50: Option<f64>,
    pub ort_vae_decode_ms_p50: Option<f64>,
    pub ort_host_ms_p50: Option<f64>,
    pub ort_load_ms: Option<f64>,
    /// `ort_image_ms_p50 / image_ms_p50`: above 1, tract is faster.
    pub ort_over_tract: Option<f64>,
    /// Why the onnxruntime numbers are missing, when `--ort` was asked for.
    pub ort_error: Option<String>,
}

/// The whole benchmark: one JSON document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    pub bundle: String,
    /// The manifest's model name.
    pub model: String,
    /// Described before the first load: CPU, GPU, the Jetson's power mode and clock pinning,
    /// and the sensors at the start.
    pub machine: Machine,
    /// Clocks, temperatures and power rails after the last measurement (compare with
    /// `machine.telemetry`: a board that heated up may have throttled during the run).
    pub telemetry_end: transfusion_sdk::platform::Telemetry,
    /// Where tract ran the graphs (`cpu`, `cuda`, `auto`).
    pub device: String,
    pub runs: usize,
    pub warmup: usize,
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
    /// Whether `peak_rss_mb` is per configuration (the peak could be reset before each load)
    /// rather than the process's peak so far.
    pub peak_rss_per_config: bool,
    /// onnxruntime's version, when `--ort` ran.
    pub onnxruntime: Option<String>,
    pub results: Vec<BenchRow>,
}

fn bar(options: &BenchOptions) -> Result<ProgressBar> {
    if !options.progress {
        return Ok(ProgressBar::hidden());
    }
    let configs = options.precisions.len() * options.threads.len();
    let per_run = options.warmup + options.runs;
    let per_config = 1 + per_run + options.steps.len() * 2 * per_run + usize::from(options.ort);
    let bar = ProgressBar::new((configs * per_config) as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .map_err(|e| Error::Invalid(e.to_string()))?
            .progress_chars("=> "),
    );
    bar.set_prefix("bench");
    Ok(bar)
}

/// Fills the tract image columns of a row.
fn image_row(row: &mut BenchRow, cached: &ImageSamples, nocache: &ImageSamples) {
    row.image_ms_p50 = p50(&cached.total);
    row.image_ms_p90 = p90(&cached.total);
    row.text_embed_ms_p50 = p50(&cached.text_embed);
    row.backbone_ms_p50 = p50(&cached.backbone);
    row.patch_ms_p50 = p50(&cached.patch);
    row.vae_decode_ms_p50 = p50(&cached.vae_decode);
    row.host_ms_p50 = p50(&cached.host);
    row.nocache_image_ms_p50 = p50(&nocache.total);
    row.nocache_image_ms_p90 = p90(&nocache.total);
    row.nocache_backbone_ms_p50 = p50(&nocache.backbone);
    row.nocache_over_cache = if row.image_ms_p50 > 0.0 {
        row.nocache_image_ms_p50 / row.image_ms_p50
    } else {
        0.0
    };
}

/// Merges the onnxruntime report (or its failure) into the rows of one configuration.
fn merge_ort(rows: &mut [BenchRow], ort: std::result::Result<&OrtReport, &str>) {
    for row in rows {
        let step = match ort {
            Ok(report) => report.results.iter().find(|r| r.steps == row.steps),
            Err(e) => {
                row.ort_error = Some(e.to_string());
                continue;
            }
        };
        let Some(s) = step else {
            row.ort_error = Some(format!("no onnxruntime result for {} steps", row.steps));
            continue;
        };
        row.ort_image_ms_p50 = Some(s.ort_image_ms_p50);
        row.ort_image_ms_p90 = Some(s.ort_image_ms_p90);
        row.ort_text_embed_ms_p50 = Some(s.ort_text_embed_ms_p50);
        row.ort_backbone_ms_p50 = Some(s.ort_backbone_ms_p50);
        row.ort_patch_ms_p50 = Some(s.ort_patch_ms_p50);
        row.ort_vae_decode_ms_p50 = Some(s.ort_vae_decode_ms_p50);
        row.ort_host_ms_p50 = Some(s.ort_host_ms_p50);
        row.ort_load_ms = ort.ok().map(|r| r.ort_load_ms);
        row.ort_over_tract =
            (row.image_ms_p50 > 0.0).then(|| s.ort_image_ms_p50 / row.image_ms_p50);
    }
}

/// Runs the benchmark on the bundle in `bundle`.
pub fn bench(bundle: &Path, options: &BenchOptions) -> Result<BenchReport> {
    options.validate()?;
    let machine = Machine::detect();
    if let Some(power) = machine.power_state() {
        log::info!("bench on {power}");
    }
    let bar = bar(options)?;
    let mut results = Vec::new();
    let mut peak_rss_per_config = true;
    let mut onnxruntime = None;
    let mut name = String::new();
    for &precision in &options.precisions {
        for &threads in &options.threads {
            bar.set_message(format!("{precision} × {threads} thread(s): loading"));
            peak_rss_per_config &= stats::reset_peak_rss();
            let load_options = LoadOptions {
                precision: PartPrecisions::all(PrecisionChoice::Exact(precision)),
                threads: Some(threads),
                device: options.device,
                ..LoadOptions::default()
            };
            let start = Instant::now();
            let model = Model::load(bundle, &load_options)?;
            let load_ms = ms(start.elapsed());
            let rss_after_load_mb = stats::rss_mb();
            bar.inc(1);
            name.clone_from(&model.manifest().name);
            let prompt = measure::prompt(&model, options.prompt_tokens)?;
            bar.set_message(format!("{precision} × {threads}: text"));
            let text = measure::text_speed(
                &model,
                &prompt,
                options.decode_tokens,
                options.warmup,
                options.runs,
                &bar,
            )?;
            let mut rows = Vec::with_capacity(options.steps.len());
            for &steps in &options.steps {
                bar.set_message(format!("{precision} × {threads}: {steps}-step images"));
                let job = ImageJob {
                    model: &model,
                    prompt: &prompt,
                    steps,
                    warmup: options.warmup,
                    runs: options.runs,
                };
                let cached = measure::images(&job, Variant::Cached, &bar)?;
                let nocache = measure::images(&job, Variant::Recompute, &bar)?;
                let mut row = BenchRow {
                    precision: precision.name().to_string(),
                    threads,
                    steps,
                    prompt_tokens: options.prompt_tokens,
                    load_ms,
                    rss_after_load_mb,
                    text_prefill_tokens: text.prefill_tokens,
                    text_prefill_tok_s: text.prefill_tok_s,
                    text_decode_tokens: options.decode_tokens,
                    text_decode_tok_s: text.decode_tok_s,
                    ..BenchRow::default()
                };
                image_row(&mut row, &cached, &nocache);
                rows.push(row);
            }
            let peak = stats::peak_rss_mb();
            for row in &mut rows {
                row.peak_rss_mb = peak;
            }
            drop(model);
            if options.ort {
                bar.set_message(format!("{precision} × {threads}: onnxruntime"));
                let report = ort::run(&ort::OrtJob {
                    bundle,
                    precision,
                    threads,
                    steps: &options.steps,
                    prompt_tokens: options.prompt_tokens,
                    runs: options.runs,
                    warmup: options.warmup,
                });
                match &report {
                    Ok(r) => onnxruntime = Some(r.onnxruntime.clone()),
                    Err(e) => log::warn!("{e}"),
                }
                let message = report.as_ref().err().map(ToString::to_string);
                merge_ort(
                    &mut rows,
                    report
                        .as_ref()
                        .map_err(|_| message.as_deref().unwrap_or("")),
                );
                bar.inc(1);
            }
            results.extend(rows);
        }
    }
    bar.finish_and_clear();
    Ok(BenchReport {
        bundle: bundle.display().to_string(),
        model: name,
        machine,
        telemetry_end: transfusion_sdk::platform::sensors::read_host(),
        device: format!("{:?}", options.device).to_lowercase(),
        runs: options.runs,
        warmup: options.warmup,
        prompt_tokens: options.prompt_tokens,
        decode_tokens: options.decode_tokens,
        peak_rss_per_config,
        onnxruntime,
        results,
    })
}

/// `value` with `decimals`, or `-`.
fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"))
}

impl BenchReport {
    /// The human-readable report: the machine, an image-latency table with the per-part
    /// breakdown and the ratios, and a per-configuration table (load, memory, text speed).
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "bundle {} ({})", self.bundle, self.model);
        let _ = writeln!(s, "machine: {}", self.machine.describe());
        let _ = writeln!(
            s,
            "device: {}; sensors at the end: {}",
            self.device,
            self.telemetry_end.describe()
        );
        let _ = writeln!(
            s,
            "prompt {} tokens, {} runs (+{} warm-up) per figure, DDIM; times in ms (p50 unless \
             marked)",
            self.prompt_tokens, self.runs, self.warmup
        );
        if let Some(v) = &self.onnxruntime {
            let _ = writeln!(s, "onnxruntime {v}");
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<5} {:>3} {:>5} | {:>8} {:>8} | {:>8} {:>6} {:>6} {:>5} | {:>8} {:>7} | {:>8} \
             {:>8} {:>9}",
            "prec",
            "thr",
            "steps",
            "image",
            "p90",
            "backbone",
            "patch",
            "vae",
            "host",
            "no-cache",
            "nc/c",
            "ort",
            "ort p90",
            "ort/tract"
        );
        for r in &self.results {
            let _ = writeln!(
                s,
                "{:<5} {:>3} {:>5} | {:>8.2} {:>8.2} | {:>8.2} {:>6.2} {:>6.2} {:>5.2} | \
                 {:>8.2} {:>6.2}x | {:>8} {:>8} {:>9}",
                r.precision,
                r.threads,
                r.steps,
                r.image_ms_p50,
                r.image_ms_p90,
                r.backbone_ms_p50,
                r.patch_ms_p50,
                r.vae_decode_ms_p50,
                r.host_ms_p50,
                r.nocache_image_ms_p50,
                r.nocache_over_cache,
                opt(r.ort_image_ms_p50, 2),
                opt(r.ort_image_ms_p90, 2),
                r.ort_over_tract
                    .map_or_else(|| "-".to_string(), |v| format!("{v:.2}x")),
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<5} {:>3} | {:>8} {:>10} {:>9} | {:>11} {:>10} | {:>8}",
            "prec", "thr", "load", "rss load", "peak rss", "prefill t/s", "decode t/s", "ort load"
        );
        let mut seen = Vec::new();
        for r in &self.results {
            if seen.contains(&(&r.precision, r.threads)) {
                continue;
            }
            seen.push((&r.precision, r.threads));
            let _ = writeln!(
                s,
                "{:<5} {:>3} | {:>8.1} {:>7} MB {:>6} MB | {:>11.1} {:>10.1} | {:>8}",
                r.precision,
                r.threads,
                r.load_ms,
                opt(r.rss_after_load_mb, 1),
                opt(r.peak_rss_mb, 1),
                r.text_prefill_tok_s,
                r.text_decode_tok_s,
                opt(r.ort_load_ms, 1),
            );
        }
        let errors: Vec<String> = self
            .results
            .iter()
            .filter_map(|r| {
                r.ort_error
                    .as_ref()
                    .map(|e| format!("{} × {}: {e}", r.precision, r.threads))
            })
            .collect();
        let mut errors_seen: Vec<&String> = Vec::new();
        for e in &errors {
            if !errors_seen.contains(&e) {
                errors_seen.push(e);
                let _ = writeln!(s, "onnxruntime: {e}");
            }
        }
        if !self.peak_rss_per_config {
            let _ = writeln!(
                s,
                "note: peak RSS could not be reset between configurations; it is the process's \
                 peak so far"
            );
        }
        s
    }
}
