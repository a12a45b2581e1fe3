//! RGB8 images and their conversions to and from the float tensors the models use.
//!
//! The runtime moves pictures between three worlds: the VAE's `[3, H, W]` float tensors in
//! `[-1, 1]`, the latent space (previewed cheaply through a bundle's linear latent → RGB map),
//! and PNG files or byte buffers for users and device displays. [`RgbImage`] is the one type in
//! the middle; every conversion that depends on its input returns a [`Result`] instead of
//! panicking, and a non-finite float never turns silently into a black picture.
//!
//! Its own crate, with no engine underneath: the SDK hands these images out, and the display
//! pipeline (`transfusion-board`) draws them without linking the runtime.

// Input reaches all of this crate (files, buffers, sizes): no panicking shortcuts outside
// tests, and no indexing that can panic.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod error;
mod png_io;
mod resize;

pub use error::{Error, Result};
pub use png_io::DEFAULT_MAX_PIXELS;

use std::fmt;

/// An 8-bit RGB image, row-major, three bytes per pixel, at least 1×1.
///
/// Fields are private so that `data.len() == width · height · 3` always holds; build one with
/// [`RgbImage::new`], [`RgbImage::from_chw`], [`RgbImage::preview_from_latent`] or a PNG loader.
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    width: u32,
    height: u32,
    data: Vec<u8>,
}

/// Prints the size only: the pixel bytes of a real image would flood logs and test output.
impl fmt::Debug for RgbImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RgbImage")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// An [`Error::Image`] for `origin` (a file name or the function that built the image).
pub(crate) fn image_error(origin: &str, message: impl Into<String>) -> Error {
    Error::Image {
        path: origin.to_string(),
        message: message.into(),
    }
}

/// Number of RGB8 bytes of a `width × height` image, or `None` when that can't be addressed.
pub fn rgb_len(width: u32, height: u32) -> Option<usize> {
    usize::try_from(width)
        .ok()?
        .checked_mul(usize::try_from(height).ok()?)?
        .checked_mul(3)
        .filter(|&n| n <= isize::MAX as usize)
}

/// An empty buffer with room for `len` elements, or an error instead of an abort when memory
/// runs out (sizes here come from files and callers, not from the program).
pub(crate) fn reserve<T>(len: usize, origin: &str) -> Result<Vec<T>> {
    let mut buffer = Vec::new();
    buffer
        .try_reserve_exact(len)
        .map_err(|e| image_error(origin, format!("cannot allocate {len} elements: {e}")))?;
    Ok(buffer)
}

/// Maps a float in `[-1, 1]` (clamped) to `round((v + 1) / 2 · 255)`.
fn unit_to_u8(v: f32) -> u8 {
    // The clamp keeps the result in [0, 255], so the cast never saturates.
    ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8
}

/// Maps a byte back to `[-1, 1]`; the inverse of [`unit_to_u8`] to within half a step (1/255).
fn u8_to_unit(b: u8) -> f32 {
    f32::from(b) / 127.5 - 1.0
}

/// Checks tensor-side `height × width` and returns the image sides and the plane size.
fn tensor_dims(height: usize, width: usize, origin: &str) -> Result<(u32, u32, usize)> {
    let side = |n: usize, name: &str| {
        u32::try_from(n)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| image_error(origin, format!("{name} {n} is not in 1..=u32::MAX")))
    };
    let (h, w) = (side(height, "height")?, side(width, "width")?);
    rgb_len(w, h)
        .map(|len| (w, h, len / 3))
        .ok_or_else(|| image_error(origin, format!("{width}×{height} is too large")))
}

/// `[3, H, W]` floats in `[-1, 1]` → RGB8; a non-finite value is an [`Error::NotFinite`] about
/// `what`, located by channel and pixel so the failing step or graph can be found.
fn chw_to_rgb(
    values: &[f32],
    height: usize,
    width: usize,
    what: &str,
    origin: &str,
) -> Result<RgbImage> {
    let (w, h, plane) = tensor_dims(height, width, origin)?;
    if values.len() != plane * 3 {
        return Err(image_error(
            origin,
            format!(
                "expected 3·{height}·{width} = {} values, got {}",
                plane * 3,
                values.len()
            ),
        ));
    }
    let (r, g, b) = match (
        values.get(..plane),
        values.get(plane..2 * plane),
        values.get(2 * plane..),
    ) {
        (Some(r), Some(g), Some(b)) => (r, g, b),
        _ => return Err(image_error(origin, "channel planes out of range")),
    };
    let mut data = reserve(plane * 3, origin)?;
    for (i, ((&r, &g), &b)) in r.iter().zip(g).zip(b).enumerate() {
        for (c, v) in [r, g, b].into_iter().enumerate() {
            if !v.is_finite() {
                return Err(Error::NotFinite {
                    what: what.to_string(),
                    message: format!(
                        "{v} at channel {c}, pixel ({}, {}) of a {width}×{height} image",
                        i % width,
                        i / width
                    ),
                });
            }
            data.push(unit_to_u8(v));
        }
    }
    Ok(RgbImage {
        width: w,
        height: h,
        data,
    })
}

impl RgbImage {
    /// Wraps row-major RGB8 bytes. Errors when a side is 0 or `data.len() != width · height · 3`,
    /// so every `RgbImage` can be indexed, encoded and resized without further checks.
    pub fn new(width: u32, height: u32, data: Vec<u8>) -> Result<Self> {
        const ORIGIN: &str = "RgbImage::new";
        if width == 0 || height == 0 {
            return Err(image_error(
                ORIGIN,
                format!("{width}×{height} has no pixels"),
            ));
        }
        let expected = rgb_len(width, height)
            .ok_or_else(|| image_error(ORIGIN, format!("{width}×{height} is too large")))?;
        if data.len() != expected {
            return Err(image_error(
                ORIGIN,
                format!(
                    "{width}×{height} RGB8 needs {expected} bytes, got {}",
                    data.len()
                ),
            ));
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// A `width × height` image of one colour: placeholders (e.g. a blank canvas on a display
    /// before the first preview) and test fixtures.
    pub fn filled(width: u32, height: u32, rgb: [u8; 3]) -> Result<Self> {
        let len = rgb_len(width, height).ok_or_else(|| {
            image_error("RgbImage::filled", format!("{width}×{height} is too large"))
        })?;
        let mut data = reserve(len, "RgbImage::filled")?;
        data.extend(rgb.iter().copied().cycle().take(len));
        Self::new(width, height, data)
    }

    /// Width in pixels (≥ 1).
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels (≥ 1).
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The row-major RGB8 bytes (`width · height · 3`), e.g. for a framebuffer blit.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Gives up the image and returns its bytes without copying.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    /// The pixel at column `x`, row `y`, or `None` outside the image.
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let index = (usize::try_from(y).ok()? * usize::try_from(self.width).ok()?
            + usize::try_from(x).ok()?)
            * 3;
        let rgb = self.data.get(index..index + 3)?;
        <[u8; 3]>::try_from(rgb).ok()
    }

    /// Converts one batch item of the VAE decoder's output, a `[3, height, width]` float tensor
    /// in `[-1, 1]`, to RGB8: values are clamped, then `round((v + 1) / 2 · 255)`.
    ///
    /// A NaN or infinity anywhere is an [`Error::NotFinite`] with `what: "image"` rather than a
    /// black or white picture, so a diverged sampler is reported instead of shown. A length that
    /// doesn't match the shape is an [`Error::Image`].
    pub fn from_chw(values: &[f32], height: usize, width: usize) -> Result<Self> {
        chw_to_rgb(values, height, width, "image", "RgbImage::from_chw")
    }

    /// The inverse of [`RgbImage::from_chw`]: a `[3, height, width]` tensor in `[-1, 1]`
    /// (`b / 127.5 − 1`), the VAE encoder's input. Round-trips within 1/255.
    pub fn to_chw(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.data.len());
        for channel in 0..3 {
            out.extend(
                self.data
                    .iter()
                    .skip(channel)
                    .step_by(3)
                    .map(|&b| u8_to_unit(b)),
            );
        }
        out
    }

    /// A cheap per-step preview without running the VAE: applies the bundle's linear map
    /// `rgb = weight · z + bias` to every latent pixel of a `[channels, height, width]` latent
    /// (one batch item) and converts like [`RgbImage::from_chw`]. The result has the latent's
    /// resolution (e.g. 16×16); see [`RgbImage::upscale_nearest`] for display.
    ///
    /// `weight` is `[3][channels]` and `bias` `[3]` (a bundle's `preview` entry).
    ///
    /// Errors: [`Error::Image`] when `weight` isn't `[3][channels]` or the latent's length
    /// doesn't match; [`Error::NotFinite`] with `what: "preview"` on a non-finite result.
    pub fn preview_from_latent(
        latent: &[f32],
        [channels, height, width]: [usize; 3],
        weight: &[Vec<f32>],
        bias: &[f32; 3],
    ) -> Result<Self> {
        const ORIGIN: &str = "RgbImage::preview_from_latent";
        let (_, _, plane) = tensor_dims(height, width, ORIGIN)?;
        if channels == 0 {
            return Err(image_error(ORIGIN, "the latent has no channels"));
        }
        if weight.len() != 3 || weight.iter().any(|row| row.len() != channels) {
            let shape: Vec<usize> = weight.iter().map(Vec::len).collect();
            return Err(image_error(
                ORIGIN,
                format!("preview weight must be [3][{channels}], row lengths are {shape:?}"),
            ));
        }
        let expected = plane.checked_mul(channels);
        if expected != Some(latent.len()) {
            return Err(image_error(
                ORIGIN,
                format!(
                    "expected {channels}·{height}·{width} latent values, got {}",
                    latent.len()
                ),
            ));
        }
        let mut rgb = reserve(plane * 3, ORIGIN)?;
        for (row, &bias) in weight.iter().zip(bias) {
            let mut acc = vec![bias; plane];
            for (&weight, z_plane) in row.iter().zip(latent.chunks_exact(plane)) {
                for (a, &z) in acc.iter_mut().zip(z_plane) {
                    *a += weight * z;
                }
            }
            rgb.extend_from_slice(&acc);
        }
        chw_to_rgb(&rgb, height, width, "preview", ORIGIN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_mapping_endpoints_and_rounding() {
        assert_eq!(unit_to_u8(-1.0), 0);
        assert_eq!(unit_to_u8(1.0), 255);
        assert_eq!(unit_to_u8(0.0), 128); // 127.5 rounds away from zero
        assert_eq!(unit_to_u8(-7.0), 0);
        assert_eq!(unit_to_u8(7.0), 255);
        for b in 0..=255u8 {
            assert_eq!(unit_to_u8(u8_to_unit(b)), b);
        }
    }

    #[test]
    fn new_checks_length_and_zero_sides() {
        assert!(RgbImage::new(2, 2, vec![0; 12]).is_ok());
        assert!(matches!(
            RgbImage::new(2, 2, vec![0; 11]),
            Err(Error::Image { .. })
        ));
        assert!(RgbImage::new(0, 2, vec![]).is_err());
        assert!(RgbImage::new(u32::MAX, u32::MAX, vec![]).is_err());
    }

    #[test]
    fn pixel_is_row_major() {
        let data: Vec<u8> = (0..18).collect();
        let image = RgbImage::new(3, 2, data).unwrap();
        assert_eq!(image.pixel(0, 0), Some([0, 1, 2]));
        assert_eq!(image.pixel(2, 0), Some([6, 7, 8]));
        assert_eq!(image.pixel(0, 1), Some([9, 10, 11]));
        assert_eq!(image.pixel(3, 0), None);
        assert_eq!(image.pixel(0, 2), None);
    }

    #[test]
    fn chw_planes_are_channels() {
        // 1×2 image: red plane [1, -1], green [-1, 1], blue [0, 0].
        let image = RgbImage::from_chw(&[1.0, -1.0, -1.0, 1.0, 0.0, 0.0], 1, 2).unwrap();
        assert_eq!(image.pixel(0, 0), Some([255, 0, 128]));
        assert_eq!(image.pixel(1, 0), Some([0, 255, 128]));
        let chw = image.to_chw();
        assert_eq!(chw.len(), 6);
        assert_eq!(&chw[..4], &[1.0, -1.0, -1.0, 1.0]);
    }

    #[test]
    fn infinity_is_numerical_too() {
        let err = RgbImage::from_chw(&[f32::INFINITY, 0.0, 0.0], 1, 1).unwrap_err();
        assert!(matches!(err, Error::NotFinite { ref what, .. } if what == "image"));
    }

    #[test]
    fn preview_rejects_bad_weight_shape() {
        let weight = vec![vec![1.0; 4]; 2];
        let err =
            RgbImage::preview_from_latent(&[0.0; 4], [4, 1, 1], &weight, &[0.0; 3]).unwrap_err();
        assert!(err.to_string().contains("[3][4]"), "{err}");
    }
}
