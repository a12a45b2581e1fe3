//! Public-API tests of `transfusion_image`: float conversions, previews, resampling and PNG.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;

use png::{BitDepth, ColorType};
use transfusion_image::{Error, RgbImage, DEFAULT_MAX_PIXELS};

/// A bundle's linear latent → RGB preview map.
struct Preview {
    weight: Vec<Vec<f32>>,
    bias: [f32; 3],
}

// ---- allocation tracking (proves the pixel limit acts before any pixel buffer exists) ----

/// Records the largest single allocation made on each thread, so one test can check what it
/// allocated without being disturbed by tests running in parallel.
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

// ---- helpers ----

/// Encodes raw samples as a PNG of the given kind with the `png` encoder.
fn encode(
    width: u32,
    height: u32,
    color: ColorType,
    depth: BitDepth,
    data: &[u8],
    palette: Option<(&[u8], Option<&[u8]>)>,
) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(color);
    encoder.set_depth(depth);
    if let Some((plte, trns)) = palette {
        encoder.set_palette(plte.to_vec());
        if let Some(trns) = trns {
            encoder.set_trns(trns.to_vec());
        }
    }
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(data).unwrap();
    writer.finish().unwrap();
    bytes
}

fn pixels(image: &RgbImage) -> Vec<[u8; 3]> {
    (0..image.height())
        .flat_map(|y| (0..image.width()).map(move |x| (x, y)))
        .map(|(x, y)| image.pixel(x, y).unwrap())
        .collect()
}

fn message(err: &Error) -> String {
    err.to_string()
}

// ---- float conversions ----

#[test]
fn chw_round_trip_within_one_step() {
    let (h, w) = (5, 7);
    let values: Vec<f32> = (0..3 * h * w)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let image = RgbImage::from_chw(&values, h, w).unwrap();
    assert_eq!((image.width(), image.height()), (7, 5));
    let back = image.to_chw();
    assert_eq!(back.len(), values.len());
    for (a, b) in values.iter().zip(&back) {
        assert!((a - b).abs() <= 1.0 / 255.0 + 1e-6, "{a} vs {b}");
    }
    // And bytes survive the other way exactly.
    assert_eq!(RgbImage::from_chw(&back, h, w).unwrap(), image);
}

#[test]
fn chw_clamps_out_of_range_values() {
    let values = [-3.0, 1.5, -1.0, 1.0, 0.0, 100.0];
    let image = RgbImage::from_chw(&values, 1, 2).unwrap();
    assert_eq!(pixels(&image), vec![[0, 0, 128], [255, 255, 255]]);
}

#[test]
fn nan_is_a_numerical_error_not_a_black_image() {
    let mut values = vec![0.0f32; 3 * 4 * 4];
    values[2 * 16 + 5] = f32::NAN;
    match RgbImage::from_chw(&values, 4, 4) {
        Err(Error::NotFinite { what, message }) => {
            assert_eq!(what, "image");
            assert!(message.contains("channel 2"), "{message}");
            assert!(message.contains("(1, 1)"), "{message}");
        }
        other => panic!("expected a numerical error, got {other:?}"),
    }
}

#[test]
fn chw_shape_mismatch_is_an_image_error() {
    let err = RgbImage::from_chw(&[0.0; 10], 2, 2).unwrap_err();
    assert!(matches!(err, Error::Image { .. }), "{err:?}");
    assert!(RgbImage::from_chw(&[], 0, 0).is_err());
}

// ---- previews ----

#[test]
fn preview_applies_the_linear_map_per_latent_pixel() {
    // 2 channels, 1×2 latent. Red = z0, green = z1, blue = 0.5·(z0 + z1) − 0.5.
    let preview = Preview {
        weight: vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![0.5, 0.5]],
        bias: [0.0, 0.0, -0.5],
    };
    // Channel-major latent: z0 = [1, -1], z1 = [0, 1].
    let latent = [1.0, -1.0, 0.0, 1.0];
    let image =
        RgbImage::preview_from_latent(&latent, [2, 1, 2], &preview.weight, &preview.bias).unwrap();
    assert_eq!((image.width(), image.height()), (2, 1));
    // Pixel 0: rgb = (1, 0, 0) → (255, 128, 128). Pixel 1: (-1, 1, -0.5) → (0, 255, 64).
    assert_eq!(pixels(&image), vec![[255, 128, 128], [0, 255, 64]]);
}

#[test]
fn preview_of_a_latent_resolution_grid() {
    let channels = 4;
    let (h, w) = (16, 16);
    let preview = Preview {
        weight: vec![vec![0.25; channels]; 3],
        bias: [0.1, 0.0, -0.1],
    };
    let latent = vec![0.0f32; channels * h * w];
    let image =
        RgbImage::preview_from_latent(&latent, [channels, h, w], &preview.weight, &preview.bias)
            .unwrap();
    assert_eq!((image.width(), image.height()), (16, 16));
    // Zero latent → the bias: round((0.1 + 1)·127.5) = 140, 128, round(0.9·127.5) = 115.
    assert!(pixels(&image).iter().all(|&p| p == [140, 128, 115]));
}

#[test]
fn preview_errors() {
    let preview = Preview {
        weight: vec![vec![1.0, 1.0]; 3],
        bias: [0.0; 3],
    };
    let err = RgbImage::preview_from_latent(&[0.0; 3], [2, 1, 2], &preview.weight, &preview.bias)
        .unwrap_err();
    assert!(matches!(err, Error::Image { .. }), "{err:?}");
    let err =
        RgbImage::preview_from_latent(&[f32::NAN, 0.0], [2, 1, 1], &preview.weight, &preview.bias)
            .unwrap_err();
    assert!(matches!(err, Error::NotFinite { ref what, .. } if what == "preview"));
}

// ---- resampling ----

#[test]
fn resizing_a_constant_image_keeps_it_constant() {
    let image = RgbImage::filled(37, 23, [12, 200, 99]).unwrap();
    for (w, h) in [(8, 8), (64, 64), (100, 5), (1, 1), (37, 23), (512, 512)] {
        let resized = image.resize(w, h).unwrap();
        assert_eq!((resized.width(), resized.height()), (w, h));
        assert!(
            resized.data().chunks_exact(3).all(|p| p == [12, 200, 99]),
            "{w}×{h}"
        );
    }
}

#[test]
fn resize_shrinks_by_averaging_and_grows_smoothly() {
    // Checkerboard of black and white 1-pixel squares: halving gives uniform mid-grey (point
    // sampling would give all black or all white).
    let data: Vec<u8> = (0..8 * 8)
        .flat_map(|i| [if (i % 8 + i / 8) % 2 == 0 { 0 } else { 255 }; 3])
        .collect();
    let board = RgbImage::new(8, 8, data).unwrap();
    let half = board.resize(4, 4).unwrap();
    assert!(half.data().iter().all(|&v| v == 128), "{:?}", half.data());

    // Growing a black|white pair interpolates monotonically between them.
    let pair = RgbImage::new(2, 1, vec![0, 0, 0, 255, 255, 255]).unwrap();
    let wide = pair.resize(8, 1).unwrap();
    let reds: Vec<u8> = pixels(&wide).iter().map(|p| p[0]).collect();
    assert_eq!(reds.first(), Some(&0));
    assert_eq!(reds.last(), Some(&255));
    assert!(reds.windows(2).all(|w| w[0] <= w[1]), "{reds:?}");
}

#[test]
fn nearest_upscale_repeats_blocks() {
    let image = RgbImage::new(2, 1, vec![1, 2, 3, 4, 5, 6]).unwrap();
    let big = image.upscale_nearest(2).unwrap();
    assert_eq!((big.width(), big.height()), (4, 2));
    let a = [1, 2, 3];
    let b = [4, 5, 6];
    assert_eq!(pixels(&big), vec![a, a, b, b, a, a, b, b]);
    assert_eq!(image.upscale_nearest(1).unwrap(), image);
}

// ---- PNG files ----

#[test]
fn png_file_round_trip_is_atomic_and_exact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.png");
    let data: Vec<u8> = (0..13 * 9 * 3).map(|i| (i * 31 % 256) as u8).collect();
    let image = RgbImage::new(13, 9, data).unwrap();
    image.save_png(&path).unwrap();
    assert_eq!(RgbImage::load_png(&path).unwrap(), image);

    // Overwriting replaces the file; no temp files are left beside it.
    let other = RgbImage::filled(3, 3, [7, 8, 9]).unwrap();
    other.save_png(&path).unwrap();
    assert_eq!(RgbImage::load_png(&path).unwrap(), other);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("out.png")]);

    // A directory that doesn't exist: an I/O error, nothing written.
    let missing = dir.path().join("no/such/dir/out.png");
    let err = image.save_png(&missing).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
}

#[test]
fn decodes_grayscale_alpha_16_bit_and_palette_pngs() {
    // Grayscale 8-bit → replicated.
    let gray = encode(2, 1, ColorType::Grayscale, BitDepth::Eight, &[0, 200], None);
    let image = RgbImage::decode_png(&gray, "gray").unwrap();
    assert_eq!(pixels(&image), vec![[0, 0, 0], [200, 200, 200]]);

    // Grayscale 16-bit (big-endian) → high byte.
    let gray16 = encode(
        2,
        1,
        ColorType::Grayscale,
        BitDepth::Sixteen,
        &[0x12, 0x34, 0xff, 0xff],
        None,
    );
    let image = RgbImage::decode_png(&gray16, "gray16").unwrap();
    assert_eq!(pixels(&image), vec![[0x12; 3], [0xff; 3]]);

    // Grayscale 1-bit → expanded to 0/255.
    let gray1 = encode(
        2,
        1,
        ColorType::Grayscale,
        BitDepth::One,
        &[0b0100_0000],
        None,
    );
    let image = RgbImage::decode_png(&gray1, "gray1").unwrap();
    assert_eq!(pixels(&image), vec![[0; 3], [255; 3]]);

    // Grayscale + alpha → composited over black.
    let gray_alpha = encode(
        2,
        1,
        ColorType::GrayscaleAlpha,
        BitDepth::Eight,
        &[200, 255, 200, 0],
        None,
    );
    let image = RgbImage::decode_png(&gray_alpha, "ga").unwrap();
    assert_eq!(pixels(&image), vec![[200; 3], [0; 3]]);

    // RGBA 8-bit: opaque kept, half-transparent halved, transparent → black.
    let rgba = encode(
        3,
        1,
        ColorType::Rgba,
        BitDepth::Eight,
        &[10, 20, 30, 255, 200, 100, 50, 128, 255, 255, 255, 0],
        None,
    );
    let image = RgbImage::decode_png(&rgba, "rgba").unwrap();
    assert_eq!(pixels(&image), vec![[10, 20, 30], [100, 50, 25], [0, 0, 0]]);

    // RGB 16-bit → high bytes.
    let rgb16 = encode(
        1,
        1,
        ColorType::Rgb,
        BitDepth::Sixteen,
        &[0xab, 0x01, 0x00, 0xff, 0x7f, 0x80],
        None,
    );
    let image = RgbImage::decode_png(&rgb16, "rgb16").unwrap();
    assert_eq!(pixels(&image), vec![[0xab, 0x00, 0x7f]]);

    // RGBA 16-bit, opaque.
    let rgba16 = encode(
        1,
        1,
        ColorType::Rgba,
        BitDepth::Sixteen,
        &[0x40, 0, 0x80, 0, 0xc0, 0, 0xff, 0xff],
        None,
    );
    let image = RgbImage::decode_png(&rgba16, "rgba16").unwrap();
    assert_eq!(pixels(&image), vec![[0x40, 0x80, 0xc0]]);

    // Palette (4-bit indices), with and without tRNS.
    let plte = [255, 0, 0, 0, 0, 255];
    let indexed = encode(
        2,
        1,
        ColorType::Indexed,
        BitDepth::Four,
        &[0x01],
        Some((&plte, None)),
    );
    let image = RgbImage::decode_png(&indexed, "palette").unwrap();
    assert_eq!(pixels(&image), vec![[255, 0, 0], [0, 0, 255]]);
    let indexed_alpha = encode(
        2,
        1,
        ColorType::Indexed,
        BitDepth::Eight,
        &[0, 1],
        Some((&plte, Some(&[255, 0]))),
    );
    let image = RgbImage::decode_png(&indexed_alpha, "palette+trns").unwrap();
    assert_eq!(pixels(&image), vec![[255, 0, 0], [0, 0, 0]]);
}

#[test]
fn damaged_pngs_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = RgbImage::filled(32, 32, [1, 2, 3])
        .unwrap()
        .encode_png()
        .unwrap();

    let truncated = dir.path().join("truncated.png");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    let garbage = dir.path().join("garbage.png");
    std::fs::write(&garbage, b"this is not a PNG at all, just text").unwrap();
    let empty = dir.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();

    for path in [&truncated, &garbage, &empty] {
        let err = RgbImage::load_png(path).unwrap_err();
        assert!(matches!(err, Error::Image { .. }), "{err:?}");
        let text = message(&err);
        assert!(text.contains(&path.display().to_string()), "{text}");
    }
    assert!(message(&RgbImage::load_png(&truncated).unwrap_err()).contains("truncated"));

    let missing = dir.path().join("missing.png");
    let err = RgbImage::load_png(&missing).unwrap_err();
    assert!(matches!(err, Error::Io { ref path, .. } if path == &missing));

    // In-memory bytes are named by their origin.
    let err = RgbImage::decode_png(&good[..40], "upload.png").unwrap_err();
    assert!(message(&err).contains("upload.png"), "{err}");
}

#[test]
fn oversized_header_is_refused_before_allocating() {
    assert_eq!(DEFAULT_MAX_PIXELS, 4096 * 4096);
    // A real decompression bomb: one pixel column over the default limit, all zeros, so the
    // file is tiny while decoding it would need a 16 MiB buffer.
    let (w, h) = (4097, 4096);
    let bomb = encode(
        w,
        h,
        ColorType::Grayscale,
        BitDepth::Eight,
        &vec![0; (w * h) as usize],
        None,
    );
    assert!(bomb.len() < 100_000, "{} bytes", bomb.len());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.png");
    std::fs::write(&path, &bomb).unwrap();

    LARGEST.with(|l| l.set(0));
    let err = RgbImage::load_png(&path).unwrap_err();
    let largest = LARGEST.with(Cell::get);
    let text = message(&err);
    assert!(matches!(err, Error::Image { .. }), "{err:?}");
    assert!(text.contains("bomb.png"), "{text}");
    assert!(text.contains("4097×4096"), "{text}");
    assert!(text.contains("limit"), "{text}");
    assert!(largest < 1 << 20, "allocated {largest} bytes at once");

    // Control: without the limit the same bytes do allocate the full frame, so the check above
    // really measures the guard.
    LARGEST.with(|l| l.set(0));
    let image = RgbImage::decode_png_limited(&bomb, "bomb", u64::MAX).unwrap();
    assert_eq!((image.width(), image.height()), (w, h));
    assert!(LARGEST.with(Cell::get) >= (w * h) as usize);

    // A header alone claiming 20000×20000 is refused the same way.
    let mut header = Vec::new();
    drop(
        png::Encoder::new(&mut header, 20_000, 20_000)
            .write_header()
            .unwrap(),
    ); // signature, IHDR, IEND
    let err = RgbImage::decode_png(&header, "header").unwrap_err();
    assert!(message(&err).contains("20000×20000"), "{err}");

    // A configurable limit: a real 64×64 image refused at 1000 pixels, accepted at 4096.
    let real = RgbImage::filled(64, 64, [5, 5, 5])
        .unwrap()
        .encode_png()
        .unwrap();
    assert!(RgbImage::decode_png_limited(&real, "small", 1000).is_err());
    assert!(RgbImage::decode_png_limited(&real, "small", 4096).is_ok());
    let file = dir.path().join("small.png");
    std::fs::write(&file, &real).unwrap();
    assert!(RgbImage::load_png_limited(Path::new(&file), 4095).is_err());
}
