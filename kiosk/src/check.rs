//! The kiosk's `--check` (what would run, and whether this machine can run it) and
//! `--warm-up` (compile the GPU kernels before the first frame).
//!
//! On a GPU, tract-cuda compiles each kernel with NVRTC the first time it runs, for the GPU's
//! architecture, and keeps the result under `$XDG_CACHE_HOME/tract/` (else `~/.cache/tract/`).
//! Without a warm-up the kiosk's first picture waits for all of that. `--warm-up` loads the
//! model on the configured device and generates one picture with no display, so the cache is
//! full when the kiosk starts; it then leaves a stamp beside the cache naming the binary, the
//! model and the settings, and a later `--warm-up` with the same stamp returns at once. The
//! CUDA drop-in of the unit runs it before every start (`ExecStartPre=`), in the same sandbox
//! and as the same user as the kiosk.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use transfusion_sdk::{Control, Device, GenerateOptions, Model, PrecisionChoice, Request};

use crate::config::{Settings, Source};
use crate::model;

/// When `--warm-up` generates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WarmUp {
    /// Unless the stamp says this binary, model and settings were warmed up already.
    IfStale,
    /// Every time.
    Always,
}

/// `--check`: the resolved settings and the preflight. Fails when `device = cuda` and the
/// preflight says CUDA can not run (what the kiosk would then fail with at start).
pub fn print_check(settings: &Settings, prompts: &[String]) -> Result<ExitCode, String> {
    println!("display: {:?}", settings.display);
    match &settings.model {
        Some(dir) => println!("model: {}", dir.display()),
        None => println!("model: default ({})", model::default_bundle().display()),
    }
    match &settings.source {
        Source::File(path) => println!(
            "prompts: {} ({} prompts, looped)",
            path.display(),
            prompts.len()
        ),
        Source::Stdin => println!("prompts: standard input"),
        Source::Button {
            spec,
            prompts: path,
        } => println!(
            "prompts: {} ({} prompts), one per press of {}:{} ({:?} edge, {} ms debounce)",
            path.display(),
            prompts.len(),
            spec.chip.display(),
            spec.line,
            spec.edge,
            spec.debounce.as_millis()
        ),
    }
    let precision = match settings.load.precision.backbone {
        PrecisionChoice::Auto => "auto".to_owned(),
        PrecisionChoice::Exact(p) => p.to_string(),
    };
    println!(
        "load: precision {precision}, threads {:?}, device {:?}",
        settings.load.threads, settings.load.device
    );
    println!(
        "generate: steps {:?}, seed {:?}, max_tokens {}, temperature {}",
        settings.steps, settings.seed, settings.max_tokens, settings.temperature
    );
    println!(
        "loop: hold {} ms, max_prompts {:?}, show_timings {}",
        settings.hold.as_millis(),
        settings.max_prompts,
        settings.show_timings
    );
    let preflight = transfusion_sdk::platform::preflight_host();
    print!("{}", preflight.to_text());
    let ready = preflight.cuda_ready();
    match settings.load.device {
        Device::Cpu => println!("device cpu: CUDA is not used"),
        Device::Auto if ready => println!("device auto: would run on the GPU"),
        Device::Auto => println!("device auto: would fall back to the CPU (problems above)"),
        Device::Cuda if ready => println!("device cuda: ready"),
        Device::Cuda => {
            return Err("device = cuda, but CUDA can not run here (problems above)".to_owned())
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where the stamp lives: beside tract's kernel cache, so clearing one clears both.
fn stamp_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("transfusion-kiosk.warm-up"))
}

/// What the stamp records: this binary, the model's manifest and the settings that decide
/// which kernels run. Sizes and modification times stand in for contents.
fn stamp_key(settings: &Settings, model_dir: &std::path::Path) -> String {
    let file = |p: &std::path::Path| {
        std::fs::metadata(p)
            .map(|m| {
                let modified = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                format!("{} bytes, mtime {modified}", m.len())
            })
            .unwrap_or_else(|_| "unreadable".to_owned())
    };
    let exe = std::env::current_exe().map_or_else(|_| "unknown".to_owned(), |p| file(&p));
    format!(
        "kiosk {} ({exe}); model {} ({}); device {:?}; precision {:?}; steps {:?}; max_tokens {}\n",
        env!("CARGO_PKG_VERSION"),
        model_dir.display(),
        file(&model_dir.join("manifest.json")),
        settings.load.device,
        settings.load.precision,
        settings.steps,
        settings.max_tokens.min(4),
    )
}

/// `--warm-up`: see the module documentation.
pub fn warm_up(settings: &Settings, prompts: &[String], when: WarmUp) -> Result<ExitCode, String> {
    if settings.load.device == Device::Cpu {
        println!(
            "warm-up: device cpu: tract's CPU kernels are compiled ahead of time, nothing to do"
        );
        return Ok(ExitCode::SUCCESS);
    }
    match settings.load.device.resolve() {
        Ok(Device::Cuda) => {}
        Ok(_) => {
            println!("warm-up: no usable GPU (reason logged): the kiosk will run on the CPU");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => {
            eprint!("{}", transfusion_sdk::platform::preflight_host().to_text());
            return Err(format!("warm-up: {e}"));
        }
    }
    let dir = model::resolve(settings.model.clone())?;
    let key = stamp_key(settings, &dir);
    let stamp = stamp_path();
    if when == WarmUp::IfStale {
        if let Some(path) = &stamp {
            if std::fs::read_to_string(path).is_ok_and(|old| old == key) {
                println!(
                    "warm-up: already done for this binary, model and settings ({}); \
                     --warm-up=always redoes it",
                    path.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    let model = Model::load(&dir, &settings.load)
        .map_err(|e| format!("warm-up: loading {}: {e}", dir.display()))?;
    println!(
        "warm-up: model loaded in {} ms ({})",
        model.load_time().as_millis(),
        model.precisions_line()
    );
    let prompt = prompts.first().map_or("warm-up", String::as_str);
    let options = GenerateOptions {
        max_tokens: Some(settings.max_tokens.min(4)),
        ..settings.generate_options(0)
    };
    let mut times = Vec::with_capacity(2);
    for _ in 0..2 {
        let start = Instant::now();
        model
            .generate(Request::Image { prompt }, &options, |_| Control::Continue)
            .map_err(|e| format!("warm-up: generating {prompt:?}: {e}"))?;
        times.push(start.elapsed().as_millis());
    }
    println!(
        "warm-up: first picture {} ms (compiles the kernels the cache lacked), second {} ms",
        times.first().copied().unwrap_or(0),
        times.get(1).copied().unwrap_or(0)
    );
    match &stamp {
        Some(path) => {
            let written = path
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(path, &key));
            match written {
                Ok(()) => println!("warm-up: stamp {}", path.display()),
                Err(e) => log::warn!(
                    "warm-up: could not write the stamp {}: {e} (the next start warms up again)",
                    path.display()
                ),
            }
        }
        None => log::warn!("warm-up: neither XDG_CACHE_HOME nor HOME is set: no stamp written"),
    }
    Ok(ExitCode::SUCCESS)
}
