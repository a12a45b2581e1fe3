//! Soak: many generations in one process, memory measured. A device app runs for weeks; a leak
//! of a few KiB per generation is a crash a month later.
//!
//! Runs `TF_SOAK_RUNS` generations (default 200, what CI runs) on the tiny fixture, cycling the
//! request kinds (text, image then text, caption, edit) and the precisions (FP32, FP16, INT8: one
//! `Model` each, loaded up front). Prints the resident set size (RSS, `/proc/self/statm`) after
//! loading, after a warm-up of one cycle per model (tract plans and allocator pools settle there),
//! and at the end; fails when the growth after warm-up exceeds `TF_SOAK_MAX_GROWTH_MIB`
//! (default 8 MiB). `harness = false`: a plain binary, so `cargo test` runs it and its report is
//! printed whether it passes or not. Figures: docs/bad-inputs.md ("Soak").

mod common;

use std::time::Instant;

use transfusion_sdk::{
    Control, Error, GenerateOptions, LoadOptions, Model, PartPrecisions, Precision,
    PrecisionChoice, Request, RgbImage, SamplingOptions,
};

const KINDS: usize = 4;
const PRECISIONS: [Precision; 3] = [Precision::Fp32, Precision::Fp16, Precision::Int8];

fn env_number(key: &str, default: f64) -> f64 {
    match std::env::var(key) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v}: expected a number")),
        Err(_) => default,
    }
}

/// Resident set size in bytes (Linux), `None` elsewhere.
fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // Every Linux target this SDK ships on (x86_64, aarch64 Jetson) uses 4 KiB pages.
    Some(pages * 4096)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Generation `k`: request kind `k % 4`, model `(k / 4) % 3`, seed `k`. Returns whether it
/// succeeded: the fixture's random weights make diverging latents that FP16 refuses with
/// `Error::Numerical` (the one error allowed here; error paths are soaked too).
fn generate(models: &[Model], image: &RgbImage, k: usize) -> bool {
    let model = &models[(k / KINDS) % models.len()];
    let options = GenerateOptions {
        seed: k as u64,
        max_tokens: Some(8),
        sampling: SamplingOptions {
            temperature: 1.0,
            ..Default::default()
        },
        ..Default::default()
    };
    let request = match k % KINDS {
        0 => Request::Text {
            prompt: "three green squares",
        },
        1 => Request::Image {
            prompt: "a red circle above a blue square",
        },
        2 => Request::Caption { image },
        _ => Request::Edit {
            image,
            instruction: "make the circle blue",
        },
    };
    let mut events = 0usize;
    let result = model.generate(request, &options, |_| {
        events += 1;
        Control::Continue
    });
    match result {
        Ok(out) => {
            assert!(events > 0, "generation {k}: no events");
            if matches!(k % KINDS, 1 | 3) {
                assert_eq!(out.images().len(), 1, "generation {k}: no image");
            }
            true
        }
        Err(Error::Numerical { .. }) => false,
        Err(e) => panic!("generation {k} failed: {e}"),
    }
}

fn main() {
    let runs = env_number("TF_SOAK_RUNS", 200.0) as usize;
    let max_growth = env_number("TF_SOAK_MAX_GROWTH_MIB", 8.0);
    let models: Vec<Model> = PRECISIONS
        .iter()
        .map(|&p| {
            let options = LoadOptions {
                precision: PartPrecisions::all(PrecisionChoice::Exact(p)),
                threads: Some(1),
                ..Default::default()
            };
            Model::load(common::tiny_bundle(), &options).unwrap()
        })
        .collect();
    let size = models[0].manifest().geometry.image_size as u32;
    let pixels: Vec<u8> = (0..size * size * 3).map(|i| (i * 13 % 251) as u8).collect();
    let image = RgbImage::new(size, size, pixels).unwrap();
    let loaded = rss();
    let warm_up = KINDS * models.len();
    for k in 0..warm_up {
        generate(&models, &image, k);
    }
    let warm = rss();
    let start = Instant::now();
    let mut failed = 0usize;
    for k in warm_up..warm_up + runs {
        failed += usize::from(!generate(&models, &image, k));
    }
    let elapsed = start.elapsed();
    let end = rss();
    println!(
        "soak: {runs} generations after a warm-up of {warm_up} in {:.1} s ({:.1} ms each), \
         {failed} ended in a numerical error",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e3 / runs.max(1) as f64
    );
    assert!(
        failed < runs / 2 + 1,
        "{failed} of {runs} generations failed"
    );
    let (Some(loaded), Some(warm), Some(end)) = (loaded, warm, end) else {
        println!("soak: no /proc/self/statm on this system; RSS not checked");
        return;
    };
    let growth = mib(end) - mib(warm);
    println!(
        "soak: RSS {:.1} MiB loaded, {:.1} MiB after warm-up, {:.1} MiB after {runs} runs: \
         growth {growth:+.2} MiB ({:+.1} KiB per generation), bound {max_growth} MiB",
        mib(loaded),
        mib(warm),
        mib(end),
        growth * 1024.0 / runs.max(1) as f64,
    );
    assert!(
        growth <= max_growth,
        "RSS grew {growth:.2} MiB over {runs} generations (bound {max_growth} MiB)"
    );
}
