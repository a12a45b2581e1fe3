//! Shared by the examples: where the default model lives, and the set-up fallback used until a
//! trained model ships in `models/shapes64` (issue #4).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Runs an example's body with logging set up (`RUST_LOG`, default `warn`); an error is printed
/// as one line and gives a failing exit status.
pub fn main_with(run: impl FnOnce() -> Result<(), String>) -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The shipped default bundle.
pub const DEFAULT_BUNDLE: &str = "models/shapes64/bundle";

/// Resolves the model directory: `requested` if given; else the shipped default; else (no
/// trained model shipped yet) a bundle converted once from a random-initialised shapes64
/// checkpoint under `target/`, with a loud warning that its images are noise.
pub fn model_dir(requested: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(dir) = requested {
        return Ok(dir);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = root.join(DEFAULT_BUNDLE);
    if shipped.join("manifest.json").is_file() {
        return Ok(shipped);
    }
    let fallback = root.join("target/untrained-shapes64");
    let bundle = fallback.join("bundle");
    eprintln!(
        "warning: no trained model in {DEFAULT_BUNDLE} yet; using an UNTRAINED shapes64 bundle \
         (random weights: the pipeline runs end to end, the picture is noise)"
    );
    if !bundle.join("manifest.json").is_file() {
        let ckpt = fallback.join("checkpoint");
        let err = |e: transfusion_tools::error::Error| e.to_string();
        if !ckpt.join("config.json").is_file() {
            transfusion_tools::init::run("shapes64", 0, &ckpt).map_err(err)?;
        }
        let options = transfusion_tools::convert::ConvertOptions {
            precisions: vec![
                transfusion_tools::convert::BundlePrecision::Fp32,
                transfusion_tools::convert::BundlePrecision::Fp16,
                transfusion_tools::convert::BundlePrecision::Int8,
            ],
            int8: Default::default(),
            progress: true,
        };
        transfusion_tools::convert::convert(&ckpt, &bundle, &options).map_err(err)?;
        eprintln!("converted {}", bundle.display());
    }
    Ok(bundle)
}
