//! DRM/KMS backend: a dumb buffer (XRGB8888) scanned out on the first connected connector.
//!
//! This is how HDMI works on a Jetson Orin since L4T 35.4.1 (nvidia-drm; no fbdev) and on any
//! Linux box without a desktop. The steps: become DRM master, find a connected connector and its
//! preferred mode, pick a CRTC its encoders can drive, create a dumb buffer and a framebuffer
//! for it, `set_crtc`. Each flush copies the off-screen canvas into the mapped buffer.
//!
//! The device sits behind [`KmsDevice`] so the selection logic, error mapping and pixel copy
//! are tested against a fake; [`DrmCard`] (Linux only) implements it with the `drm` crate.
//! Dropping the display restores the CRTC as it was (e.g. the console) and frees the buffer.

use std::io;
use std::path::Path;

use embedded_graphics::pixelcolor::{Rgb888, RgbColor};
use embedded_graphics::prelude::Size;

use crate::canvas::Canvas;
use crate::display::Display;
use crate::error::{Error, Result};
use crate::frame::Frame;
use crate::pack::PixelFormat;

#[cfg(target_os = "linux")]
mod card;
#[cfg(target_os = "linux")]
pub use card::{open_card, DrmCard};

/// One display mode of a connector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModeInfo {
    /// The kernel's name, e.g. `1920x1080`.
    pub name: String,
    /// Horizontal resolution.
    pub width: u32,
    /// Vertical resolution.
    pub height: u32,
    /// Refresh rate in Hz.
    pub refresh: u32,
    /// Whether the monitor marks it preferred (its native resolution).
    pub preferred: bool,
}

/// A connector (HDMI port, DSI panel, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectorInfo {
    /// Object id.
    pub id: u32,
    /// Name as in `/sys/class/drm`, e.g. `HDMI-A-1`.
    pub name: String,
    /// Whether a monitor is attached.
    pub connected: bool,
    /// Modes, in the kernel's order (best first).
    pub modes: Vec<ModeInfo>,
    /// Encoders that can drive it.
    pub encoders: Vec<u32>,
    /// The encoder driving it now, if any.
    pub current_encoder: Option<u32>,
}

/// An encoder and the CRTCs it can be fed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncoderInfo {
    /// Object id.
    pub id: u32,
    /// The CRTC feeding it now, if any.
    pub crtc: Option<u32>,
    /// CRTC ids it can be fed from.
    pub possible_crtcs: Vec<u32>,
}

/// The connectors and encoders of a card.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    /// All connectors.
    pub connectors: Vec<ConnectorInfo>,
    /// All encoders.
    pub encoders: Vec<EncoderInfo>,
}

/// The output chosen to show frames on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// Connector id.
    pub connector: u32,
    /// Connector name, for messages.
    pub connector_name: String,
    /// Index of the mode in the connector's list.
    pub mode_index: usize,
    /// The mode.
    pub mode: ModeInfo,
    /// CRTC id.
    pub crtc: u32,
}

/// Chooses connector, mode and CRTC.
///
/// Connector: the one named `want_connector`, else the first connected one with modes.
/// Mode: `want_mode` (preferring the monitor's preferred entry, then the highest refresh),
/// else the preferred mode, else the first listed. CRTC: the one already driving the connector
/// (keeps the console's routing), else the first free one its encoders can use. Errors list
/// what exists so the operator can pick.
pub fn select_output(
    topology: &Topology,
    want_connector: Option<&str>,
    want_mode: Option<Size>,
) -> Result<Selection, String> {
    let describe = || {
        let all: Vec<String> = topology
            .connectors
            .iter()
            .map(|c| {
                let state = if c.connected {
                    "connected"
                } else {
                    "disconnected"
                };
                format!("{} {state}", c.name)
            })
            .collect();
        if all.is_empty() {
            "the card has no connectors".to_owned()
        } else {
            format!("connectors: {}", all.join(", "))
        }
    };
    let usable = |c: &&ConnectorInfo| c.connected && !c.modes.is_empty();
    let connector = match want_connector {
        Some(name) => {
            let c = topology
                .connectors
                .iter()
                .find(|c| c.name.eq_ignore_ascii_case(name))
                .ok_or_else(|| format!("no connector named {name} ({})", describe()))?;
            Some(c).filter(usable).ok_or_else(|| {
                format!("{name} has no monitor attached; check the cable and that it is on")
            })?
        }
        None => topology.connectors.iter().find(usable).ok_or_else(|| {
            format!(
                "no connected monitor ({}); check the cable and that the monitor is on",
                describe()
            )
        })?,
    };

    let mode_index = match want_mode {
        Some(size) => {
            let matching = connector
                .modes
                .iter()
                .enumerate()
                .filter(|(_, m)| m.width == size.width && m.height == size.height);
            let best = matching.max_by_key(|(i, m)| (m.preferred, m.refresh, usize::MAX - i));
            let Some((i, _)) = best else {
                let mut sizes: Vec<String> = connector
                    .modes
                    .iter()
                    .map(|m| format!("{}x{}", m.width, m.height))
                    .collect();
                sizes.dedup();
                return Err(format!(
                    "{} has no {}x{} mode (available: {})",
                    connector.name,
                    size.width,
                    size.height,
                    sizes.join(", ")
                ));
            };
            i
        }
        None => connector
            .modes
            .iter()
            .position(|m| m.preferred)
            .unwrap_or(0),
    };

    let encoder = |id: u32| topology.encoders.iter().find(|e| e.id == id);
    let current = connector
        .current_encoder
        .and_then(encoder)
        .and_then(|e| e.crtc);
    let crtc = current.or_else(|| {
        // CRTCs busy driving other connectors' encoders.
        let busy: Vec<u32> = topology.encoders.iter().filter_map(|e| e.crtc).collect();
        let candidates = connector
            .encoders
            .iter()
            .filter_map(|&id| encoder(id))
            .flat_map(|e| e.possible_crtcs.iter().copied());
        let all: Vec<u32> = candidates.collect();
        all.iter()
            .copied()
            .find(|c| !busy.contains(c))
            .or_else(|| all.first().copied())
    });
    let crtc = crtc.ok_or_else(|| format!("no CRTC can drive {}", connector.name))?;
    Ok(Selection {
        connector: connector.id,
        connector_name: connector.name.clone(),
        mode_index,
        mode: connector
            .modes
            .get(mode_index)
            .cloned()
            .ok_or_else(|| format!("{} has no mode {mode_index}", connector.name))?,
        crtc,
    })
}

/// What [`DrmDisplay`] needs from a DRM card; the real one is [`DrmCard`].
pub trait KmsDevice: Send {
    /// The card node, for messages.
    fn path(&self) -> &Path;
    /// Becomes DRM master (fails with EBUSY/EACCES while a desktop holds it).
    fn acquire_master(&mut self) -> io::Result<()>;
    /// Connectors, modes and encoders.
    fn topology(&mut self) -> io::Result<Topology>;
    /// Creates a `width × height` XRGB8888 dumb buffer and framebuffer; returns the pitch
    /// (bytes per row, at least `4 · width`).
    fn create_scanout(&mut self, width: u32, height: u32) -> io::Result<u32>;
    /// Shows the scanout buffer on the selected connector in the selected mode.
    fn set_crtc(&mut self, selection: &Selection) -> io::Result<()>;
    /// Maps the scanout buffer and lets `write` fill it.
    fn with_scanout(&mut self, write: &mut dyn FnMut(&mut [u8])) -> io::Result<()>;
    /// Restores the CRTC as it was and frees the buffer; called once, on drop.
    fn release(&mut self);
}

/// Whether a DRM call failed because another process is master.
fn is_busy(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ResourceBusy | io::ErrorKind::PermissionDenied
    )
}

/// Renders off-screen and copies finished frames into a KMS dumb buffer.
pub struct DrmDisplay<K: KmsDevice> {
    device: K,
    selection: Selection,
    canvas: Canvas<Rgb888>,
    pitch: usize,
}

impl<K: KmsDevice> DrmDisplay<K> {
    /// Takes over the display of `device`: master, output selection, scanout buffer, mode set.
    pub fn new(mut device: K, connector: Option<&str>, mode: Option<Size>) -> Result<Self> {
        let path = device.path().to_path_buf();
        let busy_or = |e: io::Error, what: &str| {
            if is_busy(&e) {
                Error::DrmBusy {
                    device: path.clone(),
                    source: e,
                }
            } else {
                Error::io(&path, what, e)
            }
        };
        device
            .acquire_master()
            .map_err(|e| busy_or(e, "DRM_IOCTL_SET_MASTER"))?;
        let topology = device
            .topology()
            .map_err(|e| Error::io(&path, "reading connectors", e))?;
        let selection =
            select_output(&topology, connector, mode).map_err(|message| Error::Device {
                device: path.clone(),
                what: "choosing an output".into(),
                message,
            })?;
        let (w, h) = (selection.mode.width, selection.mode.height);
        let pitch = device
            .create_scanout(w, h)
            .map_err(|e| Error::io(&path, format!("creating a {w}x{h} dumb buffer"), e))?
            as usize;
        if pitch < w as usize * 4 {
            device.release();
            return Err(Error::Unsupported {
                device: path,
                reason: format!("dumb buffer pitch {pitch} < 4 × width {w}"),
            });
        }
        // From here on, drop releases the buffer even if mode setting fails.
        let mut display = DrmDisplay {
            canvas: Canvas::new(Size::new(w, h), Rgb888::BLACK)
                .inspect_err(|_| device.release())?,
            device,
            selection,
            pitch,
        };
        display.flush()?;
        display
            .device
            .set_crtc(&display.selection)
            .map_err(|e| busy_or(e, "drmModeSetCrtc"))?;
        log::info!("{}", display.describe());
        Ok(display)
    }

    /// The connector, mode and CRTC in use.
    pub fn selection(&self) -> &Selection {
        &self.selection
    }

    /// The device (e.g. a test fake, to inspect what was set).
    pub fn device(&self) -> &K {
        &self.device
    }
}

impl<K: KmsDevice> Display for DrmDisplay<K> {
    fn size(&self) -> Size {
        self.canvas.size()
    }

    fn draw(&mut self, frame: &Frame) -> Result<()> {
        self.canvas.render_frame(frame);
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let (canvas, pitch) = (&self.canvas, self.pitch);
        let path = self.device.path().to_path_buf();
        self.device
            .with_scanout(&mut |mem| PixelFormat::XRGB8888.blit(canvas, mem, pitch, 0))
            .map_err(|e| Error::io(path, "mapping the dumb buffer", e))
    }

    fn describe(&self) -> String {
        let s = &self.selection;
        format!(
            "drm:{} {} {}x{}@{} (crtc {})",
            self.device.path().display(),
            s.connector_name,
            s.mode.width,
            s.mode.height,
            s.mode.refresh,
            s.crtc
        )
    }
}

impl<K: KmsDevice> Drop for DrmDisplay<K> {
    fn drop(&mut self) {
        self.device.release();
    }
}

#[cfg(test)]
mod tests;
