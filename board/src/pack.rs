//! Packing RGB888 pixels into a framebuffer's memory format.
//!
//! fbdev describes its format as bit fields (offset and length of red, green, blue and
//! transparency inside a 16/24/32-bit word); DRM dumb buffers here are always XRGB8888, which
//! is the same thing with fixed fields. One packer covers both, and it is pure so it can be
//! tested without a device.

use embedded_graphics::pixelcolor::{Rgb888, RgbColor};

use crate::canvas::Canvas;

/// Where one colour channel sits in a pixel word (`struct fb_bitfield` without `msb_right`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bitfield {
    /// Bit position of the channel's least significant bit.
    pub offset: u32,
    /// Number of bits (0: channel absent).
    pub length: u32,
}

impl Bitfield {
    /// A channel of `length` bits at `offset`.
    pub const fn new(offset: u32, length: u32) -> Self {
        Bitfield { offset, length }
    }

    /// `value` (8 bits) scaled to this channel's width and shifted into place.
    fn place(self, value: u8) -> u32 {
        let v = u32::from(value);
        let scaled = match self.length {
            0 => return 0,
            1..=8 => v >> (8 - self.length),
            // Wider than 8 bits (rare, e.g. 10-bit): replicate to full scale.
            n => v * ((1u32 << n.min(16)) - 1) / 255,
        };
        scaled << self.offset
    }

    /// All ones in this channel (opaque alpha).
    fn full(self) -> u32 {
        match self.length {
            0 => 0,
            n => (((1u64 << n.min(32)) - 1) as u32) << self.offset,
        }
    }
}

/// A packed true-colour pixel format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixelFormat {
    /// Bytes per pixel: 2, 3 or 4.
    pub bytes_per_pixel: usize,
    /// Red channel.
    pub red: Bitfield,
    /// Green channel.
    pub green: Bitfield,
    /// Blue channel.
    pub blue: Bitfield,
    /// Alpha channel (written as fully opaque), length 0 when absent.
    pub transp: Bitfield,
}

impl PixelFormat {
    /// DRM's `XRGB8888` (and the usual 32-bpp fbdev layout).
    pub const XRGB8888: PixelFormat = PixelFormat {
        bytes_per_pixel: 4,
        red: Bitfield::new(16, 8),
        green: Bitfield::new(8, 8),
        blue: Bitfield::new(0, 8),
        transp: Bitfield::new(0, 0),
    };

    /// The usual 16-bpp fbdev layout (RGB565).
    pub const RGB565: PixelFormat = PixelFormat {
        bytes_per_pixel: 2,
        red: Bitfield::new(11, 5),
        green: Bitfield::new(5, 6),
        blue: Bitfield::new(0, 5),
        transp: Bitfield::new(0, 0),
    };

    /// A format of `bits_per_pixel` with the given fields, checked: 16, 24 or 32 bpp, every
    /// field inside the word, at least one colour bit. The error says what was found.
    pub fn from_bitfields(
        bits_per_pixel: u32,
        red: Bitfield,
        green: Bitfield,
        blue: Bitfield,
        transp: Bitfield,
    ) -> Result<Self, String> {
        if !matches!(bits_per_pixel, 16 | 24 | 32) {
            return Err(format!(
                "{bits_per_pixel} bits per pixel (supported: 16, 24, 32)"
            ));
        }
        for (name, f) in [
            ("red", red),
            ("green", green),
            ("blue", blue),
            ("transp", transp),
        ] {
            if f.length > 0 && f.offset.saturating_add(f.length) > bits_per_pixel {
                return Err(format!(
                    "{name} field (offset {}, length {}) outside a {bits_per_pixel}-bit pixel",
                    f.offset, f.length
                ));
            }
        }
        if red.length + green.length + blue.length == 0 {
            return Err("no colour bits".into());
        }
        Ok(PixelFormat {
            bytes_per_pixel: bits_per_pixel as usize / 8,
            red,
            green,
            blue,
            transp,
        })
    }

    /// The pixel word for `c`.
    pub fn pack(&self, c: Rgb888) -> u32 {
        self.red.place(c.r())
            | self.green.place(c.g())
            | self.blue.place(c.b())
            | self.transp.full()
    }

    /// Writes `src` into `dst` in this format (native byte order, as the CPU sees the mapping).
    /// Stops at whichever runs out first; never writes outside `dst`.
    pub fn write_row(&self, src: &[Rgb888], dst: &mut [u8]) {
        // Fields are public: keep a hand-built format with a bogus size from panicking.
        let n = self.bytes_per_pixel.clamp(1, 4);
        for (c, out) in src.iter().zip(dst.chunks_exact_mut(n)) {
            let word = self.pack(*c).to_ne_bytes();
            // The low-order `n` bytes of the word, wherever native order puts them.
            let bytes = if cfg!(target_endian = "little") {
                word.get(..n)
            } else {
                word.get(4 - n..)
            }
            .unwrap_or(&word);
            out.copy_from_slice(bytes);
        }
    }

    /// Copies `canvas` into a framebuffer mapping whose rows are `stride` bytes apart and whose
    /// visible area starts `start` bytes in (fbdev panning offset). Rows or pixels that would
    /// fall outside `dst` are skipped.
    pub fn blit(&self, canvas: &Canvas<Rgb888>, dst: &mut [u8], stride: usize, start: usize) {
        let row_bytes = canvas.size().width as usize * self.bytes_per_pixel;
        for y in 0..canvas.size().height {
            let begin = start.saturating_add((y as usize).saturating_mul(stride));
            let end = begin.saturating_add(row_bytes).min(dst.len());
            let Some(out) = dst.get_mut(begin..end) else {
                return;
            };
            self.write_row(canvas.row(y), out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_graphics::prelude::*;

    const ORANGE: Rgb888 = Rgb888::new(0xFF, 0x80, 0x11);

    #[test]
    fn packs_xrgb8888() {
        let f = PixelFormat::XRGB8888;
        assert_eq!(f.pack(ORANGE), 0x00FF_8011);
        let mut out = [0u8; 8];
        f.write_row(&[ORANGE, Rgb888::new(1, 2, 3)], &mut out);
        assert_eq!(
            u32::from_ne_bytes(out[..4].try_into().unwrap()),
            0x00FF_8011
        );
        assert_eq!(
            u32::from_ne_bytes(out[4..].try_into().unwrap()),
            0x0001_0203
        );
    }

    #[test]
    fn packs_rgb565_and_bgr565() {
        let f = PixelFormat::RGB565;
        // 0xFF>>3 = 31, 0x80>>2 = 32, 0x11>>3 = 2.
        assert_eq!(f.pack(ORANGE), (31 << 11) | (32 << 5) | 2);
        let bgr = PixelFormat::from_bitfields(
            16,
            Bitfield::new(0, 5),
            Bitfield::new(5, 6),
            Bitfield::new(11, 5),
            Bitfield::new(0, 0),
        )
        .unwrap();
        assert_eq!(bgr.pack(ORANGE), (2 << 11) | (32 << 5) | 31);
        let mut out = [0u8; 2];
        f.write_row(&[ORANGE], &mut out);
        assert_eq!(u16::from_ne_bytes(out), (31 << 11) | (32 << 5) | 2);
    }

    #[test]
    fn packs_24bpp_and_alpha() {
        let bgr24 = PixelFormat::from_bitfields(
            24,
            Bitfield::new(16, 8),
            Bitfield::new(8, 8),
            Bitfield::new(0, 8),
            Bitfield::new(0, 0),
        )
        .unwrap();
        let mut out = [0u8; 6];
        bgr24.write_row(&[ORANGE, Rgb888::WHITE], &mut out);
        if cfg!(target_endian = "little") {
            assert_eq!(out, [0x11, 0x80, 0xFF, 0xFF, 0xFF, 0xFF]);
        }
        let argb = PixelFormat {
            transp: Bitfield::new(24, 8),
            ..PixelFormat::XRGB8888
        };
        assert_eq!(argb.pack(Rgb888::BLACK), 0xFF00_0000);
    }

    #[test]
    fn rejects_unsupported_formats() {
        let f = Bitfield::new(0, 8);
        assert!(PixelFormat::from_bitfields(8, f, f, f, Bitfield::new(0, 0)).is_err());
        let err = PixelFormat::from_bitfields(16, Bitfield::new(12, 8), f, f, Bitfield::new(0, 0))
            .unwrap_err();
        assert!(err.contains("red"), "{err}");
        let none = Bitfield::new(0, 0);
        assert!(PixelFormat::from_bitfields(32, none, none, none, none).is_err());
    }

    #[test]
    fn blit_honours_stride_and_offset() {
        let mut canvas = Canvas::new(Size::new(2, 2), Rgb888::BLACK).unwrap();
        Pixel(Point::new(1, 1), Rgb888::new(9, 9, 9))
            .draw(&mut canvas)
            .unwrap();
        let f = PixelFormat::RGB565;
        // Stride 6 bytes (3 pixels), visible area starting 2 bytes in.
        let mut mem = [0xAAu8; 14];
        f.blit(&canvas, &mut mem, 6, 2);
        assert_eq!(mem[..2], [0xAA, 0xAA]);
        assert_eq!(mem[2..6], [0, 0, 0, 0]);
        assert_eq!(mem[6..8], [0xAA, 0xAA]);
        assert_eq!(mem[8..10], [0, 0]);
        let grey = ((9u16 >> 3) << 11) | ((9u16 >> 2) << 5) | (9 >> 3);
        assert_eq!(mem[10..12], grey.to_ne_bytes());
        // A mapping too short for the whole canvas is filled as far as it goes.
        let mut short = [0xAAu8; 5];
        f.blit(&canvas, &mut short, 4, 0);
        assert_eq!(short, [0, 0, 0, 0, 0xAA]);
    }
}
