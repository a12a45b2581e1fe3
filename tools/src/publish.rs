//! Atomic output directories: write everything into a staging directory beside the target and
//! rename it into place at the end, so a failure never leaves a half-written checkpoint or bundle.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Fails with [`Error::OutputExists`] when `path` exists and is not an empty directory.
pub fn ensure_output_free(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
        Ok(meta) if meta.is_dir() => {
            let mut entries = std::fs::read_dir(path).map_err(|e| Error::io(path, e))?;
            match entries.next() {
                None => Ok(()),
                Some(_) => Err(Error::OutputExists {
                    path: path.to_path_buf(),
                }),
            }
        }
        Ok(_) => Err(Error::OutputExists {
            path: path.to_path_buf(),
        }),
    }
}

/// Creates `dir` atomically: checks it is free, lets `fill` write into a staging directory on
/// the same file system, then renames the staging directory to `dir`. On any error the staging
/// directory is removed and `dir` is left as it was.
pub fn write_dir_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    ensure_output_free(dir)?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let stem = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".to_string());
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{stem}.tmp"))
        .tempdir_in(&parent)
        .map_err(|e| Error::io(&parent, e))?;
    // A plain subdirectory gets the usual permissions (the temporary one is private).
    let tmp = staging.path().join("out");
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    fill(&tmp)?;
    ensure_output_free(dir)?;
    if dir.exists() {
        // An empty directory: replace it (`rename` onto a directory is not portable).
        std::fs::remove_dir(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    Ok(())
}
