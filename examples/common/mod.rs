//! Shared by the examples: where the default model lives (converted from the shipped checkpoint
//! on first use), and the error-printing `main` wrapper.
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

/// The shipped default model's checkpoint (committed, FP16 weights: docs in its README).
pub const DEFAULT_CHECKPOINT: &str = "models/shapes64/checkpoint";
/// Where the default bundle is converted to from [`DEFAULT_CHECKPOINT`] on first use (not
/// committed: the converter rebuilds it in seconds, and history keeps one copy of the weights).
pub const DEFAULT_BUNDLE: &str = "models/shapes64/bundle";

/// All three precisions, as the shipped model's card measures them.
fn convert_all(ckpt: &Path, bundle: &Path) -> Result<(), String> {
    let options = transfusion_tools::convert::ConvertOptions::all_precisions(true);
    transfusion_tools::convert::convert(ckpt, bundle, &options).map_err(|e| e.to_string())?;
    eprintln!("converted {} -> {}", ckpt.display(), bundle.display());
    Ok(())
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Resolves the model directory: `requested` if given; else the shipped model's bundle,
/// converted from its checkpoint when missing or older than the checkpoint's weights (a pull
/// that brings a retrained model rebuilds it); else, in a tree without the shipped checkpoint,
/// a bundle converted once from a random-initialised shapes64 checkpoint under `target/`, with
/// a loud warning that its images are noise.
pub fn model_dir(requested: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(dir) = requested {
        return Ok(dir);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ckpt = root.join(DEFAULT_CHECKPOINT);
    let shipped = root.join(DEFAULT_BUNDLE);
    let weights = ckpt.join("model.safetensors");
    if weights.is_file() {
        let manifest = shipped.join("manifest.json");
        match (modified(&manifest), modified(&weights)) {
            (Some(bundle), Some(ckpt)) if bundle >= ckpt => {}
            _ => {
                if shipped.exists() {
                    eprintln!(
                        "{DEFAULT_BUNDLE} is older than {DEFAULT_CHECKPOINT}: converting again"
                    );
                    std::fs::remove_dir_all(&shipped)
                        .map_err(|e| format!("{}: {e}", shipped.display()))?;
                }
                convert_all(&ckpt, &shipped)?;
            }
        }
        return Ok(shipped);
    }
    if shipped.join("manifest.json").is_file() {
        return Ok(shipped);
    }
    let fallback = root.join("target/untrained-shapes64");
    let bundle = fallback.join("bundle");
    eprintln!(
        "warning: no trained model in {DEFAULT_CHECKPOINT}; using an UNTRAINED shapes64 bundle \
         (random weights: the pipeline runs end to end, the picture is noise)"
    );
    if !bundle.join("manifest.json").is_file() {
        let ckpt = fallback.join("checkpoint");
        if !ckpt.join("config.json").is_file() {
            transfusion_tools::init::run("shapes64", 0, &ckpt).map_err(|e| e.to_string())?;
        }
        convert_all(&ckpt, &bundle)?;
    }
    Ok(bundle)
}
