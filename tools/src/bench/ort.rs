//! The onnxruntime baseline: `tools/bench/ort_bench.py` run as a subprocess on the same bundle,
//! its JSON read back.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use transfusion_sdk::manifest::Precision;

use crate::error::{Error, Result};

/// The script, built into the binary so `--ort` works from any directory (the file on disk
/// wins when it exists, so edits to it need no rebuild).
const SCRIPT: &str = include_str!("../../bench/ort_bench.py");

/// Where the script lives in the source tree.
const SCRIPT_IN_TREE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/ort_bench.py");

/// The workspace's virtual environment, as found at build time.
const WORKSPACE_VENV_PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python");

/// One step count of the script's report.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct OrtStep {
    pub steps: usize,
    pub ort_image_ms_p50: f64,
    pub ort_image_ms_p90: f64,
    pub ort_text_embed_ms_p50: f64,
    pub ort_backbone_ms_p50: f64,
    pub ort_patch_ms_p50: f64,
    pub ort_vae_decode_ms_p50: f64,
    pub ort_host_ms_p50: f64,
}

/// The script's JSON document (the fields the bench merges).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct OrtReport {
    /// onnxruntime's version.
    pub onnxruntime: String,
    /// Time to create the five inference sessions.
    pub ort_load_ms: f64,
    pub results: Vec<OrtStep>,
}

/// What to ask the script for.
pub struct OrtJob<'a> {
    pub bundle: &'a Path,
    pub precision: Precision,
    pub threads: usize,
    pub steps: &'a [usize],
    pub prompt_tokens: usize,
    pub runs: usize,
    pub warmup: usize,
}

/// The Python interpreter: `TRANSFUSION_PYTHON`, else `.venv/bin/python` in the current
/// directory or the workspace, else `python3` from `PATH`.
pub fn python() -> OsString {
    if let Some(p) = std::env::var_os("TRANSFUSION_PYTHON").filter(|p| !p.is_empty()) {
        return p;
    }
    for candidate in [
        Path::new(".venv/bin/python"),
        Path::new(WORKSPACE_VENV_PYTHON),
    ] {
        if candidate.is_file() {
            return candidate.as_os_str().to_owned();
        }
    }
    OsString::from("python3")
}

/// The script's path: the source tree's copy, else the built-in copy written into `scratch`.
fn script(scratch: &Path) -> Result<PathBuf> {
    let in_tree = PathBuf::from(SCRIPT_IN_TREE);
    if in_tree.is_file() {
        return Ok(in_tree);
    }
    let path = scratch.join("ort_bench.py");
    std::fs::write(&path, SCRIPT).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

/// Runs the script for one precision and thread count over all step counts.
pub fn run(job: &OrtJob) -> Result<OrtReport> {
    let scratch = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let script = script(scratch.path())?;
    let python = python();
    let steps: Vec<String> = job.steps.iter().map(usize::to_string).collect();
    let output = Command::new(&python)
        .arg(&script)
        .arg(job.bundle)
        .args(["--precision", job.precision.name()])
        .args(["--threads", &job.threads.to_string()])
        .args(["--steps", &steps.join(",")])
        .args(["--prompt-tokens", &job.prompt_tokens.to_string()])
        .args(["--runs", &job.runs.to_string()])
        .args(["--warmup", &job.warmup.to_string()])
        .arg("--json")
        .output()
        .map_err(|e| {
            Error::Invalid(format!(
                "cannot start {} (set TRANSFUSION_PYTHON to a Python with numpy and \
                 onnxruntime): {e}",
                python.to_string_lossy()
            ))
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(Error::Invalid(format!(
            "onnxruntime baseline ({} {}) failed ({}): {}",
            python.to_string_lossy(),
            script.display(),
            output.status,
            tail.join(" | ")
        )));
    }
    let report: OrtReport = serde_json::from_slice(&output.stdout).map_err(|e| {
        Error::Invalid(format!(
            "the onnxruntime baseline printed no valid JSON report: {e}"
        ))
    })?;
    Ok(report)
}
