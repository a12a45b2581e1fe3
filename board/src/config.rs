//! Choosing a backend from one string, e.g. on a kiosk's command line or in a systemd unit.
//!
//! Syntax: `KIND:PATH[,key=value...]`.
//!
//! | string | backend |
//! | --- | --- |
//! | `png:DIR[,size=WxH]` | numbered PNG screenshots in `DIR` (default 800x480) |
//! | `fbdev:/dev/fb0` | Linux framebuffer (16/24/32 bpp) |
//! | `drm:/dev/dri/card0[,connector=HDMI-A-1][,mode=1280x720]` | DRM/KMS dumb buffer |
//! | `spi:/dev/spidev0.0,dc=N[,rst=N][,bl=N][,chip=/dev/gpiochip0][,model=st7789\|ili9341][,size=WxH][,offset=XxY][,rotation=0\|90\|180\|270][,invert=bool][,bgr=bool][,hz=N]` | SPI TFT panel |

use std::path::PathBuf;
use std::str::FromStr;

use embedded_graphics::prelude::Size;

use crate::display::Display;
use crate::error::{Error, Result};

/// Default size of PNG screenshots: a common 7" HDMI/DSI panel.
pub const DEFAULT_PNG_SIZE: Size = Size::new(800, 480);

/// A parsed backend string; [`BackendConfig::open`] turns it into a [`Display`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendConfig {
    /// Headless: PNG files `frame-00001.png`, ... in `dir` (created if missing).
    Png {
        /// Output directory.
        dir: PathBuf,
        /// Rendered size.
        size: Size,
    },
    /// Linux fbdev (`/dev/fbN`).
    Fbdev {
        /// The framebuffer node.
        device: PathBuf,
    },
    /// DRM/KMS with a dumb buffer (Jetson HDMI through nvidia-drm, most Linux GPUs).
    Drm {
        /// The card node, e.g. `/dev/dri/card0`.
        device: PathBuf,
        /// Connector name such as `HDMI-A-1`; default: the first connected one.
        connector: Option<String>,
        /// Mode `WxH`; default: the connector's preferred mode.
        mode: Option<Size>,
    },
    /// An SPI TFT panel driven with `mipidsi`.
    Spi(SpiConfig),
}

/// Panel controllers supported over SPI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PanelModel {
    /// Sitronix ST7789 (240×240 and 240×320 modules), RGB565.
    St7789,
    /// Ilitek ILI9341 (240×320 modules), RGB565.
    Ili9341,
}

impl PanelModel {
    /// The usual native (unrotated) size of modules with this controller.
    pub fn default_size(self) -> Size {
        match self {
            PanelModel::St7789 => Size::new(240, 240),
            PanelModel::Ili9341 => Size::new(240, 320),
        }
    }
}

/// Wiring and settings of an SPI panel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpiConfig {
    /// spidev node, e.g. `/dev/spidev0.0` (Jetson: enable spi1 with jetson-io first).
    pub spidev: PathBuf,
    /// GPIO character device holding the D/C, reset and backlight lines.
    pub gpiochip: PathBuf,
    /// Line offset of the data/command pin.
    pub dc: u32,
    /// Line offset of the reset pin, if wired (otherwise a software reset is sent).
    pub reset: Option<u32>,
    /// Line offset of the backlight enable, if wired (driven high after init).
    pub backlight: Option<u32>,
    /// Controller.
    pub model: PanelModel,
    /// Native panel size before rotation (default per model).
    pub size: Size,
    /// Offset of the visible area in controller memory (e.g. `0x80` for 240×240 ST7789 at 180°).
    pub offset: (u16, u16),
    /// Rotation in degrees: 0, 90, 180 or 270.
    pub rotation: u16,
    /// Colour inversion (most ST7789 modules need it; default true for ST7789).
    pub invert: bool,
    /// BGR subpixel order (default true for ILI9341 modules).
    pub bgr: bool,
    /// SPI clock in Hz.
    pub hz: u32,
}

impl SpiConfig {
    /// Defaults for `model` on `spidev` with D/C on line `dc` of `/dev/gpiochip0`.
    pub fn new(spidev: impl Into<PathBuf>, dc: u32, model: PanelModel) -> Self {
        SpiConfig {
            spidev: spidev.into(),
            gpiochip: PathBuf::from("/dev/gpiochip0"),
            dc,
            reset: None,
            backlight: None,
            model,
            size: model.default_size(),
            offset: (0, 0),
            rotation: 0,
            invert: model == PanelModel::St7789,
            bgr: model == PanelModel::Ili9341,
            hz: 24_000_000,
        }
    }

    /// Drawable size after rotation.
    pub fn drawn_size(&self) -> Size {
        if self.rotation % 180 == 90 {
            Size::new(self.size.height, self.size.width)
        } else {
            self.size
        }
    }
}

impl FromStr for BackendConfig {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self> {
        let fail = |reason: String| Error::Config {
            spec: spec.to_owned(),
            reason,
        };
        let (kind, rest) = spec.split_once(':').ok_or_else(|| {
            fail("expected KIND:PATH with KIND one of png, fbdev, drm, spi".into())
        })?;
        let mut parts = rest.split(',');
        let path = parts.next().unwrap_or("").trim();
        if path.is_empty() {
            return Err(fail(format!("{kind}: missing path after ':'")));
        }
        let mut options = Vec::new();
        for part in parts.filter(|p| !p.trim().is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| fail(format!("option {part:?} is not key=value")))?;
            options.push((k.trim(), v.trim()));
        }
        let mut opts = Options {
            options,
            fail: &fail,
        };
        let config = match kind {
            "png" => BackendConfig::Png {
                dir: path.into(),
                size: opts.take("size", parse_size)?.unwrap_or(DEFAULT_PNG_SIZE),
            },
            "fbdev" => BackendConfig::Fbdev {
                device: path.into(),
            },
            "drm" => BackendConfig::Drm {
                device: path.into(),
                connector: opts.take("connector", |v| Ok(v.to_owned()))?,
                mode: opts.take("mode", parse_size)?,
            },
            "spi" => BackendConfig::Spi(parse_spi(path, &mut opts)?),
            other => {
                return Err(fail(format!(
                    "unknown backend {other:?}; use png, fbdev, drm or spi"
                )))
            }
        };
        if let Some((k, _)) = opts.options.first() {
            return Err(fail(format!("unknown option {k:?} for {kind}")));
        }
        Ok(config)
    }
}

/// The `spi:` options.
fn parse_spi(path: &str, opts: &mut Options<'_>) -> Result<SpiConfig> {
    let model = opts
        .take("model", |v| match v.to_ascii_lowercase().as_str() {
            "st7789" => Ok(PanelModel::St7789),
            "ili9341" => Ok(PanelModel::Ili9341),
            _ => Err("expected st7789 or ili9341".into()),
        })?
        .unwrap_or(PanelModel::St7789);
    let dc = opts
        .take("dc", parse_u32)?
        .ok_or_else(|| (opts.fail)("spi needs dc=LINE (the D/C GPIO line offset)".into()))?;
    let mut c = SpiConfig::new(path, dc, model);
    if let Some(chip) = opts.take("chip", |v| Ok(PathBuf::from(v)))? {
        c.gpiochip = chip;
    }
    c.reset = opts.take("rst", parse_u32)?;
    c.backlight = opts.take("bl", parse_u32)?;
    if let Some(size) = opts.take("size", parse_size)? {
        c.size = size;
    }
    if let Some(offset) = opts.take("offset", parse_size)? {
        let x = u16::try_from(offset.width).map_err(|_| "offset x too large".to_owned());
        let y = u16::try_from(offset.height).map_err(|_| "offset y too large".to_owned());
        c.offset = (x.map_err(opts.fail)?, y.map_err(opts.fail)?);
    }
    if let Some(rotation) = opts.take("rotation", |v| match v {
        "0" | "90" | "180" | "270" => v.parse::<u16>().map_err(|e| e.to_string()),
        _ => Err("expected 0, 90, 180 or 270".into()),
    })? {
        c.rotation = rotation;
    }
    if let Some(invert) = opts.take("invert", parse_bool)? {
        c.invert = invert;
    }
    if let Some(bgr) = opts.take("bgr", parse_bool)? {
        c.bgr = bgr;
    }
    if let Some(hz) = opts.take("hz", parse_u32)? {
        c.hz = hz;
    }
    Ok(c)
}

/// The `key=value` options of one spec; taken ones are removed so leftovers can be reported.
struct Options<'a> {
    options: Vec<(&'a str, &'a str)>,
    fail: &'a dyn Fn(String) -> Error,
}

impl Options<'_> {
    /// Removes option `key` and parses its value.
    fn take<T>(
        &mut self,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>> {
        let Some(i) = self.options.iter().position(|(k, _)| *k == key) else {
            return Ok(None);
        };
        let (_, value) = self.options.remove(i);
        parse(value)
            .map(Some)
            .map_err(|e| (self.fail)(format!("{key}={value}: {e}")))
    }
}

/// `WxH` (also `W*H`); zero sizes are rejected later by the backend that uses them.
fn parse_size(v: &str) -> Result<Size, String> {
    let (w, h) = v
        .split_once(['x', 'X', '*'])
        .ok_or_else(|| "expected WIDTHxHEIGHT".to_owned())?;
    let w = w.trim().parse::<u32>().map_err(|e| format!("width: {e}"))?;
    let h = h
        .trim()
        .parse::<u32>()
        .map_err(|e| format!("height: {e}"))?;
    Ok(Size::new(w, h))
}

/// A decimal integer.
fn parse_u32(v: &str) -> Result<u32, String> {
    v.parse::<u32>().map_err(|e| e.to_string())
}

/// `1/0`, `true/false`, `yes/no`, `on/off`.
fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

impl BackendConfig {
    /// Opens the device and returns a ready [`Display`].
    ///
    /// Errors name the device node and what to check (missing node, permissions, a desktop
    /// holding the DRM master, SPI not enabled).
    pub fn open(&self) -> Result<Box<dyn Display>> {
        log::info!("opening display {self:?}");
        match self {
            BackendConfig::Png { dir, size } => {
                Ok(Box::new(crate::png::PngDisplay::new(dir, *size)?))
            }
            #[cfg(target_os = "linux")]
            BackendConfig::Fbdev { device } => {
                Ok(Box::new(crate::fbdev::FbdevDisplay::open(device)?))
            }
            #[cfg(target_os = "linux")]
            BackendConfig::Drm {
                device,
                connector,
                mode,
            } => Ok(Box::new(crate::drm::open_card(
                device,
                connector.as_deref(),
                *mode,
            )?)),
            #[cfg(target_os = "linux")]
            BackendConfig::Spi(config) => crate::spi::open(config),
            #[cfg(not(target_os = "linux"))]
            BackendConfig::Fbdev { device }
            | BackendConfig::Drm { device, .. }
            | BackendConfig::Spi(SpiConfig { spidev: device, .. }) => Err(Error::Unsupported {
                device: device.clone(),
                reason: "fbdev, DRM and SPI backends need Linux; use png:DIR".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<BackendConfig> {
        s.parse()
    }

    #[test]
    fn parses_every_backend() {
        assert_eq!(
            parse("png:out/shots").unwrap(),
            BackendConfig::Png {
                dir: "out/shots".into(),
                size: DEFAULT_PNG_SIZE
            }
        );
        assert_eq!(
            parse("png:x,size=320x240").unwrap(),
            BackendConfig::Png {
                dir: "x".into(),
                size: Size::new(320, 240)
            }
        );
        assert_eq!(
            parse("fbdev:/dev/fb0").unwrap(),
            BackendConfig::Fbdev {
                device: "/dev/fb0".into()
            }
        );
        assert_eq!(
            parse("drm:/dev/dri/card0,connector=HDMI-A-1,mode=1280x720").unwrap(),
            BackendConfig::Drm {
                device: "/dev/dri/card0".into(),
                connector: Some("HDMI-A-1".into()),
                mode: Some(Size::new(1280, 720)),
            }
        );
        let BackendConfig::Spi(spi) = parse(
            "spi:/dev/spidev0.0,dc=25,rst=27,bl=18,model=ili9341,rotation=90,invert=0,hz=40000000",
        )
        .unwrap() else {
            panic!("not spi")
        };
        assert_eq!(spi.dc, 25);
        assert_eq!((spi.reset, spi.backlight), (Some(27), Some(18)));
        assert_eq!(spi.model, PanelModel::Ili9341);
        assert_eq!(spi.drawn_size(), Size::new(320, 240));
        assert!(!spi.invert && spi.bgr);
        assert_eq!(spi.hz, 40_000_000);
        assert_eq!(spi.gpiochip, PathBuf::from("/dev/gpiochip0"));
    }

    #[test]
    fn rejects_bad_strings_with_reasons() {
        for (spec, needle) in [
            ("hdmi", "KIND:PATH"),
            ("vga:/dev/x", "unknown backend"),
            ("png:", "missing path"),
            ("png:x,size=big", "size=big"),
            ("png:x,colour=red", "unknown option \"colour\""),
            ("spi:/dev/spidev0.0", "dc=LINE"),
            ("spi:/dev/spidev0.0,dc=1,rotation=45", "rotation=45"),
            ("spi:/dev/spidev0.0,dc=1,model=ssd1306", "st7789"),
            ("fbdev:/dev/fb0,novalue", "not key=value"),
        ] {
            let err = parse(spec).unwrap_err().to_string();
            assert!(err.contains(needle), "{spec}: {err}");
        }
    }
}
