//! Display pipeline for Transfusion device apps (issue #5): pixels on glass.
//!
//! - [`Frame`] describes one screen (prompt, [`Status`], optional preview/final image,
//!   generated text) and [`render`] lays it out on any embedded-graphics `DrawTarget`, from a
//!   240×240 SPI panel to 1920×1080 HDMI, in any colour type convertible from `Rgb888`.
//! - [`Display`] backends, chosen by a [`BackendConfig`] string: headless PNG
//!   ([`PngDisplay`]), Linux fbdev ([`fbdev`]), DRM/KMS dumb buffers ([`drm`], Jetson HDMI)
//!   and SPI TFT panels through `mipidsi` ([`spi`]).
//! - [`RenderThread`] owns a display and shows the newest submitted frame, so a slow panel
//!   never holds up inference.
//!
//! ```no_run
//! use transfusion_board::{BackendConfig, Frame, RenderThread, Status};
//!
//! let display = "png:screens,size=320x240".parse::<BackendConfig>()?.open()?;
//! let screen = RenderThread::spawn(display)?;
//! for step in 1..=4 {
//!     screen.submit(Frame::new("a red fox", Status::Generating { step, total: 4, elapsed_ms: 100 * u64::from(step) }));
//! }
//! screen.submit(Frame::new("a red fox", Status::Done { total_ms: 420 }).with_text("A fox."));
//! screen.shutdown()?;
//! # Ok::<(), transfusion_board::Error>(())
//! ```

// Configs, device nodes and frames come from elsewhere: no panicking shortcuts outside tests.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod canvas;
pub mod config;
pub mod display;
pub mod drm;
pub mod error;
pub mod fbdev;
pub mod frame;
pub mod layout;
pub mod pack;
pub mod png;
pub mod render_thread;
pub mod spi;
pub mod text;

pub use canvas::Canvas;
pub use config::{BackendConfig, PanelModel, SpiConfig};
pub use display::Display;
pub use error::{Error, Result};
pub use frame::{Frame, FrameImage, ImageKind, Status};
pub use layout::{fit_image, render, Layout, Scale};
pub use png::PngDisplay;
pub use render_thread::{LatestSlot, RenderStats, RenderThread};
