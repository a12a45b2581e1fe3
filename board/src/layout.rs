//! Screen layout: where the prompt, progress bar, image and text go on a display of any size,
//! and [`render`], which draws a [`Frame`] on any embedded-graphics [`DrawTarget`].
//!
//! The same code draws a 240×240 SPI panel and a 1920×1080 HDMI screen: the font is picked from
//! the display's smaller side (and magnified by an integer factor on very large screens, since
//! the largest mono font is 10×20), the image is scaled by the largest integer factor that fits
//! (nearest neighbour: a 16×16 latent preview stays crisp blocks rather than a blur) and centred,
//! and text is word-wrapped by pixel width. The palette is `Rgb888` and converted to the target's
//! colour type through `From<Rgb888>` (Rgb565 panels, Rgb888 framebuffers, ...).

use core::fmt::Write;

use embedded_graphics::mono_font::ascii::{FONT_10X20, FONT_6X10, FONT_7X13};
use embedded_graphics::mono_font::{MonoFont, MonoTextStyle};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::Rectangle;
use embedded_graphics::text::{Baseline, Text};
use transfusion_image::RgbImage;

use crate::frame::{Frame, ImageKind, Status};
use crate::text::{fit_line, wrap, TruncatingWriter};

/// Bytes of one drawn line (prompt, status label, a wrapped text line); 1920 px / 20 px glyphs
/// is 96 columns, so 256 bytes hold any line of ASCII and most of one in other scripts.
const LINE_CAPACITY: usize = 256;
/// Larger displays are clamped to this for layout arithmetic (keeps every `i32` cast exact).
const MAX_SIDE: u32 = 16_384;

const BACKGROUND: Rgb888 = Rgb888::new(16, 18, 24);
const PROMPT: Rgb888 = Rgb888::new(235, 235, 235);
const BAR_TRACK: Rgb888 = Rgb888::new(52, 56, 68);
const BAR_FILL: Rgb888 = Rgb888::new(40, 110, 200);
const BAR_DONE: Rgb888 = Rgb888::new(40, 150, 80);
const BAR_ERROR: Rgb888 = Rgb888::new(190, 40, 40);
const LABEL: Rgb888 = Rgb888::new(255, 255, 255);
const TEXT: Rgb888 = Rgb888::new(210, 210, 210);
const FRAME_PREVIEW: Rgb888 = Rgb888::new(230, 160, 20);
const FRAME_FINAL: Rgb888 = Rgb888::new(60, 190, 100);

/// How an image is resized into its area: enlarged by an integer factor, or (only when it does
/// not fit at all) shrunk by taking every `n`th pixel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// Each source pixel becomes an `n × n` block (`n >= 1`).
    Up(u32),
    /// Every `n`th source pixel is kept (`n >= 2`).
    Down(u32),
}

impl Scale {
    /// The shown size of a `size` image.
    pub fn apply(self, size: Size) -> Size {
        match self {
            Scale::Up(n) => Size::new(size.width.saturating_mul(n), size.height.saturating_mul(n)),
            Scale::Down(n) => Size::new(size.width.div_ceil(n), size.height.div_ceil(n)),
        }
    }

    /// The source coordinate that shown coordinate `v` samples.
    fn source(self, v: u32) -> u32 {
        match self {
            Scale::Up(n) => v / n,
            Scale::Down(n) => v.saturating_mul(n),
        }
    }
}

/// The largest integer scale at which `image` fits in `area`, and the centred rectangle it then
/// occupies. `None` when either is empty.
pub fn fit_image(image: Size, area: Rectangle) -> Option<(Scale, Rectangle)> {
    let (aw, ah) = (area.size.width, area.size.height);
    if image.width == 0 || image.height == 0 || aw == 0 || ah == 0 {
        return None;
    }
    let up = (aw / image.width).min(ah / image.height);
    let scale = if up >= 1 {
        Scale::Up(up)
    } else {
        Scale::Down(image.width.div_ceil(aw).max(image.height.div_ceil(ah)))
    };
    let shown = scale.apply(image);
    let offset = Point::new(
        ((aw - shown.width) / 2) as i32,
        ((ah - shown.height) / 2) as i32,
    );
    Some((scale, Rectangle::new(area.top_left + offset, shown)))
}

/// The regions of a screen of a given size and the font used on it.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Mono font for every line of text.
    pub font: &'static MonoFont<'static>,
    /// Integer magnification of the font (2 on 1080p, 1 up to 720p).
    pub zoom: u32,
    /// Outer margin and gap between regions, in pixels.
    pub margin: u32,
    /// The prompt line.
    pub prompt: Rectangle,
    /// The progress bar (its label is drawn inside).
    pub bar: Rectangle,
    /// Everything below the bar: image on top, wrapped text at the bottom.
    pub body: Rectangle,
}

impl Layout {
    /// The layout of a screen whose drawable area is `screen`.
    pub fn new(screen: Rectangle) -> Layout {
        let w = screen.size.width.min(MAX_SIDE);
        let h = screen.size.height.min(MAX_SIDE);
        let side = w.min(h);
        let (font, zoom): (&'static MonoFont<'static>, u32) = match side {
            0..=299 => (&FONT_6X10, 1),
            300..=439 => (&FONT_7X13, 1),
            440..=999 => (&FONT_10X20, 1),
            _ => (&FONT_10X20, side / 540),
        };
        let margin = (side / 60).max(2);
        let glyph_h = font.character_size.height * zoom;
        let inner_w = w.saturating_sub(2 * margin);
        let at = |y: u32| screen.top_left + Point::new(margin as i32, y as i32);

        let prompt = Rectangle::new(at(margin), Size::new(inner_w, glyph_h));
        let bar_y = margin + glyph_h + margin / 2 + 1;
        let bar = Rectangle::new(at(bar_y), Size::new(inner_w, glyph_h + 4 * zoom));
        let body_y = bar_y + bar.size.height + margin;
        let body = Rectangle::new(
            at(body_y),
            Size::new(inner_w, h.saturating_sub(body_y + margin)),
        );
        Layout {
            font,
            zoom,
            margin,
            prompt,
            bar,
            body,
        }
    }

    /// Horizontal advance of one glyph, in screen pixels.
    pub fn advance(&self) -> u32 {
        (self.font.character_size.width + self.font.character_spacing) * self.zoom
    }

    /// Vertical distance between wrapped lines, in screen pixels.
    pub fn line_height(&self) -> u32 {
        (self.font.character_size.height + 2) * self.zoom
    }

    /// How many glyphs fit in `width` pixels.
    pub fn columns(&self, width: u32) -> usize {
        (width / self.advance().max(1)) as usize
    }
}

/// Draws `frame` on `target`, filling its whole bounding box.
///
/// Never panics on any frame or target size: regions that do not fit are skipped, text is cut
/// with `...`, an image larger than its area is shown subsampled.
pub fn render<D, C>(frame: &Frame, target: &mut D) -> Result<(), D::Error>
where
    D: DrawTarget<Color = C>,
    C: PixelColor + From<Rgb888>,
{
    let screen = target.bounding_box();
    target.clear(C::from(BACKGROUND))?;
    let layout = Layout::new(screen);

    let prompt: heapless::String<LINE_CAPACITY> =
        fit_line(&frame.prompt, layout.columns(layout.prompt.size.width));
    draw_line(target, &layout, layout.prompt.top_left, &prompt, PROMPT)?;
    draw_status(target, &layout, frame)?;

    // Body: wrapped text at the bottom (at most half the body when there is an image), the
    // image centred in what is left above it.
    let body = layout.body;
    let line_h = layout.line_height();
    let columns = layout.columns(body.size.width);
    // With no generated text, an error's full message goes in the body: the bar has room for
    // only its start, and on a kiosk the screen may be the only place anyone reads it.
    let body_text = match &frame.status {
        Status::Error(message) if frame.text.is_empty() => message.as_str(),
        _ => frame.text.as_str(),
    };
    let lines = if body_text.is_empty() {
        Vec::new()
    } else {
        wrap(body_text, columns)
    };
    let room = if frame.image.is_some() {
        body.size.height / 2
    } else {
        body.size.height
    };
    let max_lines = (room / line_h.max(1)) as usize;
    let shown = lines.len().min(max_lines);
    let text_h = shown as u32 * line_h;
    let text_top = body.top_left.y + (body.size.height - text_h) as i32;
    for (i, line) in lines.iter().take(shown).enumerate() {
        let mut buf: heapless::String<LINE_CAPACITY> = fit_line(line, columns);
        if i + 1 == shown && shown < lines.len() {
            // More text than room: mark the cut on the last visible line.
            buf = fit_line(line, columns.saturating_sub(3));
            let _ = write!(TruncatingWriter::new(&mut buf), "...");
        }
        let at = Point::new(body.top_left.x, text_top + (i as u32 * line_h) as i32);
        draw_line(target, &layout, at, &buf, TEXT)?;
    }

    if let Some(image) = &frame.image {
        let gap = if shown > 0 { layout.margin } else { 0 };
        let area_h = body.size.height.saturating_sub(text_h + gap);
        let area = Rectangle::new(body.top_left, Size::new(body.size.width, area_h));
        let border = match image.kind {
            ImageKind::Preview => FRAME_PREVIEW,
            ImageKind::Final => FRAME_FINAL,
        };
        draw_image(target, &image.image, area, layout.zoom, border)?;
    }
    Ok(())
}

/// The progress bar and its label ("step 3/8  412 ms", "done  950 ms", "error: ...").
fn draw_status<D, C>(target: &mut D, layout: &Layout, frame: &Frame) -> Result<(), D::Error>
where
    D: DrawTarget<Color = C>,
    C: PixelColor + From<Rgb888>,
{
    let bar = layout.bar;
    let mut label = heapless::String::<LINE_CAPACITY>::new();
    let mut out = TruncatingWriter::new(&mut label);
    let (filled, colour) = match &frame.status {
        Status::Loading => {
            let _ = write!(out, "loading model...");
            (0, BAR_FILL)
        }
        Status::Generating {
            step,
            total,
            elapsed_ms,
        } => {
            let _ = write!(out, "step {step}/{total}  {elapsed_ms} ms");
            let done = u64::from((*step).min(*total));
            let part = u64::from(bar.size.width) * done / u64::from((*total).max(1));
            (part as u32, BAR_FILL)
        }
        Status::Done { total_ms } => {
            let _ = write!(out, "done  {total_ms} ms");
            (bar.size.width, BAR_DONE)
        }
        Status::Error(message) => {
            let _ = write!(out, "error: {message}");
            (bar.size.width, BAR_ERROR)
        }
    };
    target.fill_solid(&bar, C::from(BAR_TRACK))?;
    target.fill_solid(
        &Rectangle::new(bar.top_left, Size::new(filled, bar.size.height)),
        C::from(colour),
    )?;

    let pad = 2 * layout.zoom;
    let columns = layout.columns(bar.size.width.saturating_sub(2 * pad));
    let tag = match frame.image.as_ref().map(|i| i.kind) {
        Some(ImageKind::Preview) => "preview",
        Some(ImageKind::Final) => "final",
        None => "",
    };
    let label_cols = label.chars().count();
    let show_tag = !tag.is_empty() && label_cols + 2 + tag.len() <= columns;
    let text: heapless::String<LINE_CAPACITY> = fit_line(&label, columns);
    let at = bar.top_left + Point::new(pad as i32, pad as i32);
    draw_line(target, layout, at, &text, LABEL)?;
    if show_tag {
        let tag_w = tag.len() as u32 * layout.advance();
        let x = bar.top_left.x + bar.size.width.saturating_sub(pad + tag_w) as i32;
        draw_line(target, layout, Point::new(x, at.y), tag, LABEL)?;
    }
    Ok(())
}

/// One line of text with its top-left corner at `at`, magnified by the layout's zoom.
fn draw_line<D, C>(
    target: &mut D,
    layout: &Layout,
    at: Point,
    text: &str,
    colour: Rgb888,
) -> Result<(), D::Error>
where
    D: DrawTarget<Color = C>,
    C: PixelColor + From<Rgb888>,
{
    if text.is_empty() {
        return Ok(());
    }
    let style = MonoTextStyle::new(layout.font, C::from(colour));
    let mut magnified = Magnify {
        target,
        origin: at,
        zoom: layout.zoom.max(1),
    };
    Text::with_baseline(text, Point::zero(), style, Baseline::Top).draw(&mut magnified)?;
    Ok(())
}

/// `image` scaled to fit `area` (inside a border `zoom` pixels wide), centred.
fn draw_image<D, C>(
    target: &mut D,
    image: &RgbImage,
    area: Rectangle,
    zoom: u32,
    border: Rgb888,
) -> Result<(), D::Error>
where
    D: DrawTarget<Color = C>,
    C: PixelColor + From<Rgb888>,
{
    let b = zoom.max(1);
    let inner = Rectangle::new(
        area.top_left + Point::new(b as i32, b as i32),
        Size::new(
            area.size.width.saturating_sub(2 * b),
            area.size.height.saturating_sub(2 * b),
        ),
    );
    let Some((scale, placed)) = fit_image(Size::new(image.width(), image.height()), inner) else {
        return Ok(());
    };
    let frame = Rectangle::new(
        placed.top_left - Point::new(b as i32, b as i32),
        placed.size + Size::new(2 * b, 2 * b),
    );
    target.fill_solid(&frame, C::from(border))?;
    let (w, h) = (placed.size.width, placed.size.height);
    let colours = (0..h).flat_map(move |y| {
        let sy = scale.source(y);
        (0..w).map(move |x| {
            let [r, g, b] = image.pixel(scale.source(x), sy).unwrap_or([0, 0, 0]);
            C::from(Rgb888::new(r, g, b))
        })
    });
    target.fill_contiguous(&placed, colours)
}

/// A view of a draw target where every pixel is a `zoom × zoom` block and (0, 0) is `origin`:
/// lets the 10×20 font read at 20×40 on a 1080p screen.
struct Magnify<'a, D> {
    target: &'a mut D,
    origin: Point,
    zoom: u32,
}

impl<D: DrawTarget> Dimensions for Magnify<'_, D> {
    fn bounding_box(&self) -> Rectangle {
        let outer = self.target.bounding_box();
        let right = outer.top_left.x + outer.size.width as i32;
        let bottom = outer.top_left.y + outer.size.height as i32;
        let w = (right - self.origin.x).max(0) as u32 / self.zoom;
        let h = (bottom - self.origin.y).max(0) as u32 / self.zoom;
        Rectangle::new(Point::zero(), Size::new(w, h))
    }
}

impl<D: DrawTarget> DrawTarget for Magnify<'_, D> {
    type Color = D::Color;
    type Error = D::Error;

    fn draw_iter<I>(&mut self, pixels: I) -> Result<(), Self::Error>
    where
        I: IntoIterator<Item = Pixel<Self::Color>>,
    {
        let (origin, zoom) = (self.origin, self.zoom);
        if zoom == 1 {
            return self
                .target
                .draw_iter(pixels.into_iter().map(|Pixel(p, c)| Pixel(p + origin, c)));
        }
        let size = Size::new(zoom, zoom);
        for Pixel(p, c) in pixels {
            let top_left = origin + p * zoom as i32;
            self.target.fill_solid(&Rectangle::new(top_left, size), c)?;
        }
        Ok(())
    }

    fn fill_solid(&mut self, area: &Rectangle, color: Self::Color) -> Result<(), Self::Error> {
        let z = self.zoom;
        let scaled = Rectangle::new(self.origin + area.top_left * z as i32, area.size * z);
        self.target.fill_solid(&scaled, color)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect(x: i32, y: i32, w: u32, h: u32) -> Rectangle {
        Rectangle::new(Point::new(x, y), Size::new(w, h))
    }

    #[test]
    fn largest_integer_factor_and_centred() {
        let (s, r) = fit_image(Size::new(16, 16), rect(0, 0, 232, 200)).unwrap();
        assert_eq!(s, Scale::Up(12));
        assert_eq!(r, rect(20, 4, 192, 192));
        let (s, r) = fit_image(Size::new(64, 64), rect(10, 20, 128, 300)).unwrap();
        assert_eq!(s, Scale::Up(2));
        assert_eq!(r, rect(10, 106, 128, 128));
        // Non-square image in a wide area: the height limits.
        let (s, r) = fit_image(Size::new(32, 16), rect(0, 0, 1000, 50)).unwrap();
        assert_eq!(s, Scale::Up(3));
        assert_eq!(r, rect(452, 1, 96, 48));
    }

    #[test]
    fn too_large_images_are_subsampled() {
        let (s, r) = fit_image(Size::new(64, 64), rect(0, 0, 40, 30)).unwrap();
        assert_eq!(s, Scale::Down(3));
        assert_eq!(r.size, Size::new(22, 22));
        assert!(r.size.width <= 40 && r.size.height <= 30);
        assert_eq!(fit_image(Size::new(64, 64), rect(0, 0, 0, 30)), None);
        assert_eq!(fit_image(Size::new(0, 64), rect(0, 0, 10, 30)), None);
    }

    #[test]
    fn fonts_grow_with_the_display() {
        let l = Layout::new(rect(0, 0, 240, 240));
        assert_eq!((l.font.character_size.width, l.zoom), (6, 1));
        assert_eq!(l.columns(l.body.size.width), 38);
        let l = Layout::new(rect(0, 0, 480, 320));
        assert_eq!(l.font.character_size.width, 7);
        let l = Layout::new(rect(0, 0, 800, 480));
        assert_eq!((l.font.character_size.width, l.zoom), (10, 1));
        let l = Layout::new(rect(0, 0, 1920, 1080));
        assert_eq!((l.font.character_size.width, l.zoom), (10, 2));
        assert_eq!(l.advance(), 20);
        assert!(l.body.size.height > 800);
    }

    #[test]
    fn regions_stack_without_overlap() {
        for (w, h) in [(240, 240), (320, 240), (800, 480), (1920, 1080), (128, 64)] {
            let l = Layout::new(rect(0, 0, w, h));
            assert!(l.prompt.top_left.y + l.prompt.size.height as i32 <= l.bar.top_left.y);
            assert!(l.bar.top_left.y + l.bar.size.height as i32 <= l.body.top_left.y);
            assert!(l.body.top_left.y + l.body.size.height as i32 <= h as i32);
        }
    }
}
