//! The kiosk's settings: an optional TOML file (`--config kiosk.toml`, see
//! `board/jetson/kiosk.toml`) with command-line flags overriding it key by key.
//!
//! Unknown keys are errors (a typo in a file on a device nobody watches should fail loudly at
//! start, not be ignored), and every error names the file and the key. Relative `model` and
//! `prompts` paths in the file are relative to the file's directory, so a bundle directory can
//! be moved as a whole.

use std::hash::{BuildHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use transfusion_board::BackendConfig;
use transfusion_sdk::{
    Device, GenerateOptions, LoadOptions, PartPrecisions, PrecisionChoice, SamplingOptions,
};

/// Display used when neither the flag nor the file names one: headless screenshots, so a
/// development run never grabs a real screen by surprise.
pub const DEFAULT_DISPLAY: &str = "png:kiosk-frames";

/// How long a finished picture stays up before the next prompt of a file loop, by default.
pub const DEFAULT_HOLD_MS: u64 = 3000;

/// The config file, as written. Every key is optional.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Backend string, e.g. `drm:/dev/dri/card0` or `spi:/dev/spidev0.0,dc=...`.
    pub display: Option<String>,
    /// Bundle directory.
    pub model: Option<PathBuf>,
    /// Prompts file, one prompt per line (`#` comments and blank lines skipped).
    pub prompts: Option<PathBuf>,
    /// `CHIP:LINE[,edge=falling|rising][,debounce_ms=N]`: a push button that starts the next
    /// prompt of the file.
    pub button: Option<String>,
    /// Diffusion steps (default: the model's recommendation).
    pub steps: Option<usize>,
    /// `auto`, `fp32`, `fp16` or `int8`.
    pub precision: Option<String>,
    /// Threads for matrix products.
    pub threads: Option<usize>,
    /// `cpu`, `cuda` or `auto` (cuda needs a build with a `cuda-*` SDK feature, issue #6).
    pub device: Option<String>,
    /// Base seed.
    pub seed: Option<u64>,
    /// `fixed`, `increment` or `random`.
    pub seed_policy: Option<String>,
    /// Text tokens to generate after the image.
    pub max_tokens: Option<usize>,
    /// Sampling temperature for text (0: greedy).
    pub temperature: Option<f32>,
    /// Milliseconds a finished picture stays before the next prompt of a file loop.
    pub hold_ms: Option<u64>,
    /// Stop after this many prompts (default: run until stopped).
    pub max_prompts: Option<u64>,
    /// Show elapsed milliseconds in the progress bar (default true; false gives screenshots
    /// that are identical from run to run and machine to machine).
    pub show_timings: Option<bool>,
}

impl FileConfig {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading config file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Makes relative `model`/`prompts` paths relative to `base` (the file's directory).
    pub fn rebase(&mut self, base: &Path) {
        for path in [&mut self.model, &mut self.prompts].into_iter().flatten() {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }
}

/// Which seed each prompt gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeedPolicy {
    /// The same seed every time: a prompt always gives the same picture.
    Fixed(u64),
    /// `base + n` for the n-th prompt (from 0): variety across loops, still reproducible.
    Increment(u64),
    /// A fresh random seed per prompt (logged, so a picture can be reproduced).
    Random,
}

impl SeedPolicy {
    /// `fixed`, `increment` or `random`, with base seed `seed`.
    pub fn parse(policy: &str, seed: u64) -> Result<Self, String> {
        match policy.trim().to_ascii_lowercase().as_str() {
            "fixed" => Ok(SeedPolicy::Fixed(seed)),
            "increment" => Ok(SeedPolicy::Increment(seed)),
            "random" => Ok(SeedPolicy::Random),
            other => Err(format!(
                "seed_policy {other:?}: expected fixed, increment or random"
            )),
        }
    }

    /// The seed of prompt number `n` (counting from 0).
    pub fn seed_for(self, n: u64) -> u64 {
        match self {
            SeedPolicy::Fixed(seed) => seed,
            SeedPolicy::Increment(base) => base.wrapping_add(n),
            SeedPolicy::Random => {
                // RandomState is keyed from the OS's random source once per process; hashing
                // the prompt number and the clock gives a new value per prompt.
                let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
                n.hash(&mut hasher);
                std::time::SystemTime::now().hash(&mut hasher);
                hasher.finish()
            }
        }
    }
}

/// Which edge of the button line is a press.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edge {
    /// High to low: a button to GND with a pull-up (the usual wiring).
    Falling,
    /// Low to high: a button to 3.3 V with a pull-down.
    Rising,
}

/// A GPIO push button: `CHIP:LINE[,edge=falling|rising][,debounce_ms=N]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ButtonSpec {
    /// GPIO character device, e.g. `/dev/gpiochip0`.
    pub chip: PathBuf,
    /// Line offset on that chip (`gpioinfo` lists them).
    pub line: u32,
    /// The edge that counts as a press.
    pub edge: Edge,
    /// Edges closer than this to the last accepted one are contact bounce.
    pub debounce: Duration,
}

impl std::str::FromStr for ButtonSpec {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let fail = |why: String| format!("button {spec:?}: {why}");
        let mut parts = spec.split(',');
        let head = parts.next().unwrap_or("").trim();
        let (chip, line) = head
            .rsplit_once(':')
            .ok_or_else(|| fail("expected CHIP:LINE, e.g. /dev/gpiochip0:43".into()))?;
        if chip.is_empty() {
            return Err(fail("missing the GPIO chip before ':'".into()));
        }
        let line = line
            .trim()
            .parse::<u32>()
            .map_err(|e| fail(format!("line {line:?}: {e}")))?;
        let mut button = ButtonSpec {
            chip: PathBuf::from(chip),
            line,
            edge: Edge::Falling,
            debounce: Duration::from_millis(200),
        };
        for option in parts.map(str::trim).filter(|p| !p.is_empty()) {
            match option.split_once('=') {
                Some(("edge", "falling")) => button.edge = Edge::Falling,
                Some(("edge", "rising")) => button.edge = Edge::Rising,
                Some(("debounce_ms", ms)) => {
                    let ms = ms
                        .parse::<u64>()
                        .map_err(|e| fail(format!("debounce_ms={ms}: {e}")))?;
                    button.debounce = Duration::from_millis(ms);
                }
                _ => {
                    return Err(fail(format!(
                        "unknown option {option:?} (edge=falling|rising, debounce_ms=N)"
                    )))
                }
            }
        }
        Ok(button)
    }
}

/// Where prompts come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// The file's prompts in a loop, `hold` apart.
    File(PathBuf),
    /// One prompt per line of standard input, until end of input.
    Stdin,
    /// Each button press starts the next prompt of the file.
    Button { spec: ButtonSpec, prompts: PathBuf },
}

/// The command-line values that can override the file (`None`: not given).
#[derive(Debug, Default)]
pub struct Overrides {
    pub display: Option<String>,
    pub model: Option<PathBuf>,
    pub prompts: Option<PathBuf>,
    pub stdin: bool,
    pub button: Option<String>,
    pub steps: Option<usize>,
    pub precision: Option<String>,
    pub threads: Option<usize>,
    pub device: Option<String>,
    pub seed: Option<u64>,
    pub seed_policy: Option<String>,
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub hold_ms: Option<u64>,
    pub max_prompts: Option<u64>,
    pub no_timings: bool,
}

/// Everything the kiosk runs with, resolved and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub display: BackendConfig,
    /// `None`: the repository's default bundle (`model::default_bundle`).
    pub model: Option<PathBuf>,
    pub source: Source,
    pub load: LoadOptions,
    pub steps: Option<usize>,
    pub seed: SeedPolicy,
    pub max_tokens: usize,
    pub temperature: f32,
    pub hold: Duration,
    pub max_prompts: Option<u64>,
    pub show_timings: bool,
}

impl Settings {
    /// Merges the file (if any) and the flags; flags win.
    pub fn resolve(file: FileConfig, cli: Overrides) -> Result<Self, String> {
        let display_spec = cli
            .display
            .or(file.display)
            .unwrap_or_else(|| DEFAULT_DISPLAY.to_owned());
        let display = display_spec
            .parse::<BackendConfig>()
            .map_err(|e| format!("display: {e}"))?;
        let prompts = cli.prompts.or(file.prompts);
        let source = if cli.stdin {
            Source::Stdin
        } else if let Some(button) = cli.button.or(file.button) {
            let spec = button.parse::<ButtonSpec>()?;
            let prompts = prompts.ok_or_else(|| {
                "a button needs a prompts file (--prompts FILE or prompts = \"...\"): each \
                 press draws its next line"
                    .to_owned()
            })?;
            Source::Button { spec, prompts }
        } else {
            Source::File(prompts.ok_or_else(|| {
                "no prompts: pass --prompts FILE, --stdin or --button CHIP:LINE (or set \
                 prompts in the config file)"
                    .to_owned()
            })?)
        };
        let precision = match cli.precision.or(file.precision) {
            Some(p) => p
                .parse::<PrecisionChoice>()
                .map_err(|e| format!("precision {p:?}: {e}"))?,
            None => PrecisionChoice::Auto,
        };
        let device = match cli.device.or(file.device) {
            Some(d) => d.parse::<Device>().map_err(|e| format!("device: {e}"))?,
            None => Device::Cpu,
        };
        let threads = cli.threads.or(file.threads);
        let seed = cli.seed.or(file.seed).unwrap_or(0);
        let seed = match cli.seed_policy.or(file.seed_policy) {
            Some(policy) => SeedPolicy::parse(&policy, seed)?,
            None => SeedPolicy::Fixed(seed),
        };
        let temperature = cli.temperature.or(file.temperature).unwrap_or(0.0);
        let max_prompts = cli.max_prompts.or(file.max_prompts);
        if max_prompts == Some(0) {
            return Err(
                "max_prompts must be at least 1 (leave it out to run until stopped)".into(),
            );
        }
        let settings = Settings {
            display,
            model: cli.model.or(file.model),
            source,
            load: LoadOptions {
                precision: PartPrecisions::all(precision),
                threads,
                device,
                ..LoadOptions::default()
            },
            steps: cli.steps.or(file.steps),
            seed,
            max_tokens: cli.max_tokens.or(file.max_tokens).unwrap_or(0),
            temperature,
            hold: Duration::from_millis(cli.hold_ms.or(file.hold_ms).unwrap_or(DEFAULT_HOLD_MS)),
            max_prompts,
            show_timings: !cli.no_timings && file.show_timings.unwrap_or(true),
        };
        // The SDK's own checks, before any device or model is touched.
        settings.load.validate().map_err(|e| e.to_string())?;
        settings
            .generate_options(0)
            .validate()
            .map_err(|e| e.to_string())?;
        Ok(settings)
    }

    /// The generation options of one picture with `seed` (previews on: every step is shown).
    pub fn generate_options(&self, seed: u64) -> GenerateOptions {
        GenerateOptions {
            seed,
            max_tokens: Some(self.max_tokens),
            sampling: SamplingOptions {
                temperature: self.temperature,
                ..Default::default()
            },
            steps: self.steps,
            previews: true,
            ..Default::default()
        }
    }
}

/// Reads a prompts file: one prompt per line; blank lines and lines starting with `#` skipped.
pub fn read_prompts(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading prompts file {}: {e}", path.display()))?;
    let prompts: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if prompts.is_empty() {
        return Err(format!(
            "prompts file {} has no prompts (one per line; '#' starts a comment)",
            path.display()
        ));
    }
    Ok(prompts)
}
