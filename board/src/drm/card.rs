//! The real DRM card, through the `drm` crate's control API.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use drm::buffer::DrmFourcc;
use drm::control::dumbbuffer::DumbBuffer;
use drm::control::{connector, crtc, framebuffer, Device as ControlDevice, Mode, ModeTypeFlags};
use embedded_graphics::prelude::Size;

use super::{ConnectorInfo, DrmDisplay, EncoderInfo, KmsDevice, ModeInfo, Selection, Topology};
use crate::error::{Error, Result};

/// What to check when the card node is missing.
const DRM_MISSING_HINT: &str = "no DRM card node; list them with `ls /dev/dri/` (the display \
     controller may be card1). On a Jetson the nvidia-drm module must be loaded with modesetting: \
     `sudo modprobe nvidia-drm modeset=1`";
/// What to check when the card node may not be opened.
const DRM_PERMISSION_HINT: &str =
    "add the user to the `video` group (`sudo usermod -aG video $USER`, log in again) or run as root";

/// The open node; the `drm` traits need an `AsFd` type.
struct Card(File);

impl AsFd for Card {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl drm::Device for Card {}
impl ControlDevice for Card {}

/// A DRM card node (`/dev/dri/cardN`) driven through KMS with one dumb buffer.
pub struct DrmCard {
    path: PathBuf,
    card: Card,
    /// Handles and modes from the last `topology` call, to turn ids back into handles.
    connectors: Vec<(connector::Handle, Vec<Mode>)>,
    crtcs: Vec<crtc::Handle>,
    buffer: Option<DumbBuffer>,
    framebuffer: Option<framebuffer::Handle>,
    /// The CRTC and its state before we set it, to restore on release.
    saved: Option<(crtc::Info, connector::Handle)>,
}

impl DrmCard {
    /// Opens the card node read-write.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::open(&path, e, DRM_MISSING_HINT, DRM_PERMISSION_HINT))?;
        Ok(DrmCard {
            path,
            card: Card(file),
            connectors: Vec::new(),
            crtcs: Vec::new(),
            buffer: None,
            framebuffer: None,
            saved: None,
        })
    }

    fn not_found(what: &str, id: u32) -> io::Error {
        io::Error::new(io::ErrorKind::NotFound, format!("{what} {id} not found"))
    }
}

/// Opens `path` and takes over its display (see [`DrmDisplay::new`]).
pub fn open_card(
    path: impl AsRef<Path>,
    connector: Option<&str>,
    mode: Option<Size>,
) -> Result<DrmDisplay<DrmCard>> {
    DrmDisplay::new(DrmCard::open(path)?, connector, mode)
}

impl KmsDevice for DrmCard {
    fn path(&self) -> &Path {
        &self.path
    }

    fn acquire_master(&mut self) -> io::Result<()> {
        // Opening a primary node makes us master when nobody else is; this call then succeeds
        // and fails with EBUSY (or EACCES without CAP_SYS_ADMIN) when a desktop holds it.
        drm::Device::acquire_master_lock(&self.card)
    }

    fn topology(&mut self) -> io::Result<Topology> {
        let res = self.card.resource_handles()?;
        self.crtcs = res.crtcs().to_vec();
        self.connectors.clear();
        let mut topology = Topology::default();
        for &handle in res.connectors() {
            // Force-probe once at start-up so a monitor plugged in before boot has its modes.
            let info = self.card.get_connector(handle, true)?;
            let modes: Vec<ModeInfo> = info
                .modes()
                .iter()
                .map(|m| ModeInfo {
                    name: m.name().to_string_lossy().into_owned(),
                    width: u32::from(m.size().0),
                    height: u32::from(m.size().1),
                    refresh: m.vrefresh(),
                    preferred: m.mode_type().contains(ModeTypeFlags::PREFERRED),
                })
                .collect();
            topology.connectors.push(ConnectorInfo {
                id: handle.into(),
                name: format!("{}-{}", info.interface().as_str(), info.interface_id()),
                connected: info.state() == connector::State::Connected,
                modes,
                encoders: info.encoders().iter().map(|&e| e.into()).collect(),
                current_encoder: info.current_encoder().map(Into::into),
            });
            self.connectors.push((handle, info.modes().to_vec()));
        }
        for &handle in res.encoders() {
            let info = self.card.get_encoder(handle)?;
            topology.encoders.push(EncoderInfo {
                id: handle.into(),
                crtc: info.crtc().map(Into::into),
                possible_crtcs: res
                    .filter_crtcs(info.possible_crtcs())
                    .into_iter()
                    .map(Into::into)
                    .collect(),
            });
        }
        Ok(topology)
    }

    fn create_scanout(&mut self, width: u32, height: u32) -> io::Result<u32> {
        let buffer = self
            .card
            .create_dumb_buffer((width, height), DrmFourcc::Xrgb8888, 32)?;
        self.buffer = Some(buffer);
        let fb = self.card.add_framebuffer(&buffer, 24, 32)?;
        self.framebuffer = Some(fb);
        Ok(drm::buffer::Buffer::pitch(&buffer))
    }

    fn set_crtc(&mut self, s: &Selection) -> io::Result<()> {
        let crtc = *self
            .crtcs
            .iter()
            .find(|&&c| u32::from(c) == s.crtc)
            .ok_or_else(|| Self::not_found("CRTC", s.crtc))?;
        let (conn, modes) = self
            .connectors
            .iter()
            .find(|(c, _)| u32::from(*c) == s.connector)
            .ok_or_else(|| Self::not_found("connector", s.connector))?;
        let mode = *modes
            .get(s.mode_index)
            .ok_or_else(|| Self::not_found("mode", s.mode_index as u32))?;
        if self.saved.is_none() {
            self.saved = Some((self.card.get_crtc(crtc)?, *conn));
        }
        self.card
            .set_crtc(crtc, self.framebuffer, (0, 0), &[*conn], Some(mode))
    }

    fn with_scanout(&mut self, write: &mut dyn FnMut(&mut [u8])) -> io::Result<()> {
        // `DumbBuffer` is `Copy`; the mapping borrows the copy and is unmapped at scope end.
        let mut buffer = self
            .buffer
            .ok_or_else(|| io::Error::other("no scanout buffer"))?;
        {
            let mut map = self.card.map_dumb_buffer(&mut buffer)?;
            write(&mut map);
        }
        if let Some(fb) = self.framebuffer {
            // Needed by drivers that only scan out on demand (USB, SPI "tinydrm"); others
            // answer ENOSYS, which is fine.
            if let Err(e) = self.card.dirty_framebuffer(fb, &[]) {
                log::trace!("{}: DIRTYFB: {e}", self.path.display());
            }
        }
        Ok(())
    }

    fn release(&mut self) {
        if let Some((info, conn)) = self.saved.take() {
            // A CRTC that was off (no framebuffer or mode) is switched off again.
            let restore = match (info.framebuffer(), info.mode()) {
                (Some(fb), Some(mode)) => self.card.set_crtc(
                    info.handle(),
                    Some(fb),
                    info.position(),
                    &[conn],
                    Some(mode),
                ),
                _ => self.card.set_crtc(info.handle(), None, (0, 0), &[], None),
            };
            if let Err(e) = restore {
                log::warn!(
                    "{}: restoring the previous CRTC state: {e}",
                    self.path.display()
                );
            }
        }
        if let Some(fb) = self.framebuffer.take() {
            if let Err(e) = self.card.destroy_framebuffer(fb) {
                log::warn!("{}: destroying framebuffer: {e}", self.path.display());
            }
        }
        if let Some(buffer) = self.buffer.take() {
            if let Err(e) = self.card.destroy_dumb_buffer(buffer) {
                log::warn!("{}: destroying dumb buffer: {e}", self.path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_card_names_node_and_fix() {
        let err = DrmCard::open("/dev/dri/card-missing")
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with("/dev/dri/card-missing not found"), "{err}");
        assert!(err.contains("nvidia-drm modeset=1"), "{err}");
    }
}
