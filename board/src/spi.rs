//! SPI TFT panels (ST7789, ILI9341) through `mipidsi`, on Linux spidev plus a GPIO for D/C.
//!
//! A panel at 24 MHz moves about 75 full 240×240 RGB565 frames per second at best, far less
//! in practice, so the backend renders into an off-screen canvas in the panel's own colour
//! format and then streams only the band of rows that changed since the last flush (a progress
//! step usually touches the bar and the preview, not the prompt). The pieces are generic over
//! embedded-hal 1.0 traits, so tests drive them with a mock SPI bus and pin; [`open`] wires
//! real `linux-embedded-hal` devices (Linux only).

use core::fmt::Debug;
use std::path::PathBuf;

use embedded_graphics::pixelcolor::{Rgb565, Rgb888, RgbColor};
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::Rectangle;
use embedded_hal::delay::DelayNs;
use embedded_hal::digital::OutputPin;
use embedded_hal::spi::SpiDevice;
use mipidsi::interface::{Interface, InterfaceKind, SpiError};
use mipidsi::models::{ILI9341Rgb565, Model, ST7789};
use mipidsi::options::{ColorInversion, ColorOrder, Orientation, Rotation};
use mipidsi::Builder;

use crate::canvas::Canvas;
use crate::config::{PanelModel, SpiConfig};
use crate::display::Display;
use crate::error::{Error, Result};
use crate::frame::Frame;

/// Bytes per SPI write: spidev's default `bufsiz` is 4096, and larger writes fail (EMSGSIZE)
/// unless the module parameter is raised, so pixels go out in chunks of this size.
pub const SPI_CHUNK: usize = 4096;

/// A `mipidsi` interface over an SPI device and a D/C pin that owns its transfer buffer
/// (mipidsi's own `SpiInterface` borrows one, which cannot move into the render thread).
pub struct ChunkedSpi<SPI, DC> {
    spi: SPI,
    dc: DC,
    buffer: Vec<u8>,
}

impl<SPI: SpiDevice, DC: OutputPin> ChunkedSpi<SPI, DC> {
    /// Sends at most `chunk` bytes per SPI write (at least 64).
    pub fn new(spi: SPI, dc: DC, chunk: usize) -> Self {
        ChunkedSpi {
            spi,
            dc,
            buffer: vec![0; chunk.max(64)],
        }
    }

    /// Gives back the bus and pin.
    pub fn release(self) -> (SPI, DC) {
        (self.spi, self.dc)
    }

    fn write(&mut self, len: usize) -> Result<(), SpiError<SPI::Error, DC::Error>> {
        // `len` never exceeds the buffer (callers fill at most its length).
        let bytes = self.buffer.get(..len).unwrap_or(&[]);
        self.spi.write(bytes).map_err(SpiError::Spi)
    }
}

impl<SPI: SpiDevice, DC: OutputPin> Interface for ChunkedSpi<SPI, DC> {
    type Word = u8;
    type Error = SpiError<SPI::Error, DC::Error>;
    const KIND: InterfaceKind = InterfaceKind::Serial4Line;

    fn send_command(&mut self, command: u8, args: &[u8]) -> Result<(), Self::Error> {
        self.dc.set_low().map_err(SpiError::Dc)?;
        self.spi.write(&[command]).map_err(SpiError::Spi)?;
        self.dc.set_high().map_err(SpiError::Dc)?;
        for chunk in args.chunks(self.buffer.len()) {
            self.spi.write(chunk).map_err(SpiError::Spi)?;
        }
        Ok(())
    }

    fn send_pixels<const N: usize>(
        &mut self,
        pixels: impl IntoIterator<Item = [u8; N]>,
    ) -> Result<(), Self::Error> {
        let cap = self.buffer.len() / N * N;
        let mut filled = 0;
        for pixel in pixels {
            if filled + N > cap {
                self.write(filled)?;
                filled = 0;
            }
            match self.buffer.get_mut(filled..filled + N) {
                Some(slot) => {
                    slot.copy_from_slice(&pixel);
                    filled += N;
                }
                // A buffer smaller than one pixel: send the pixel on its own.
                None => self.spi.write(&pixel).map_err(SpiError::Spi)?,
            }
        }
        if filled > 0 {
            self.write(filled)?;
        }
        Ok(())
    }

    fn send_repeated_pixel<const N: usize>(
        &mut self,
        pixel: [u8; N],
        count: u32,
    ) -> Result<(), Self::Error> {
        let per_chunk = self.buffer.len() / N;
        for chunk in self.buffer.chunks_exact_mut(N) {
            chunk.copy_from_slice(&pixel);
        }
        let mut left = count as usize;
        while left > 0 {
            let n = left.min(per_chunk);
            self.write(n * N)?;
            left -= n;
        }
        Ok(())
    }
}

/// A [`Display`] over any embedded-graphics target (a `mipidsi` panel in practice): renders
/// into a canvas of the target's colour type and sends only the rows that changed.
pub struct PanelDisplay<T: DrawTarget> {
    target: T,
    device: PathBuf,
    canvas: Canvas<T::Color>,
    /// What the panel shows now; `None` until the first successful flush (or after a failed one).
    shown: Option<Vec<T::Color>>,
    /// Pins that must stay requested while the panel is used (backlight).
    _keep: Vec<Box<dyn Send>>,
}

impl<T> PanelDisplay<T>
where
    T: DrawTarget + Send,
    T::Color: From<Rgb888> + Send,
    T::Error: Debug,
{
    /// Wraps an initialised panel; `device` names it in errors.
    pub fn new(target: T, device: impl Into<PathBuf>) -> Result<Self> {
        let size = target.bounding_box().size;
        Ok(PanelDisplay {
            target,
            device: device.into(),
            canvas: Canvas::new(size, T::Color::from(Rgb888::BLACK))?,
            shown: None,
            _keep: Vec::new(),
        })
    }

    /// Keeps `pin` (e.g. the backlight line) requested for the panel's lifetime.
    pub fn keep(&mut self, pin: Box<dyn Send>) {
        self._keep.push(pin);
    }

    /// The first and last rows that differ from what the panel shows (all rows at first).
    fn dirty_rows(&self) -> Option<(u32, u32)> {
        let h = self.canvas.size().height;
        let Some(shown) = &self.shown else {
            return Some((0, h.checked_sub(1)?));
        };
        let w = self.canvas.size().width as usize;
        let differs = |y: &u32| {
            let start = *y as usize * w;
            shown.get(start..start + w) != Some(self.canvas.row(*y))
        };
        let first = (0..h).find(differs)?;
        let last = (first..h).rev().find(differs).unwrap_or(first);
        Some((first, last))
    }
}

impl<T> Display for PanelDisplay<T>
where
    T: DrawTarget + Send,
    T::Color: From<Rgb888> + Send,
    T::Error: Debug,
{
    fn size(&self) -> Size {
        self.canvas.size()
    }

    fn draw(&mut self, frame: &Frame) -> Result<()> {
        self.canvas.render_frame(frame);
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let Some((first, last)) = self.dirty_rows() else {
            return Ok(());
        };
        let w = self.canvas.size().width;
        let band = Rectangle::new(Point::new(0, first as i32), Size::new(w, last - first + 1));
        let rows = first as usize * w as usize..(last as usize + 1) * w as usize;
        let Some(pixels) = self.canvas.pixels().get(rows) else {
            return Ok(());
        };
        log::trace!("{}: rows {first}..={last}", self.device.display());
        if let Err(e) = self.target.fill_contiguous(&band, pixels.iter().copied()) {
            // The panel's content is unknown now: resend everything next time.
            self.shown = None;
            return Err(Error::device(&self.device, "sending pixels", e));
        }
        match &mut self.shown {
            Some(shown) => shown.copy_from_slice(self.canvas.pixels()),
            None => self.shown = Some(self.canvas.pixels().to_vec()),
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let s = self.canvas.size();
        format!("spi:{} ({}x{})", self.device.display(), s.width, s.height)
    }
}

/// Initialises the panel described by `config` on `spi` and `dc` and returns it as a
/// [`Display`]. The reset pulse, if any, must already have been given (see [`open`]).
pub fn panel<SPI, DC>(
    spi: SPI,
    dc: DC,
    config: &SpiConfig,
    delay: &mut impl DelayNs,
) -> Result<PanelDisplay<impl DrawTarget<Color = Rgb565, Error: Debug> + Send>>
where
    SPI: SpiDevice + Send,
    SPI::Error: Debug,
    DC: OutputPin + Send,
{
    let di = ChunkedSpi::new(spi, dc, SPI_CHUNK);
    match config.model {
        PanelModel::St7789 => init(ST7789, di, config, delay).map(Either::Left),
        PanelModel::Ili9341 => init(ILI9341Rgb565, di, config, delay).map(Either::Right),
    }
    .and_then(|target| PanelDisplay::new(target, &config.spidev))
}

/// Runs mipidsi's init sequence for `model` with the configured geometry and colour options.
fn init<M, DI>(
    model: M,
    di: DI,
    config: &SpiConfig,
    delay: &mut impl DelayNs,
) -> Result<mipidsi::Display<DI, M, mipidsi::NoResetPin>>
where
    M: Model<ColorFormat = Rgb565>,
    DI: Interface<Word = u8>,
{
    let too_big = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    let rotation = match config.rotation {
        90 => Rotation::Deg90,
        180 => Rotation::Deg180,
        270 => Rotation::Deg270,
        _ => Rotation::Deg0,
    };
    Builder::new(model, di)
        .display_size(too_big(config.size.width), too_big(config.size.height))
        .display_offset(config.offset.0, config.offset.1)
        .orientation(Orientation::new().rotate(rotation))
        .invert_colors(if config.invert {
            ColorInversion::Inverted
        } else {
            ColorInversion::Normal
        })
        .color_order(if config.bgr {
            ColorOrder::Bgr
        } else {
            ColorOrder::Rgb
        })
        .init(delay)
        .map_err(|e| {
            Error::device(
                &config.spidev,
                format!("initialising the {:?} panel", config.model),
                e,
            )
        })
}

/// One of two draw targets with the same colour: lets [`panel`] return either model's driver.
pub enum Either<A, B> {
    /// The first kind.
    Left(A),
    /// The second kind.
    Right(B),
}

impl<A, B, C, E> Dimensions for Either<A, B>
where
    A: DrawTarget<Color = C, Error = E>,
    B: DrawTarget<Color = C, Error = E>,
    C: PixelColor,
{
    fn bounding_box(&self) -> Rectangle {
        match self {
            Either::Left(a) => a.bounding_box(),
            Either::Right(b) => b.bounding_box(),
        }
    }
}

impl<A, B, C, E> DrawTarget for Either<A, B>
where
    A: DrawTarget<Color = C, Error = E>,
    B: DrawTarget<Color = C, Error = E>,
    C: PixelColor,
{
    type Color = C;
    type Error = E;

    fn draw_iter<I: IntoIterator<Item = Pixel<C>>>(&mut self, pixels: I) -> Result<(), E> {
        match self {
            Either::Left(a) => a.draw_iter(pixels),
            Either::Right(b) => b.draw_iter(pixels),
        }
    }

    fn fill_contiguous<I: IntoIterator<Item = C>>(
        &mut self,
        area: &Rectangle,
        colors: I,
    ) -> Result<(), E> {
        match self {
            Either::Left(a) => a.fill_contiguous(area, colors),
            Either::Right(b) => b.fill_contiguous(area, colors),
        }
    }

    fn fill_solid(&mut self, area: &Rectangle, color: C) -> Result<(), E> {
        match self {
            Either::Left(a) => a.fill_solid(area, color),
            Either::Right(b) => b.fill_solid(area, color),
        }
    }
}

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::open;

#[cfg(test)]
mod tests;
