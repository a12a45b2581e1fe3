//! An in-memory framebuffer that implements [`DrawTarget`].
//!
//! Every backend renders a frame here first and then hands the finished pixels to the device in
//! one go: a PNG file, one copy into an fbdev/DRM mapping (no half-drawn frame on the scanout
//! buffer, so no flicker), or only the changed rows over SPI. The colour type is the panel's
//! (`Rgb888` for PNG and framebuffers, `Rgb565` for most SPI panels), so the conversion from the
//! layout's `Rgb888` palette happens once per drawn pixel, not again at transfer time.

use core::convert::Infallible;

use embedded_graphics::pixelcolor::{Rgb888, RgbColor};
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::Rectangle;
use transfusion_image::RgbImage;

use crate::error::{Error, Result};

/// A `width × height` grid of colours, row-major, that embedded-graphics can draw on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canvas<C> {
    width: u32,
    height: u32,
    pixels: Vec<C>,
}

impl<C: PixelColor> Canvas<C> {
    /// A canvas of `size` filled with `background`. Errors when the size is zero or too large
    /// to allocate (a bogus mode reported by a driver must not abort the process).
    pub fn new(size: Size, background: C) -> Result<Self> {
        let unsupported = |reason: String| Error::Unsupported {
            device: "canvas".into(),
            reason,
        };
        if size.width == 0 || size.height == 0 {
            return Err(unsupported(format!(
                "{}×{} has no pixels",
                size.width, size.height
            )));
        }
        let count = usize::try_from(u64::from(size.width) * u64::from(size.height))
            .map_err(|_| unsupported(format!("{}×{} is too large", size.width, size.height)))?;
        let mut pixels = Vec::new();
        pixels
            .try_reserve_exact(count)
            .map_err(|e| unsupported(format!("{}×{}: {e}", size.width, size.height)))?;
        pixels.resize(count, background);
        Ok(Canvas {
            width: size.width,
            height: size.height,
            pixels,
        })
    }

    /// Width and height in pixels.
    pub fn size(&self) -> Size {
        Size::new(self.width, self.height)
    }

    /// All pixels, row-major.
    pub fn pixels(&self) -> &[C] {
        &self.pixels
    }

    /// Row `y` (empty when out of range).
    pub fn row(&self, y: u32) -> &[C] {
        let w = self.width as usize;
        let start = (y as usize).saturating_mul(w);
        self.pixels
            .get(start..start.saturating_add(w))
            .unwrap_or(&[])
    }

    /// The colour at (`x`, `y`), `None` outside.
    pub fn get(&self, x: u32, y: u32) -> Option<C> {
        self.row(y).get(x as usize).copied()
    }

    /// Index into `pixels` of an in-bounds point.
    fn index(&self, p: Point) -> Option<usize> {
        let x = u32::try_from(p.x).ok().filter(|&x| x < self.width)?;
        let y = u32::try_from(p.y).ok().filter(|&y| y < self.height)?;
        Some(y as usize * self.width as usize + x as usize)
    }
}

impl<C: PixelColor + From<Rgb888>> Canvas<C> {
    /// Lays `frame` out on the whole canvas; drawing into memory cannot fail.
    pub fn render_frame(&mut self, frame: &crate::frame::Frame) {
        match crate::layout::render(frame, self) {
            Ok(()) => {}
            Err(never) => match never {},
        }
    }
}

impl Canvas<Rgb888> {
    /// The canvas as an SDK image (RGB8), e.g. to save a screenshot.
    pub fn to_rgb_image(&self) -> Result<RgbImage> {
        let data = self
            .pixels
            .iter()
            .flat_map(|c| [c.r(), c.g(), c.b()])
            .collect();
        Ok(RgbImage::new(self.width, self.height, data)?)
    }
}

impl<C: PixelColor> OriginDimensions for Canvas<C> {
    fn size(&self) -> Size {
        Canvas::size(self)
    }
}

impl<C: PixelColor> DrawTarget for Canvas<C> {
    type Color = C;
    type Error = Infallible;

    fn draw_iter<I>(&mut self, pixels: I) -> Result<(), Self::Error>
    where
        I: IntoIterator<Item = Pixel<Self::Color>>,
    {
        for Pixel(point, color) in pixels {
            if let Some(px) = self.index(point).and_then(|i| self.pixels.get_mut(i)) {
                *px = color;
            }
        }
        Ok(())
    }

    fn fill_contiguous<I>(&mut self, area: &Rectangle, colors: I) -> Result<(), Self::Error>
    where
        I: IntoIterator<Item = Self::Color>,
    {
        if area.intersection(&self.bounding_box()) != *area {
            // Partly outside: let the per-pixel path clip.
            return self.draw_iter(area.points().zip(colors).map(|(p, c)| Pixel(p, c)));
        }
        let mut colors = colors.into_iter();
        let (x0, y0) = (area.top_left.x as usize, area.top_left.y as usize);
        let w = area.size.width as usize;
        for y in y0..y0 + area.size.height as usize {
            let start = y * self.width as usize + x0;
            let Some(row) = self.pixels.get_mut(start..start + w) else {
                return Ok(());
            };
            for px in row {
                match colors.next() {
                    Some(c) => *px = c,
                    None => return Ok(()),
                }
            }
        }
        Ok(())
    }

    fn fill_solid(&mut self, area: &Rectangle, color: Self::Color) -> Result<(), Self::Error> {
        let area = area.intersection(&self.bounding_box());
        let (x0, y0) = (area.top_left.x as usize, area.top_left.y as usize);
        let w = area.size.width as usize;
        for y in y0..y0 + area.size.height as usize {
            let start = y * self.width as usize + x0;
            if let Some(row) = self.pixels.get_mut(start..start + w) {
                row.fill(color);
            }
        }
        Ok(())
    }

    fn clear(&mut self, color: Self::Color) -> Result<(), Self::Error> {
        self.pixels.fill(color);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_graphics::pixelcolor::Rgb565;

    #[test]
    fn draws_and_clips() {
        let mut c = Canvas::new(Size::new(4, 3), Rgb565::BLACK).unwrap();
        c.fill_solid(
            &Rectangle::new(Point::new(-1, 1), Size::new(3, 5)),
            Rgb565::RED,
        )
        .unwrap();
        assert_eq!(c.get(0, 0), Some(Rgb565::BLACK));
        assert_eq!(c.get(1, 2), Some(Rgb565::RED));
        assert_eq!(c.get(2, 1), Some(Rgb565::BLACK));
        let colors = [Rgb565::GREEN, Rgb565::BLUE, Rgb565::WHITE, Rgb565::YELLOW];
        c.fill_contiguous(&Rectangle::new(Point::new(3, 0), Size::new(2, 2)), colors)
            .unwrap();
        assert_eq!(c.get(3, 0), Some(Rgb565::GREEN));
        assert_eq!(c.get(3, 1), Some(Rgb565::WHITE));
        c.fill_contiguous(&Rectangle::new(Point::new(0, 0), Size::new(2, 1)), colors)
            .unwrap();
        assert_eq!(c.row(0)[..2], [Rgb565::GREEN, Rgb565::BLUE]);
        assert!(c.row(9).is_empty());
        assert_eq!(c.get(4, 0), None);
    }

    #[test]
    fn zero_or_huge_sizes_are_errors() {
        assert!(Canvas::new(Size::new(0, 10), Rgb888::BLACK).is_err());
        assert!(Canvas::new(Size::new(u32::MAX, u32::MAX), Rgb888::BLACK).is_err());
    }

    #[test]
    fn converts_to_rgb_image() {
        let mut c = Canvas::new(Size::new(2, 1), Rgb888::BLACK).unwrap();
        Pixel(Point::new(1, 0), Rgb888::new(1, 2, 3))
            .draw(&mut c)
            .unwrap();
        let img = c.to_rgb_image().unwrap();
        assert_eq!(img.data(), &[0, 0, 0, 1, 2, 3]);
    }
}
