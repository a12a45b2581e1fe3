//! Images across the ABI: RGB8, row-major, `width * height * 3` bytes, owned by the library.

use std::ffi::c_char;

use transfusion_sdk::RgbImage;

use crate::handles::Registry;
use crate::status::{guard, str_arg, tf_status, write_out, CallResult, Failure};
use crate::tf_image;

pub(crate) static IMAGES: Registry<RgbImage> = Registry::new("tf_image");

/// Registers `image` and writes its handle to `out`.
pub(crate) fn give_image(image: RgbImage, out: *mut *mut tf_image) -> CallResult {
    if out.is_null() {
        return Err(Failure::null("out"));
    }
    let handle = IMAGES.insert(image);
    // SAFETY: checked non-NULL; the caller passes a writable pointer.
    unsafe { write_out(out, handle, "out") }
}

/// Sets a handle out-pointer to NULL before the work, so a failure leaves nothing to free.
pub(crate) fn clear<T>(out: *mut *mut T) {
    if !out.is_null() {
        // SAFETY: non-NULL; the caller passes a writable pointer.
        unsafe { out.write(std::ptr::null_mut()) };
    }
}

fn buffer_size(width: u32, height: u32) -> CallResult<usize> {
    transfusion_sdk::image::rgb_len(width, height).ok_or_else(|| {
        Failure::new(
            tf_status::TF_ERR_INVALID_ARGUMENT,
            format!("{width}x{height} is too large"),
        )
    })
}

/// A new image from `len` bytes of RGB8 at `rgb` (copied): `len` must be
/// `width * height * 3`.
#[no_mangle]
pub extern "C" fn tf_image_new(
    width: u32,
    height: u32,
    rgb: *const u8,
    len: usize,
    out: *mut *mut tf_image,
) -> tf_status {
    clear(out);
    guard("tf_image_new", || {
        if rgb.is_null() {
            return Err(Failure::null("rgb"));
        }
        let need = buffer_size(width, height)?;
        if len != need {
            return Err(Failure::new(
                tf_status::TF_ERR_BUFFER_SIZE,
                format!("`len` is {len} bytes; a {width}x{height} RGB8 image is {need}"),
            ));
        }
        // SAFETY: non-NULL; the caller promises `len` readable bytes.
        let data = unsafe { std::slice::from_raw_parts(rgb, len) }.to_vec();
        give_image(RgbImage::new(width, height, data)?, out)
    })
}

/// Reads a PNG file (any colour type and depth; alpha composited over black) as RGB8.
#[no_mangle]
pub extern "C" fn tf_image_load_png(path: *const c_char, out: *mut *mut tf_image) -> tf_status {
    clear(out);
    guard("tf_image_load_png", || {
        // SAFETY: the caller passes NULL or a NUL-terminated string.
        let path = unsafe { str_arg(path, "path") }?;
        give_image(RgbImage::load_png(path)?, out)
    })
}

/// Writes `image` as a PNG at `path`, atomically (a failure leaves any old file in place).
#[no_mangle]
pub extern "C" fn tf_image_save_png(image: *const tf_image, path: *const c_char) -> tf_status {
    guard("tf_image_save_png", || {
        let image = IMAGES.get(image, "image")?;
        // SAFETY: the caller passes NULL or a NUL-terminated string.
        let path = unsafe { str_arg(path, "path") }?;
        Ok(image.save_png(path)?)
    })
}

/// The image's width and height in pixels (either pointer may be NULL).
#[no_mangle]
pub extern "C" fn tf_image_size(
    image: *const tf_image,
    width: *mut u32,
    height: *mut u32,
) -> tf_status {
    guard("tf_image_size", || {
        let image = IMAGES.get(image, "image")?;
        for (out, v) in [(width, image.width()), (height, image.height())] {
            if !out.is_null() {
                // SAFETY: non-NULL; the caller passes writable pointers or NULL.
                unsafe { out.write(v) };
            }
        }
        Ok(())
    })
}

/// Copies the pixels (RGB8, row-major) into `buffer` of `len` bytes, which must be exactly
/// `width * height * 3`.
#[no_mangle]
pub extern "C" fn tf_image_copy_rgb(
    image: *const tf_image,
    buffer: *mut u8,
    len: usize,
) -> tf_status {
    guard("tf_image_copy_rgb", || {
        let image = IMAGES.get(image, "image")?;
        if buffer.is_null() {
            return Err(Failure::null("buffer"));
        }
        let data = image.data();
        if len != data.len() {
            return Err(Failure::new(
                tf_status::TF_ERR_BUFFER_SIZE,
                format!(
                    "`len` is {len} bytes; this {}x{} image is {}",
                    image.width(),
                    image.height(),
                    data.len()
                ),
            ));
        }
        // SAFETY: non-NULL, `len` bytes writable (the caller's promise), not overlapping the
        // library's own buffer.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buffer, len) };
        Ok(())
    })
}

/// Frees an image (NULL: nothing). A freed handle is refused by every later call.
#[no_mangle]
pub extern "C" fn tf_image_free(image: *mut tf_image) -> tf_status {
    guard("tf_image_free", || IMAGES.remove(image, "image"))
}
