//! Headless backend: every flushed frame becomes `DIR/frame-00001.png`, `frame-00002.png`, ...
//!
//! Used by CI (golden-image tests run the exact layout code a panel runs) and for screenshots
//! of a kiosk without a screen. Files are written atomically (temporary file, sync, rename) by
//! the SDK's `save_png`, so a viewer polling the directory never sees a half-written PNG.

use std::path::{Path, PathBuf};

use embedded_graphics::pixelcolor::{Rgb888, RgbColor};
use embedded_graphics::prelude::Size;

use crate::canvas::Canvas;
use crate::display::Display;
use crate::error::{Error, Result};
use crate::frame::Frame;

/// Renders into an in-memory RGB888 canvas and writes numbered PNGs.
pub struct PngDisplay {
    dir: PathBuf,
    canvas: Canvas<Rgb888>,
    next: u32,
    last: Option<PathBuf>,
}

impl PngDisplay {
    /// A `size` display writing into `dir` (created if missing). Numbering starts at 1 and
    /// overwrites files of an earlier run, so a rerun gives the same file names.
    pub fn new(dir: impl AsRef<Path>, size: Size) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(&dir, "creating the PNG output directory", e))?;
        Ok(PngDisplay {
            dir,
            canvas: Canvas::new(size, Rgb888::BLACK)?,
            next: 1,
            last: None,
        })
    }

    /// The rendered pixels (what the next flush writes).
    pub fn canvas(&self) -> &Canvas<Rgb888> {
        &self.canvas
    }

    /// The file written by the last flush.
    pub fn last_path(&self) -> Option<&Path> {
        self.last.as_deref()
    }

    /// The file name of frame number `n`.
    pub fn file_name(n: u32) -> String {
        format!("frame-{n:05}.png")
    }
}

impl Display for PngDisplay {
    fn size(&self) -> Size {
        self.canvas.size()
    }

    fn draw(&mut self, frame: &Frame) -> Result<()> {
        self.canvas.render_frame(frame);
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let path = self.dir.join(Self::file_name(self.next));
        self.canvas.to_rgb_image()?.save_png(&path)?;
        log::debug!("wrote {}", path.display());
        self.next = self.next.saturating_add(1);
        self.last = Some(path);
        Ok(())
    }

    fn describe(&self) -> String {
        let s = self.canvas.size();
        format!("png:{} ({}x{})", self.dir.display(), s.width, s.height)
    }
}
