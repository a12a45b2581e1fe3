//! K threads × M generations on one shared `Model`, at every precision: each outcome equals the
//! one a single thread gets for the same seed and request (the model holds no per-call state;
//! sessions own their KV caches and RNGs). Outcomes include errors: the fixture's random weights
//! make diverging latents, which FP16 refuses as a numerical error, and that must be the same
//! error on every thread too.

mod common;

use transfusion_sdk::{
    Control, GenerateOptions, LoadOptions, Model, PartPrecisions, Precision, PrecisionChoice,
    Request, SamplingOptions, Segment, StopReason,
};

/// What one generation gave: its segments and stop reason, or its error's text.
type Outcome = Result<(Vec<Segment>, StopReason), String>;

const THREADS: usize = 4;
const PER_THREAD: usize = 6;

fn model(precision: Precision) -> Model {
    let options = LoadOptions {
        precision: PartPrecisions::all(PrecisionChoice::Exact(precision)),
        threads: Some(1),
        ..Default::default()
    };
    Model::load(common::tiny_bundle(), &options).unwrap()
}

/// Job `k`: alternates text, image (then text) and caption requests, seeded by `k`.
fn job(model: &Model, k: usize) -> Outcome {
    let options = GenerateOptions {
        seed: k as u64,
        max_tokens: Some(6),
        sampling: SamplingOptions {
            temperature: 0.9,
            ..Default::default()
        },
        previews: false,
        ..Default::default()
    };
    let size = model.manifest().geometry.image_size as u32;
    let pixels: Vec<u8> = (0..size * size * 3)
        .map(|i| (i as usize * 31 + k * 7) as u8)
        .collect();
    let image = transfusion_sdk::RgbImage::new(size, size, pixels).unwrap();
    let request = match k % 3 {
        0 => Request::Text {
            prompt: "two green stars",
        },
        1 => Request::Image {
            prompt: "a red circle above a blue square",
        },
        _ => Request::Caption { image: &image },
    };
    model
        .generate(request, &options, |_| Control::Continue)
        .map(|out| (out.segments, out.stop))
        .map_err(|e| e.to_string())
}

fn threads_match_one_thread(precision: Precision) {
    let model = model(precision);
    let jobs = THREADS * PER_THREAD;
    let single: Vec<Outcome> = (0..jobs).map(|k| job(&model, k)).collect();
    assert!(
        single.iter().filter(|o| o.is_ok()).count() >= jobs / 2,
        "{precision}: most jobs should succeed: {single:?}"
    );
    let mut threaded: Vec<(usize, Outcome)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let model = &model;
                // Interleaved job numbers, so every thread runs every request kind.
                s.spawn(move || {
                    (0..PER_THREAD)
                        .map(|m| {
                            let k = m * THREADS + t;
                            (k, job(model, k))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    threaded.sort_by_key(|(k, _)| *k);
    assert_eq!(threaded.len(), jobs);
    for ((k, out), expected) in threaded.iter().zip(&single) {
        assert_eq!(
            out, expected,
            "{precision}: job {k} differs between threads and one thread"
        );
    }
}

#[test]
fn fp32_threads_match_one_thread() {
    threads_match_one_thread(Precision::Fp32);
}

#[test]
fn fp16_threads_match_one_thread() {
    threads_match_one_thread(Precision::Fp16);
}

#[test]
fn int8_threads_match_one_thread() {
    threads_match_one_thread(Precision::Int8);
}
