//! The kiosk: the app flashed to a Jetson. It loops over prompts and shows every
//! generation live on a display: "loading model", then each diffusion step with its preview
//! and a progress bar, then the final image with any generated text.
//!
//! ```sh
//! # headless, 2 prompts from a file, frames as PNGs:
//! cargo run --release -p transfusion-kiosk -- --prompts prompts.txt --display png:frames --max-prompts 2
//! # on a Jetson (see docs/jetson.md and board/jetson/):
//! kiosk --config /opt/transfusion/kiosk.toml
//! ```
//!
//! Prompts come from a file in a loop (`--prompts FILE`), from standard input (`--stdin`), or
//! from a file one press at a time (`--button /dev/gpiochip0:LINE`). Settings come from
//! `--config kiosk.toml` with flags overriding it (`--check` prints what would run and the
//! machine's preflight, then exits; `--warm-up` compiles the GPU kernels ahead of the first
//! picture, see `check.rs`).
//!
//! Its own binary crate, linking the SDK and the display pipeline only: the model is a bundle
//! converted on the host (`model.rs`).
//!
//! Threads: inference runs on its own thread and pushes frames to the board's `RenderThread`,
//! which shows the newest one (a slow SPI panel only skips steps, it never slows sampling);
//! the main thread owns the display and releases it even if inference panics. SIGTERM/SIGINT
//! cancel the current generation at the next step (`Control::Cancel`), a last "stopped" frame
//! is drawn, the render thread shuts down (closing the device) and the process exits 0.

mod check;
mod config;
mod input;
mod model;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use transfusion_board::{Frame, ImageKind, RenderThread, Status};
use transfusion_sdk::{Control, Event, Model, Request, RgbImage, StopReason};

use config::{FileConfig, Overrides, Settings, Source};
use input::Input;

#[derive(Parser)]
#[command(
    about = "Generate pictures from a list of prompts and show each one live on a display",
    after_help = "Flags override the config file key by key. Example config: \
                  board/jetson/kiosk.toml; deployment: docs/jetson.md."
)]
struct Args {
    /// TOML config file (keys: display, model, prompts, button, steps, precision, threads,
    /// device, seed, seed_policy, max_tokens, temperature, hold_ms, max_prompts, show_timings).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Display backend: png:DIR[,size=WxH], fbdev:/dev/fb0, drm:/dev/dri/card0[,...],
    /// spi:/dev/spidev0.0,dc=N[,...] (default png:kiosk-frames).
    #[arg(long, value_name = "SPEC")]
    display: Option<String>,
    /// Bundle directory (default: models/shapes64/bundle, else the untrained fallback).
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Prompts file, one per line, looped ('#' comments and blank lines skipped).
    #[arg(long, value_name = "FILE")]
    prompts: Option<PathBuf>,
    /// Read prompts from standard input, one per line, until its end.
    #[arg(long, conflicts_with = "button")]
    stdin: bool,
    /// GPIO push button, CHIP:LINE[,edge=falling|rising][,debounce_ms=N] (Linux): each press
    /// draws the next prompt of the file.
    #[arg(long, value_name = "CHIP:LINE")]
    button: Option<String>,
    /// Diffusion steps (default: the model's recommendation).
    #[arg(long)]
    steps: Option<usize>,
    /// auto, fp32, fp16 or int8 (default auto).
    #[arg(long)]
    precision: Option<String>,
    /// Threads for matrix products.
    #[arg(long)]
    threads: Option<usize>,
    /// cpu, cuda or auto (cuda: the CUDA variant, build.sh --cuda; auto falls back to the CPU).
    #[arg(long)]
    device: Option<String>,
    /// Base seed (default 0).
    #[arg(long)]
    seed: Option<u64>,
    /// fixed (same seed every prompt), increment (seed + n), random (default fixed).
    #[arg(long, value_name = "POLICY")]
    seed_policy: Option<String>,
    /// Text tokens to generate after the image (default 0).
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Sampling temperature for text (default 0: greedy).
    #[arg(long)]
    temperature: Option<f32>,
    /// Milliseconds a finished picture stays before the next prompt of a file loop (default 3000).
    #[arg(long, value_name = "MS")]
    hold_ms: Option<u64>,
    /// End after N prompts (default: run until SIGTERM/SIGINT or the end of standard input).
    #[arg(long, visible_alias = "frames", value_name = "N")]
    max_prompts: Option<u64>,
    /// Show 0 ms instead of elapsed times, so screenshots are identical across runs and machines.
    #[arg(long)]
    no_timings: bool,
    /// Print the resolved settings, the prompt count and the preflight (CPU features, CUDA
    /// libraries and headers, GPU, Jetson power mode and sensors), then exit; opens no
    /// display. Fails when device is cuda and CUDA can not run here.
    #[arg(long)]
    check: bool,
    /// Compile the GPU kernels now instead of at the first picture: load the model on the
    /// configured device, generate one picture without a display, stamp the cache and exit.
    /// `if-stale` (the default) skips all that when the stamp matches this binary, model and
    /// settings; `always` redoes it. Nothing to do on the CPU.
    #[arg(long, value_name = "WHEN", num_args = 0..=1, default_missing_value = "if-stale",
          conflicts_with = "check")]
    warm_up: Option<check::WarmUp>,
}

impl Args {
    fn overrides(self) -> Overrides {
        Overrides {
            display: self.display,
            model: self.model,
            prompts: self.prompts,
            stdin: self.stdin,
            button: self.button,
            steps: self.steps,
            precision: self.precision,
            threads: self.threads,
            device: self.device,
            seed: self.seed,
            seed_policy: self.seed_policy,
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            hold_ms: self.hold_ms,
            max_prompts: self.max_prompts,
            no_timings: self.no_timings,
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<ExitCode, String> {
    let file = match &args.config {
        Some(path) => {
            let mut file = FileConfig::load(path)?;
            file.rebase(path.parent().unwrap_or_else(|| std::path::Path::new(".")));
            file
        }
        None => FileConfig::default(),
    };
    let check_only = args.check;
    let warm_up = args.warm_up;
    let settings = Settings::resolve(file, args.overrides())?;
    // Read the prompts before touching any device: a bad file fails fast and says which.
    let prompts = match &settings.source {
        Source::File(path) | Source::Button { prompts: path, .. } => config::read_prompts(path)?,
        Source::Stdin => Vec::new(),
    };
    if check_only {
        return check::print_check(&settings, &prompts);
    }
    if let Some(when) = warm_up {
        return check::warm_up(&settings, &prompts, when);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    input::install_signals(&stop, tx.clone())?;
    match &settings.source {
        Source::Stdin => input::spawn_stdin(tx.clone())?,
        Source::Button { spec, .. } => input::spawn_button(spec, tx.clone())?,
        Source::File(_) => {}
    }
    let display = settings.display.open().map_err(|e| e.to_string())?;
    let screen = RenderThread::spawn(display).map_err(|e| e.to_string())?;
    log::info!("kiosk on {}", screen.describe());

    let outcome = std::thread::scope(|scope| {
        let kiosk = Kiosk {
            settings: &settings,
            prompts: &prompts,
            screen: &screen,
            stop: &stop,
            rx,
            last: Frame::default(),
        };
        let worker = std::thread::Builder::new()
            .name("inference".into())
            .spawn_scoped(scope, move || kiosk.serve())
            .map_err(|e| format!("starting the inference thread: {e}"))?;
        worker.join().unwrap_or_else(|_| {
            screen.submit(Frame::new("", Status::error("internal error: see the log")));
            Err("the inference thread panicked".into())
        })
    });
    // Keep a sender alive until here so a closed channel never looks like input.
    drop(tx);
    // Draws the newest frame (the final image or "stopped"), then drops the display, which
    // releases the device (DRM master and CRTC, fbdev mapping, SPI and GPIO lines).
    let stats = screen.shutdown().map_err(|e| e.to_string())?;
    log::info!(
        "display released: {} frames submitted, {} shown, {} dropped as stale, {} failed",
        stats.submitted,
        stats.shown,
        stats.dropped,
        stats.failed
    );
    let outcome = outcome?;
    match outcome.stopped {
        Some(signal) => {
            log::info!(
                "stopped by {signal} after {} prompts ({} failed)",
                outcome.attempted,
                outcome.failed
            );
            Ok(ExitCode::SUCCESS)
        }
        None if outcome.failed > 0 => Err(format!(
            "{} of {} prompts failed (see the log)",
            outcome.failed, outcome.attempted
        )),
        None => {
            log::info!("done: {} prompts", outcome.attempted);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// How the prompt loop ended.
struct Outcome {
    /// Prompts started.
    attempted: u64,
    /// Prompts whose generation failed.
    failed: u64,
    /// The signal that stopped the kiosk, if one did.
    stopped: Option<&'static str>,
}

/// What to do next.
enum Next {
    Generate(String),
    Stop(&'static str),
    End,
}

/// The inference thread's state.
struct Kiosk<'a> {
    settings: &'a Settings,
    /// The prompts file's lines (empty for standard input).
    prompts: &'a [String],
    screen: &'a RenderThread,
    stop: &'a AtomicBool,
    rx: Receiver<Input>,
    /// The newest frame submitted: the base of the "stopped" frame.
    last: Frame,
}

/// Milliseconds of `d`, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Kiosk<'_> {
    fn show(&mut self, frame: Frame) {
        self.last = frame.clone();
        self.screen.submit(frame);
    }

    /// Loads the model and runs the prompt loop until the last prompt, the end of input or a
    /// signal. Per-prompt failures are shown and counted; failing to load is an error.
    fn serve(mut self) -> Result<Outcome, String> {
        self.show(Frame::new("Transfusion kiosk", Status::Loading));
        let model = match model::resolve(self.settings.model.clone()).and_then(|dir| {
            Model::load(&dir, &self.settings.load)
                .map_err(|e| format!("loading {}: {e}", dir.display()))
        }) {
            Ok(model) => model,
            Err(e) => {
                self.show(Frame::new("Transfusion kiosk", Status::error(&e)));
                return Err(e);
            }
        };
        log::info!(
            "model loaded in {} ms ({})",
            model.load_time().as_millis(),
            model.precisions_line()
        );
        let waiting = match self.settings.source {
            Source::Stdin => Some("ready: type a prompt"),
            Source::Button { .. } => Some("ready: press the button"),
            Source::File(_) => None,
        };
        if let Some(message) = waiting {
            let load_ms = self.label_ms(model.load_time());
            self.show(Frame::new(message, Status::Done { total_ms: load_ms }));
        }

        let mut outcome = Outcome {
            attempted: 0,
            failed: 0,
            stopped: None,
        };
        loop {
            if self
                .settings
                .max_prompts
                .is_some_and(|max| outcome.attempted >= max)
            {
                break;
            }
            let prompt = match self.next_prompt(outcome.attempted)? {
                Next::Generate(prompt) => prompt,
                Next::End => break,
                Next::Stop(signal) => {
                    outcome.stopped = Some(signal);
                    break;
                }
            };
            let seed = self.settings.seed.seed_for(outcome.attempted);
            outcome.attempted += 1;
            match self.generate(&model, &prompt, seed) {
                Ok(true) => {}
                Ok(false) => {
                    outcome.stopped = Some(self.signal_name());
                    break;
                }
                Err(e) => {
                    outcome.failed += 1;
                    log::error!("prompt {:?}: {e}", prompt);
                    self.show(Frame::new(&prompt, Status::error(&e)));
                }
            }
        }
        if let Some(signal) = outcome.stopped {
            let mut last = self.last.clone();
            last.status = Status::error(&format!("stopped ({signal})"));
            self.show(last);
        }
        Ok(outcome)
    }

    /// The name of the signal that set the stop flag (its message may still be queued).
    fn signal_name(&self) -> &'static str {
        while let Ok(input) = self.rx.try_recv() {
            if let Input::Stop(name) = input {
                return name;
            }
        }
        "signal"
    }

    /// Waits for the next prompt: after `hold` for a file loop, for a line of standard input,
    /// or for a button press; a signal ends any wait at once.
    fn next_prompt(&self, n: u64) -> Result<Next, String> {
        if self.stop.load(Ordering::SeqCst) {
            return Ok(Next::Stop(self.signal_name()));
        }
        let from_file = |n: u64| {
            let len = self.prompts.len() as u64;
            // `prompts` is never empty for a file source (checked at start).
            let i = usize::try_from(n % len.max(1)).unwrap_or(0);
            self.prompts.get(i).cloned().unwrap_or_default()
        };
        match self.settings.source {
            Source::File(_) => {
                if n > 0 {
                    let deadline = Instant::now() + self.settings.hold;
                    loop {
                        let left = deadline.saturating_duration_since(Instant::now());
                        match self.rx.recv_timeout(left) {
                            Ok(Input::Stop(signal)) => return Ok(Next::Stop(signal)),
                            Ok(_) => continue,
                            Err(RecvTimeoutError::Timeout) => break,
                            Err(RecvTimeoutError::Disconnected) => {
                                std::thread::sleep(left);
                                break;
                            }
                        }
                    }
                }
                Ok(Next::Generate(from_file(n)))
            }
            Source::Stdin => loop {
                match self.rx.recv() {
                    Ok(Input::Prompt(prompt)) => return Ok(Next::Generate(prompt)),
                    Ok(Input::Stop(signal)) => return Ok(Next::Stop(signal)),
                    Ok(Input::End) | Err(_) => return Ok(Next::End),
                    Ok(Input::Failed(e)) => return Err(e),
                    Ok(Input::Press) => continue,
                }
            },
            Source::Button { .. } => {
                // Presses made while the last picture was generating are not queued up.
                loop {
                    match self.rx.try_recv() {
                        Ok(Input::Stop(signal)) => return Ok(Next::Stop(signal)),
                        Ok(Input::Failed(e)) => return Err(e),
                        Ok(_) => continue,
                        Err(_) => break,
                    }
                }
                loop {
                    match self.rx.recv() {
                        Ok(Input::Press) => return Ok(Next::Generate(from_file(n))),
                        Ok(Input::Stop(signal)) => return Ok(Next::Stop(signal)),
                        Ok(Input::Failed(e)) => return Err(e),
                        Ok(Input::Prompt(_) | Input::End) => continue,
                        Err(_) => return Ok(Next::End),
                    }
                }
            }
        }
    }

    /// `d` in milliseconds for a label, or 0 with `--no-timings`.
    fn label_ms(&self, d: Duration) -> u64 {
        if self.settings.show_timings {
            millis(d)
        } else {
            0
        }
    }

    /// Generates one picture, showing every step. `Ok(false)`: cancelled by a signal.
    fn generate(&mut self, model: &Model, prompt: &str, seed: u64) -> Result<bool, String> {
        let options = self.settings.generate_options(seed);
        log::info!("generating {prompt:?} (seed {seed})");
        let start = Instant::now();
        let show_timings = self.settings.show_timings;
        let elapsed = move || {
            if show_timings {
                millis(start.elapsed())
            } else {
                0
            }
        };
        let stop = self.stop;
        let screen = self.screen;
        let mut current = Frame::new(
            prompt,
            Status::Generating {
                step: 0,
                total: 0,
                elapsed_ms: 0,
            },
        );
        let mut total = 0u32;
        let mut image: Option<RgbImage> = None;
        let result = model.generate(Request::Image { prompt }, &options, |event| {
            if stop.load(Ordering::SeqCst) {
                return Control::Cancel;
            }
            let step = match event {
                Event::ImageStart { steps, .. } => {
                    total = u32::try_from(steps).unwrap_or(u32::MAX);
                    0
                }
                Event::Step { index, preview, .. } => {
                    if let Some(preview) = preview {
                        current.image = Some(transfusion_board::FrameImage {
                            image: preview.clone(),
                            kind: ImageKind::Preview,
                        });
                    }
                    u32::try_from(index + 1).unwrap_or(u32::MAX)
                }
                Event::Image { image: decoded, .. } => {
                    image = Some(decoded.clone());
                    current.image = Some(transfusion_board::FrameImage {
                        image: decoded.clone(),
                        kind: ImageKind::Final,
                    });
                    total
                }
                Event::Token { text, .. } => {
                    if !text.is_empty() {
                        if !current.text.is_empty() {
                            current.push_text(" ");
                        }
                        current.push_text(text);
                    }
                    total
                }
                // Unknown words are logged by the SDK (the kiosk's journal); anything else
                // changes nothing on screen.
                _ => return Control::Continue,
            };
            current.status = Status::Generating {
                step,
                total,
                elapsed_ms: elapsed(),
            };
            screen.submit(current.clone());
            Control::Continue
        });
        // The newest frame the callback submitted, for a "stopped" frame.
        self.last = current;
        let output = result.map_err(|e| e.to_string())?;
        if output.stop == StopReason::Cancelled {
            log::info!("{prompt:?}: cancelled after {} ms", millis(start.elapsed()));
            return Ok(false);
        }
        let total_ms = millis(output.timings.total);
        log::info!(
            "{prompt:?}: {total_ms} ms ({} steps, stop {:?})",
            total,
            output.stop
        );
        let mut done = Frame::new(
            prompt,
            Status::Done {
                total_ms: self.label_ms(output.timings.total),
            },
        );
        if let Some(image) = output.images().last().map(|i| (*i).clone()).or(image) {
            done = done.with_image(image, ImageKind::Final);
        }
        let text = output.text();
        if !text.is_empty() {
            done.set_text(&text);
        }
        self.show(done);
        Ok(true)
    }
}
