//! `transfusion bench --duration SECONDS`: images back to back for a fixed time, reported per
//! interval with the clocks, temperatures and power of that moment.
//!
//! The figures of `bench` are short bursts; a kiosk generates for hours. A fanless board
//! heats up, its thermal governor lowers the clocks and throughput drops — that drop, and the
//! temperature it happened at, is what this mode shows. One configuration: the first
//! precision, thread count and step count given.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use transfusion_sdk::manifest::Precision;
use transfusion_sdk::platform::{sensors, Telemetry};
use transfusion_sdk::{Device, LoadOptions, Model, PartPrecisions, PrecisionChoice};

use super::measure::{self, ImageJob};
use super::stats::{ms, Machine};
use crate::error::{Error, Result};

/// A throughput drop beyond this fraction between the first and the last interval is reported
/// as throttling.
pub const THROTTLE_DROP: f64 = 0.10;

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub struct SustainedOptions {
    pub precision: Precision,
    pub threads: usize,
    pub steps: usize,
    pub prompt_tokens: usize,
    pub device: Device,
    /// Seconds of generation (after one unmeasured warm-up image).
    pub duration: f64,
    /// Seconds per reported interval.
    pub interval: f64,
    pub progress: bool,
}

impl SustainedOptions {
    /// Checks the values a caller can get wrong; errors name the option.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(format!("bench: {m}")));
        if !(self.duration.is_finite() && self.duration > 0.0 && self.duration <= 86_400.0) {
            return bad(format!(
                "--duration must be in (0, 86400] seconds, got {}",
                self.duration
            ));
        }
        if !(self.interval.is_finite() && self.interval > 0.0 && self.interval <= self.duration) {
            return bad(format!(
                "--interval must be in (0, --duration] seconds, got {} (duration {})",
                self.interval, self.duration
            ));
        }
        if self.threads == 0 || self.threads > 1024 {
            return bad("--threads values must be in 1..=1024".into());
        }
        if self.steps == 0 || self.steps > 1000 {
            return bad("--steps values must be in 1..=1000".into());
        }
        if self.prompt_tokens == 0 {
            return bad("--prompt-tokens must be at least 1".into());
        }
        Ok(())
    }
}

/// One interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Interval {
    /// Seconds since the measurement started.
    pub start_s: f64,
    pub end_s: f64,
    pub images: usize,
    pub images_per_s: f64,
    pub image_ms_mean: f64,
    pub image_ms_max: f64,
    /// Sensors at the end of the interval.
    pub telemetry: Telemetry,
}

/// The whole run: one JSON document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SustainedReport {
    pub bundle: String,
    pub model: String,
    pub machine: Machine,
    pub device: String,
    pub precision: String,
    pub threads: usize,
    pub steps: usize,
    pub prompt_tokens: usize,
    pub duration_s: f64,
    pub interval_s: f64,
    pub load_ms: f64,
    /// The unmeasured first image (on a GPU it includes compiling kernels the cache lacked).
    pub warmup_image_ms: f64,
    pub images: usize,
    pub intervals: Vec<Interval>,
    /// Throughput of the last interval over the first (1: steady; below 1: slowed down).
    pub last_over_first: Option<f64>,
    /// `last_over_first` below `1 - THROTTLE_DROP`.
    pub throttled: bool,
    /// The hottest zone seen at any interval's end, °C.
    pub max_celsius: Option<f64>,
}

/// Runs the sustained benchmark on `bundle`.
pub fn sustained(bundle: &Path, options: &SustainedOptions) -> Result<SustainedReport> {
    options.validate()?;
    let machine = Machine::detect();
    let load_options = LoadOptions {
        precision: PartPrecisions::all(PrecisionChoice::Exact(options.precision)),
        threads: Some(options.threads),
        device: options.device,
        ..LoadOptions::default()
    };
    let start = Instant::now();
    let model = Model::load(bundle, &load_options)?;
    let load_ms = ms(start.elapsed());
    let prompt = measure::prompt(&model, options.prompt_tokens)?;
    let job = ImageJob {
        model: &model,
        prompt: &prompt,
        steps: options.steps,
        warmup: 0,
        runs: 1,
    };
    let (warmup, _) = measure::image_generate(&job, 0)?;
    let bar = if options.progress {
        let bar = ProgressBar::new(options.duration.ceil() as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} s {msg}")
                .map_err(|e| Error::Invalid(e.to_string()))?
                .progress_chars("=> "),
        );
        bar.set_prefix("sustain");
        bar
    } else {
        ProgressBar::hidden()
    };
    let duration = Duration::from_secs_f64(options.duration);
    let interval = Duration::from_secs_f64(options.interval);
    let begin = Instant::now();
    let mut intervals = Vec::new();
    let mut times: Vec<f64> = Vec::new();
    let mut interval_start = Duration::ZERO;
    let mut images = 0usize;
    let mut seed = 1u64;
    while begin.elapsed() < duration {
        let (wall, _) = measure::image_generate(&job, seed)?;
        seed += 1;
        images += 1;
        times.push(ms(wall));
        let now = begin.elapsed();
        bar.set_position(now.as_secs());
        if now - interval_start >= interval || now >= duration {
            let closed = close(interval_start, now, &times);
            bar.set_message(format!("{:.2} img/s", closed.images_per_s));
            intervals.push(closed);
            times.clear();
            interval_start = now;
        }
    }
    bar.finish_and_clear();
    let rate = |i: Option<&Interval>| i.map(|i| i.images_per_s).filter(|r| *r > 0.0);
    let last_over_first = match (rate(intervals.first()), rate(intervals.last())) {
        (Some(first), Some(last)) if intervals.len() > 1 => Some(last / first),
        _ => None,
    };
    let max_celsius = intervals
        .iter()
        .filter_map(|i| i.telemetry.max_celsius())
        .reduce(f64::max);
    Ok(SustainedReport {
        bundle: bundle.display().to_string(),
        model: model.manifest().name.clone(),
        machine,
        device: format!("{:?}", options.device).to_lowercase(),
        precision: options.precision.name().to_string(),
        threads: options.threads,
        steps: options.steps,
        prompt_tokens: options.prompt_tokens,
        duration_s: options.duration,
        interval_s: options.interval,
        load_ms,
        warmup_image_ms: ms(warmup),
        images,
        throttled: last_over_first.is_some_and(|r| r < 1.0 - THROTTLE_DROP),
        last_over_first,
        max_celsius,
        intervals,
    })
}

/// The interval `[start, end)` with the image times (ms) it saw, and the sensors now.
fn close(start: Duration, end: Duration, times: &[f64]) -> Interval {
    let seconds = (end - start).as_secs_f64();
    Interval {
        start_s: start.as_secs_f64(),
        end_s: end.as_secs_f64(),
        images: times.len(),
        images_per_s: if seconds > 0.0 {
            times.len() as f64 / seconds
        } else {
            0.0
        },
        image_ms_mean: if times.is_empty() {
            0.0
        } else {
            times.iter().sum::<f64>() / times.len() as f64
        },
        image_ms_max: times.iter().copied().fold(0.0, f64::max),
        telemetry: sensors::read_host(),
    }
}

/// `value` with one decimal, or `-`.
fn opt(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"))
}

impl SustainedReport {
    /// The human-readable report: one row per interval.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "bundle {} ({})", self.bundle, self.model);
        let _ = writeln!(s, "machine: {}", self.machine.describe());
        let _ = writeln!(
            s,
            "sustained: {} {} × {} thread(s), {} steps, {} s in {} s intervals; load {:.0} ms, \
             warm-up image {:.0} ms",
            self.device,
            self.precision,
            self.threads,
            self.steps,
            self.duration_s,
            self.interval_s,
            self.load_ms,
            self.warmup_image_ms
        );
        let _ = writeln!(
            s,
            "{:>7} {:>7} {:>6} {:>7} {:>8} {:>8} | {:>8} {:>8} {:>7} {:>7}",
            "from s",
            "to s",
            "images",
            "img/s",
            "mean ms",
            "max ms",
            "cpu MHz",
            "gpu MHz",
            "max °C",
            "W in"
        );
        for i in &self.intervals {
            let t = &i.telemetry;
            let _ = writeln!(
                s,
                "{:>7.1} {:>7.1} {:>6} {:>7.2} {:>8.1} {:>8.1} | {:>8} {:>8} {:>7} {:>7}",
                i.start_s,
                i.end_s,
                i.images,
                i.images_per_s,
                i.image_ms_mean,
                i.image_ms_max,
                opt(t.mean_cpu_mhz()),
                opt(t.gpu.as_ref().and_then(|g| g.cur_mhz)),
                opt(t.max_celsius()),
                t.input_milliwatts()
                    .map_or_else(|| "-".to_string(), |mw| format!("{:.2}", mw / 1000.0)),
            );
        }
        let verdict = match (self.last_over_first, self.throttled) {
            (Some(r), true) => format!(
                "THROTTLED: the last interval ran at {:.0} % of the first",
                r * 100.0
            ),
            (Some(r), false) => format!("steady: last interval at {:.0} % of the first", r * 100.0),
            (None, _) => "one interval: no trend".to_string(),
        };
        let _ = writeln!(
            s,
            "{} images; {verdict}; hottest {} °C",
            self.images,
            opt(self.max_celsius)
        );
        s
    }
}
