//! The [`Display`] trait every backend implements.

use embedded_graphics::prelude::Size;

use crate::error::Result;
use crate::frame::Frame;

/// A screen (or a directory of screenshots) that shows [`Frame`]s.
///
/// Drawing and showing are split so that a backend renders off-screen and then presents the
/// finished picture in one step (no half-drawn frame on glass). `Send` because the display is
/// moved into the [render thread](crate::RenderThread); dropping a backend releases the device
/// (unmaps memory, restores the previous CRTC, closes nodes).
pub trait Display: Send {
    /// Drawable size in pixels (after rotation, for panels).
    fn size(&self) -> Size;

    /// Renders `frame` into the backend's off-screen buffer; nothing visible changes yet.
    fn draw(&mut self, frame: &Frame) -> Result<()>;

    /// Presents the last drawn frame: writes a PNG, copies to the scanout buffer, streams the
    /// changed rows to the panel.
    fn flush(&mut self) -> Result<()>;

    /// A short description for logs, e.g. `drm:/dev/dri/card0 HDMI-A-1 1920x1080@60`.
    fn describe(&self) -> String;

    /// [`draw`](Display::draw) then [`flush`](Display::flush).
    fn show(&mut self, frame: &Frame) -> Result<()> {
        self.draw(frame)?;
        self.flush()
    }
}

impl<T: Display + ?Sized> Display for Box<T> {
    fn size(&self) -> Size {
        (**self).size()
    }

    fn draw(&mut self, frame: &Frame) -> Result<()> {
        (**self).draw(frame)
    }

    fn flush(&mut self) -> Result<()> {
        (**self).flush()
    }

    fn describe(&self) -> String {
        (**self).describe()
    }
}
