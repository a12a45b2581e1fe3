//! The crate's one error type.
//!
//! Every failure a kiosk operator can meet names the device node and says what to check, because
//! on a headless board the log line is often the only clue: a missing `/dev/fb0` on a recent
//! Jetson, a desktop session holding the DRM master, an SPI bus not enabled in the device tree.

use std::io;
use std::path::{Path, PathBuf};

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong between a [`Frame`](crate::Frame) and pixels on glass.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A backend string such as `spi:/dev/spidev0.0,dc=25` could not be parsed.
    #[error("invalid display config {spec:?}: {reason}")]
    Config {
        /// The string as given.
        spec: String,
        /// What is wrong with it and what is accepted.
        reason: String,
    },
    /// A device node does not exist.
    #[error("{} not found: {hint}", path.display())]
    DeviceMissing {
        /// The node that was opened.
        path: PathBuf,
        /// Backend-specific advice (which node to use instead, what to enable).
        hint: String,
    },
    /// A device node exists but this process may not open it.
    #[error("{}: permission denied: {hint}", path.display())]
    PermissionDenied {
        /// The node that was opened.
        path: PathBuf,
        /// Which group or udev rule grants access.
        hint: String,
    },
    /// Another process (a desktop session, a display manager) is the DRM master.
    #[error(
        "{} is busy: another DRM master (desktop or display manager) owns the display ({source}); \
         stop it (`sudo systemctl stop gdm` or `sudo systemctl isolate multi-user.target`) \
         or run from a text console (VT) instead of a desktop terminal",
        device.display()
    )]
    DrmBusy {
        /// The DRM card node.
        device: PathBuf,
        /// The kernel's answer (EBUSY, EACCES or EPERM).
        source: io::Error,
    },
    /// An I/O call on a device or file failed.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// The device node or file.
        path: PathBuf,
        /// What was being done (e.g. "FBIOGET_VSCREENINFO", "writing PNG").
        what: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The device works but offers nothing this crate can drive (e.g. an 8-bpp palette fbdev).
    #[error("{}: unsupported: {reason}", device.display())]
    Unsupported {
        /// The device node (or backend name).
        device: PathBuf,
        /// What was found and what is supported.
        reason: String,
    },
    /// A driver-level failure (SPI transfer, GPIO line, panel init) reported by an HAL crate.
    #[error("{}: {what}: {message}", device.display())]
    Device {
        /// The device node.
        device: PathBuf,
        /// What was being done.
        what: String,
        /// The driver's error, formatted.
        message: String,
    },
    /// An image operation failed (PNG encoding or writing, size overflow).
    #[error(transparent)]
    Image(#[from] transfusion_image::Error),
    /// The render thread panicked; the display it owned has been dropped.
    #[error("the render thread panicked")]
    RenderThreadPanicked,
}

impl Error {
    /// An I/O error while doing `what` on `path`.
    pub fn io(path: impl AsRef<Path>, what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            what: what.into(),
            source,
        }
    }

    /// Maps the error of opening a device node: a missing node gets `missing_hint`, a refused
    /// one `permission_hint`, anything else stays an [`Error::Io`].
    pub fn open(
        path: impl AsRef<Path>,
        source: io::Error,
        missing_hint: &str,
        permission_hint: &str,
    ) -> Self {
        let path = path.as_ref().to_path_buf();
        match source.kind() {
            io::ErrorKind::NotFound => Error::DeviceMissing {
                path,
                hint: missing_hint.to_owned(),
            },
            io::ErrorKind::PermissionDenied => Error::PermissionDenied {
                path,
                hint: permission_hint.to_owned(),
            },
            _ => Error::Io {
                path,
                what: "open".to_owned(),
                source,
            },
        }
    }

    /// A driver error (anything `Debug`, as HAL error types are) while doing `what`.
    pub fn device(
        path: impl AsRef<Path>,
        what: impl Into<String>,
        err: impl std::fmt::Debug,
    ) -> Self {
        Error::Device {
            device: path.as_ref().to_path_buf(),
            what: what.into(),
            message: format!("{err:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_node_names_device_and_hint() {
        let e = Error::open(
            "/dev/fb0",
            io::Error::from(io::ErrorKind::NotFound),
            "use drm:/dev/dri/card0",
            "join the video group",
        );
        let text = e.to_string();
        assert!(text.starts_with("/dev/fb0 not found"), "{text}");
        assert!(text.contains("drm:/dev/dri/card0"), "{text}");
        let e = Error::open(
            "/dev/fb0",
            io::Error::from(io::ErrorKind::PermissionDenied),
            "x",
            "join the video group",
        );
        assert!(e.to_string().contains("video group"));
    }

    #[test]
    fn drm_busy_says_how_to_fix() {
        let e = Error::DrmBusy {
            device: "/dev/dri/card0".into(),
            source: io::Error::from_raw_os_error(16),
        };
        let text = e.to_string();
        assert!(text.contains("/dev/dri/card0"));
        assert!(text.contains("systemctl stop gdm"));
    }
}
