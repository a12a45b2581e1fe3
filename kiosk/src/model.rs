//! Which bundle the kiosk loads. The kiosk links only the SDK and the display pipeline, never
//! the converter: a bundle is made once on the host (`transfusion convert`, or any example's
//! first run) and deployed with the app (board/jetson/deploy.sh).

use std::path::{Path, PathBuf};

/// The repository's default model bundle, for runs from a checkout (a device's config names
/// its own, e.g. /opt/transfusion/model).
pub fn default_bundle() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shapes64/bundle")
}

/// `requested`, else [`default_bundle`]; an error naming the directory and how to make the
/// bundle when it has no manifest.
pub fn resolve(requested: Option<PathBuf>) -> Result<PathBuf, String> {
    let dir = requested.unwrap_or_else(default_bundle);
    if dir.join("manifest.json").is_file() {
        return Ok(dir);
    }
    Err(format!(
        "no model bundle at {} (no manifest.json): convert one on the host with `transfusion \
         convert CHECKPOINT -o DIR` (`cargo run --example generate` converts the shipped model \
         to models/shapes64/bundle once) and point `model` / --model at it",
        dir.display()
    ))
}
