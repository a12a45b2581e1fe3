//! Golden-image tests of the layout, through the headless PNG backend.
//!
//! Each case renders a deterministic frame (synthetic gradient images, fixed text) at a panel
//! size, writes it with `PngDisplay`, and compares the PNG pixel for pixel with
//! `tests/golden/<case>-<W>x<H>.png`. After an intended layout change, regenerate with
//!
//! ```sh
//! UPDATE_GOLDEN=1 cargo test -p transfusion-board --test golden
//! ```
//!
//! and look at the new PNGs before committing them. On a mismatch the rendered file is kept
//! under `target/tmp/golden-actual/` for comparison.

use std::path::{Path, PathBuf};

use embedded_graphics::pixelcolor::{Rgb565, Rgb888};
use embedded_graphics::prelude::*;
use transfusion_board::{render, Canvas, Display, Frame, ImageKind, PngDisplay, Status};
use transfusion_image::RgbImage;

const PROMPT: &str = "a watercolor fox in a snowy forest at dusk";
const CAPTION: &str = "A small red fox sits in deep snow between tall pine trees; soft blue \
                       shadows and warm evening light make the scene calm and quiet.";

/// 16×16 latent-preview stand-in: red across, green down, blue falling diagonally.
fn preview() -> RgbImage {
    let data = (0..16u32)
        .flat_map(|y| (0..16u32).map(move |x| (x, y)))
        .flat_map(|(x, y)| [(x * 17) as u8, (y * 17) as u8, (255 - (x + y) * 8) as u8])
        .collect();
    RgbImage::new(16, 16, data).unwrap()
}

/// 64×64 "final image": smooth gradients with a checker pattern to expose scaling errors.
fn final_image() -> RgbImage {
    let data = (0..64u32)
        .flat_map(|y| (0..64u32).map(move |x| (x, y)))
        .flat_map(|(x, y)| {
            let check = if (x / 8 + y / 8) % 2 == 0 { 40 } else { 0 };
            [
                (x * 4) as u8,
                (y * 3 + check) as u8,
                (255 - x * 2 - y) as u8,
            ]
        })
        .collect();
    RgbImage::new(64, 64, data).unwrap()
}

fn progress_frame() -> Frame {
    Frame::new(
        PROMPT,
        Status::Generating {
            step: 3,
            total: 8,
            elapsed_ms: 1234,
        },
    )
    .with_image(preview(), ImageKind::Preview)
}

fn final_frame() -> Frame {
    Frame::new(PROMPT, Status::Done { total_ms: 4321 })
        .with_image(final_image(), ImageKind::Final)
        .with_text(CAPTION)
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Renders `frame` at `w`×`h` through the PNG backend and checks it against the golden file.
fn check(case: &str, frame: &Frame, w: u32, h: u32) {
    let name = format!("{case}-{w}x{h}.png");
    let out = tempfile::tempdir().unwrap();
    let mut display = PngDisplay::new(out.path(), Size::new(w, h)).unwrap();
    display.show(frame).unwrap();
    let written = out.path().join("frame-00001.png");
    assert_eq!(display.last_path(), Some(written.as_path()));
    let golden = golden_dir().join(&name);

    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::copy(&written, &golden).unwrap();
        eprintln!("updated {}", golden.display());
        return;
    }
    let actual = RgbImage::load_png(&written).unwrap();
    let expected = RgbImage::load_png(&golden).unwrap_or_else(|e| {
        panic!(
            "{e}: run with UPDATE_GOLDEN=1 to create {}",
            golden.display()
        )
    });
    if actual != expected {
        let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("golden-actual");
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::copy(&written, keep.join(&name)).unwrap();
        let differing = actual
            .data()
            .chunks(3)
            .zip(expected.data().chunks(3))
            .filter(|(a, b)| a != b)
            .count();
        panic!(
            "{name}: {differing} pixels differ (sizes {}x{} vs {}x{}); actual kept in {}",
            actual.width(),
            actual.height(),
            expected.width(),
            expected.height(),
            keep.display()
        );
    }
}

#[test]
fn progress_240x240() {
    check("progress", &progress_frame(), 240, 240);
}

#[test]
fn progress_320x240() {
    check("progress", &progress_frame(), 320, 240);
}

#[test]
fn progress_800x480() {
    check("progress", &progress_frame(), 800, 480);
}

#[test]
fn final_240x240() {
    check("final", &final_frame(), 240, 240);
}

#[test]
fn final_320x240() {
    check("final", &final_frame(), 320, 240);
}

#[test]
fn final_800x480() {
    check("final", &final_frame(), 800, 480);
}

/// 1080p: the preview is scaled by the largest integer factor and centred; text at 2× zoom.
#[test]
fn full_hd_scales_and_centres_the_image() {
    let size = Size::new(1920, 1080);
    let mut canvas = Canvas::new(size, Rgb888::BLACK).unwrap();
    let Ok(()) = render(&progress_frame(), &mut canvas);
    let layout = transfusion_board::Layout::new(canvas.bounding_box());
    assert_eq!(layout.zoom, 2);
    let body = layout.body;
    // Inside the 2-px border, 16 px × k must fit the body; k is the largest such factor.
    let k = (body.size.width - 4) / 16;
    let k = k.min((body.size.height - 4) / 16);
    let shown = 16 * k;
    let left = body.top_left.x as u32 + (body.size.width - shown) / 2;
    let top = body.top_left.y as u32 + (body.size.height - shown) / 2;
    let img = preview();
    for (sx, sy) in [(0, 0), (15, 0), (7, 9), (15, 15)] {
        let [r, g, b] = img.pixel(sx, sy).unwrap();
        for (dx, dy) in [(0, 0), (k - 1, k - 1)] {
            let got = canvas.get(left + sx * k + dx, top + sy * k + dy).unwrap();
            assert_eq!(
                got,
                Rgb888::new(r, g, b),
                "source ({sx},{sy}) offset ({dx},{dy})"
            );
        }
    }
    // The border sits right outside the image.
    assert_ne!(
        canvas.get(left - 1, top + 5).unwrap(),
        canvas.get(left, top + 5).unwrap()
    );
}

/// Rendering to an RGB565 panel gives exactly the RGB888 picture converted pixel by pixel.
#[test]
fn rgb565_matches_rgb888_converted() {
    let size = Size::new(320, 240);
    let frame = final_frame();
    let mut wide = Canvas::new(size, Rgb888::BLACK).unwrap();
    let mut narrow = Canvas::new(size, Rgb565::BLACK).unwrap();
    let Ok(()) = render(&frame, &mut wide);
    let Ok(()) = render(&frame, &mut narrow);
    for (a, b) in wide.pixels().iter().zip(narrow.pixels()) {
        assert_eq!(Rgb565::from(*a), *b);
    }
}

/// Odd, tiny and huge inputs never panic.
#[test]
fn any_size_and_content_renders() {
    let long: String = "wörd ".repeat(400) + &"x".repeat(300);
    let frames = [
        Frame::default(),
        Frame::new(&long, Status::error(&long)).with_text(&long),
        Frame::new(
            "p",
            Status::Generating {
                step: 99,
                total: 0,
                elapsed_ms: u64::MAX,
            },
        )
        .with_image(final_image(), ImageKind::Final)
        .with_text(&long),
    ];
    for (w, h) in [
        (1, 1),
        (8, 8),
        (64, 32),
        (32, 200),
        (240, 240),
        (1920, 1080),
        (600, 1024),
    ] {
        let mut canvas = Canvas::new(Size::new(w, h), Rgb565::BLACK).unwrap();
        for frame in &frames {
            let Ok(()) = render(frame, &mut canvas);
        }
    }
}
