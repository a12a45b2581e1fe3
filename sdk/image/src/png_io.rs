//! PNG decoding and encoding for [`RgbImage`], with a decompression-bomb guard and atomic saves.
//!
//! Every PNG kind decodes to RGB8: palettes and low bit depths are expanded, 16-bit samples are
//! stripped to 8 bits, grayscale is replicated to three channels, and alpha is composited over
//! black (`c · a / 255`), so fully transparent pixels become black whatever colour an encoder left
//! under them — the models only see RGB, and a hidden colour would leak into the VAE's input.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Cursor, Seek, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use png::{BitDepth, ColorType, Decoder, DecodingError, Transformations};

use super::{image_error, reserve, RgbImage};
use crate::error::{Error, Result};

/// Largest image, in pixels, the PNG loaders accept by default: 4096×4096 (64 MiB as RGBA while
/// decoding). A tiny PNG can declare a huge size and inflate to gigabytes (a decompression
/// bomb); anything larger is refused from its header, before any pixel buffer is allocated. Use
/// [`RgbImage::load_png_limited`] / [`RgbImage::decode_png_limited`] to choose another limit.
pub const DEFAULT_MAX_PIXELS: u64 = 4096 * 4096;

/// Makes temp-file names unique between concurrent saves of one process.
static SAVE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Turns a decoder error into an [`Error::Image`] naming `origin`.
fn decode_error(origin: &str, error: DecodingError) -> Error {
    let message = match error {
        DecodingError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "truncated PNG (the data ends early)".to_string()
        }
        DecodingError::IoError(e) => format!("read failed: {e}"),
        DecodingError::LimitsExceeded => "PNG exceeds the decoder's memory limits".to_string(),
        other => format!("not a valid PNG: {other}"),
    };
    image_error(origin, message)
}

/// Multiplies a colour sample by an alpha sample (both 0..=255), rounding to nearest.
fn over_black(c: u8, a: u8) -> u8 {
    // (c·a + 127) / 255 ≤ 255, so the narrowing is exact.
    ((u16::from(c) * u16::from(a) + 127) / 255) as u8
}

/// Decodes one PNG from `reader`; `origin` names it in errors.
fn decode<R: BufRead + Seek>(reader: R, origin: &str, max_pixels: u64) -> Result<RgbImage> {
    let mut decoder = Decoder::new(reader);
    decoder.set_transformations(Transformations::EXPAND | Transformations::STRIP_16);
    // Text and ICC chunks are never used and could be large; skip them.
    decoder.set_ignore_text_chunk(true);
    decoder.set_ignore_iccp_chunk(true);

    // Only the IHDR chunk is read here: the size is checked before anything is allocated for it.
    let header = decoder
        .read_header_info()
        .map_err(|e| decode_error(origin, e))?;
    let (width, height) = (header.width, header.height);
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(image_error(
            origin,
            format!(
                "{width}×{height} is {pixels} pixels, above the limit of {max_pixels}; \
                 refusing to decode it (possible decompression bomb)"
            ),
        ));
    }

    let mut reader = decoder.read_info().map_err(|e| decode_error(origin, e))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| image_error(origin, format!("{width}×{height} is too large")))?;
    let mut buffer: Vec<u8> = reserve(size, origin)?;
    buffer.resize(size, 0);
    let frame = reader
        .next_frame(&mut buffer)
        .map_err(|e| decode_error(origin, e))?;
    if frame.bit_depth != BitDepth::Eight {
        return Err(image_error(
            origin,
            format!("unexpected {:?} output after expansion", frame.bit_depth),
        ));
    }
    let channels = match frame.color_type {
        ColorType::Grayscale => 1,
        ColorType::GrayscaleAlpha => 2,
        ColorType::Rgb => 3,
        ColorType::Rgba => 4,
        ColorType::Indexed => {
            return Err(image_error(origin, "palette was not expanded"));
        }
    };
    let width_usize = usize::try_from(frame.width)
        .map_err(|_| image_error(origin, format!("width {} is too large", frame.width)))?;
    let row_bytes = width_usize * channels;
    // row_bytes > 0 also keeps `chunks_exact` below from being called with 0.
    if row_bytes == 0 || frame.height == 0 || frame.line_size < row_bytes {
        return Err(image_error(origin, "decoder returned short rows"));
    }
    let rgb_len = super::rgb_len(frame.width, frame.height)
        .ok_or_else(|| image_error(origin, format!("{width}×{height} is too large")))?;
    let mut data: Vec<u8> = reserve(rgb_len, origin)?;
    let rows = buffer
        .get(..frame.buffer_size())
        .ok_or_else(|| image_error(origin, "decoder returned a short frame"))?;
    for line in rows.chunks_exact(frame.line_size) {
        let samples = line.get(..row_bytes).unwrap_or(&[]);
        match channels {
            1 => samples
                .iter()
                .for_each(|&v| data.extend_from_slice(&[v; 3])),
            2 => samples.chunks_exact(2).for_each(|p| {
                if let [v, a] = *p {
                    data.extend_from_slice(&[over_black(v, a); 3]);
                }
            }),
            3 => data.extend_from_slice(samples),
            _ => samples.chunks_exact(4).for_each(|p| {
                if let [r, g, b, a] = *p {
                    data.extend_from_slice(&[over_black(r, a), over_black(g, a), over_black(b, a)]);
                }
            }),
        }
    }
    RgbImage::new(frame.width, frame.height, data).map_err(|e| match e {
        Error::Image { message, .. } => image_error(origin, message),
        other => other,
    })
}

/// Creates `temp` (which must not exist), writes `bytes` and flushes them to disk.
fn write_synced(temp: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| Error::Io {
        path: temp.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(temp)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    // Data on disk before the rename: otherwise a crash could leave the new name pointing at an
    // empty file on filesystems with delayed allocation.
    file.sync_all().map_err(io)
}

impl RgbImage {
    /// Loads a PNG file of any kind (RGB, RGBA, grayscale with or without alpha, palette, 1- to
    /// 16-bit) as RGB8, refusing images over [`DEFAULT_MAX_PIXELS`]. Alpha is composited over
    /// black. Errors name the file: [`Error::Io`] when it can't be opened, [`Error::Image`] when
    /// it is truncated, not a PNG, or too large.
    pub fn load_png(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_png_limited(path, DEFAULT_MAX_PIXELS)
    }

    /// [`RgbImage::load_png`] with a caller-chosen pixel limit (`width · height`), e.g. lower on
    /// a device with little memory. The file is streamed, never read whole into memory.
    pub fn load_png_limited(path: impl AsRef<Path>, max_pixels: u64) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        decode(
            BufReader::new(file),
            &path.display().to_string(),
            max_pixels,
        )
    }

    /// Decodes PNG bytes already in memory (an upload, a bundled asset) like
    /// [`RgbImage::load_png`]; `origin` names them in errors.
    pub fn decode_png(bytes: &[u8], origin: &str) -> Result<Self> {
        Self::decode_png_limited(bytes, origin, DEFAULT_MAX_PIXELS)
    }

    /// [`RgbImage::decode_png`] with a caller-chosen pixel limit.
    pub fn decode_png_limited(bytes: &[u8], origin: &str, max_pixels: u64) -> Result<Self> {
        decode(Cursor::new(bytes), origin, max_pixels)
    }

    /// Encodes as an 8-bit RGB PNG (default compression), e.g. to send over a socket or embed.
    pub fn encode_png(&self) -> Result<Vec<u8>> {
        self.encode_png_for("RgbImage::encode_png")
    }

    /// [`RgbImage::encode_png`] with errors naming `origin`.
    fn encode_png_for(&self, origin: &str) -> Result<Vec<u8>> {
        let fail = |e: png::EncodingError| image_error(origin, format!("PNG encoding failed: {e}"));
        let mut bytes = Vec::new();
        let mut encoder = png::Encoder::new(&mut bytes, self.width, self.height);
        encoder.set_color(ColorType::Rgb);
        encoder.set_depth(BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(fail)?;
        writer.write_image_data(&self.data).map_err(fail)?;
        writer.finish().map_err(fail)?;
        Ok(bytes)
    }

    /// Writes the image as a PNG at `path`, atomically: the bytes go to a temporary file in the
    /// same directory, are synced, and the file is renamed over `path`. A crash or full disk
    /// leaves either the old file or the complete new one, never a truncated PNG that a viewer
    /// or the next run would choke on. Errors name the file.
    pub fn save_png(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.encode_png_for(&path.display().to_string())?;
        let name = path.file_name().ok_or_else(|| {
            image_error(
                &path.display().to_string(),
                "not a file path (no file name)",
            )
        })?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let temp = dir.join(format!(
            ".{}.{}-{}.tmp",
            name.to_string_lossy(),
            std::process::id(),
            SAVE_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        // Errors name the file the caller asked for, not the temporary one.
        let asked = |e: Error| match e {
            Error::Io { source, .. } => Error::Io {
                path: path.to_path_buf(),
                source,
            },
            other => other,
        };
        let result = write_synced(&temp, &bytes).map_err(asked).and_then(|()| {
            fs::rename(&temp, path).map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })
        });
        if result.is_err() {
            // Best effort: the temp file may not exist (open failed) and the original error is
            // the one worth reporting.
            let _ = fs::remove_file(&temp);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compositing_over_black() {
        assert_eq!(over_black(200, 255), 200);
        assert_eq!(over_black(200, 0), 0);
        assert_eq!(over_black(255, 128), 128);
        assert_eq!(over_black(100, 128), 50);
    }

    #[test]
    fn in_memory_round_trip() {
        let data: Vec<u8> = (0..5 * 3 * 3).map(|i| (i * 7) as u8).collect();
        let image = RgbImage::new(5, 3, data).unwrap();
        let bytes = image.encode_png().unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(RgbImage::decode_png(&bytes, "mem").unwrap(), image);
    }

    #[test]
    fn limit_is_inclusive() {
        let bytes = RgbImage::filled(4, 4, [9, 9, 9])
            .unwrap()
            .encode_png()
            .unwrap();
        assert!(RgbImage::decode_png_limited(&bytes, "mem", 16).is_ok());
        let err = RgbImage::decode_png_limited(&bytes, "mem", 15).unwrap_err();
        assert!(err.to_string().contains("above the limit of 15"), "{err}");
    }

    #[test]
    fn a_failed_save_names_the_path_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let asked = dir.path().join("missing-dir/out.png");
        let image = RgbImage::filled(1, 1, [0, 0, 0]).unwrap();
        let err = image.save_png(&asked).unwrap_err().to_string();
        assert!(err.starts_with(&asked.display().to_string()), "{err}");
        assert!(
            !err.contains(".out.png."),
            "names the temporary file: {err}"
        );
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }

    #[test]
    fn save_needs_a_file_name() {
        let image = RgbImage::filled(1, 1, [0, 0, 0]).unwrap();
        assert!(matches!(image.save_png("/"), Err(Error::Image { .. })));
    }
}
