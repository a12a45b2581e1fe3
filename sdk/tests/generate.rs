//! The runtime end to end on the tiny fixture: KV cache, images inside the sequence,
//! interleaving, determinism, cancellation, threads.

mod common;

use common::tiny_model;
use transfusion_sdk::{
    Control, Event, GenerateOptions, Model, Request, RgbImage, SamplingOptions, Segment, Session,
    StopReason,
};

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol, "{i}: {x} vs {y}");
    }
}

#[test]
fn incremental_decode_equals_full_recompute() {
    let model = tiny_model();
    let ids = [1u32, 10, 11, 12, 13, 14];
    let mut all = Session::new(model).unwrap();
    let last_all = all.append_tokens(&ids).unwrap();
    let mut one = Session::new(model).unwrap();
    let mut last_one = Vec::new();
    for id in ids {
        last_one = one.append_tokens(&[id]).unwrap();
    }
    close(&last_all, &last_one, 1e-5);
    let la = all.logits(&last_all).unwrap();
    let lo = one.logits(&last_one).unwrap();
    close(&la, &lo, 1e-4);
}

#[test]
fn denoising_from_the_cache_equals_recomputing_the_prefix() {
    let model = tiny_model();
    let g = &model.manifest().geometry;
    let latent: Vec<f32> = (0..g.latent_channels * g.latent_size * g.latent_size)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let prefix = [1u32, 20, 21, 22, 3];
    let mut cached = Session::new(model).unwrap();
    cached.append_tokens(&prefix).unwrap();
    let mut recompute = Session::new(model).unwrap();
    recompute.recompute_prefix();
    recompute.append_tokens(&prefix).unwrap();
    let a = cached.denoise(&latent, 500.0).unwrap();
    let b = recompute.denoise(&latent, 500.0).unwrap();
    close(&a, &b, 1e-4);
    // Denoising does not grow the sequence; appending the image does (N patches + EOI).
    assert_eq!(cached.len(), prefix.len());
    cached.append_image(&latent).unwrap();
    assert_eq!(cached.len(), prefix.len() + g.num_patches + 1);
}

fn options(seed: u64) -> GenerateOptions {
    GenerateOptions {
        seed,
        max_tokens: Some(4),
        sampling: SamplingOptions {
            temperature: 1.0,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn image_request(model: &Model, seed: u64) -> transfusion_sdk::Output {
    model
        .generate(
            Request::Image {
                prompt: "a red circle above a blue square",
            },
            &options(seed),
            |_| Control::Continue,
        )
        .unwrap()
}

#[test]
fn image_then_text_is_interleaved_and_streams_events() {
    let model = tiny_model();
    let mut events = Vec::new();
    let out = model
        .generate(
            Request::Image {
                prompt: "a red circle above a blue square",
            },
            &options(7),
            |e| {
                events.push(match e {
                    Event::Token { .. } => "token",
                    Event::ImageStart { .. } => "start",
                    Event::Step { preview, .. } => {
                        let p = preview.expect("previews are on by default");
                        assert_eq!(p.width() as usize, model.manifest().geometry.latent_size);
                        "step"
                    }
                    Event::Image { .. } => "image",
                    Event::Done { .. } => "done",
                    _ => "other",
                });
                Control::Continue
            },
        )
        .unwrap();
    let steps = model.manifest().diffusion.steps;
    assert_eq!(events[0], "start");
    assert_eq!(events.iter().filter(|e| **e == "step").count(), steps);
    assert_eq!(events[steps + 1], "image");
    assert_eq!(*events.last().unwrap(), "done");
    let Segment::Image(image) = &out.segments[0] else {
        panic!("first segment is not the image: {:?}", out.segments)
    };
    let size = model.manifest().geometry.image_size as u32;
    assert_eq!((image.width(), image.height()), (size, size));
    // Text continued after EOI (up to max_tokens, or EOS).
    let tokens = events.iter().filter(|e| **e == "token").count();
    if out.stop == StopReason::MaxTokens {
        assert_eq!(tokens, 4);
        assert!(matches!(out.segments.last(), Some(Segment::Text(_))));
    }
    assert!(out.timings.graph(transfusion_sdk::GraphId::Backbone) > std::time::Duration::ZERO);
    assert!(out.timings.graph(transfusion_sdk::GraphId::VaeDecoder) > std::time::Duration::ZERO);
}

#[test]
fn same_seed_same_output_bitwise() {
    let model = tiny_model();
    let a = image_request(model, 3);
    let b = image_request(model, 3);
    let c = image_request(model, 4);
    assert_eq!(a.segments, b.segments);
    assert_ne!(a.images()[0], c.images()[0]);
}

#[test]
fn cancel_during_diffusion_stops_without_an_image() {
    let model = tiny_model();
    let out = model
        .generate(
            Request::Image { prompt: "a star" },
            &options(1),
            |e| match e {
                Event::Step { index: 1, .. } => Control::Cancel,
                _ => Control::Continue,
            },
        )
        .unwrap();
    assert_eq!(out.stop, StopReason::Cancelled);
    assert!(out.images().is_empty());
}

#[test]
fn two_sessions_in_two_threads_match_one_thread() {
    let model = tiny_model();
    let single = [image_request(model, 11), image_request(model, 12)];
    let threaded: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = [11u64, 12]
            .into_iter()
            .map(|seed| s.spawn(move || image_request(model, seed)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (a, b) in single.iter().zip(&threaded) {
        assert_eq!(a.segments, b.segments);
    }
}

#[test]
fn caption_and_edit_take_images_of_any_size() {
    let model = tiny_model();
    // Not the model's size: resized with a logged note.
    let input = RgbImage::filled(40, 24, [200, 30, 30]).unwrap();
    let caption = model
        .generate(Request::Caption { image: &input }, &options(5), |_| {
            Control::Continue
        })
        .unwrap();
    assert!(caption.images().is_empty());
    let edit = model
        .generate(
            Request::Edit {
                image: &input,
                instruction: "make it blue",
            },
            &GenerateOptions {
                max_tokens: Some(0),
                ..options(5)
            },
            |_| Control::Continue,
        )
        .unwrap();
    assert_eq!(edit.images().len(), 1);
}

#[test]
fn guidance_runs_the_unconditional_branch() {
    let model = tiny_model();
    let plain = image_request(model, 9);
    let guided = model
        .generate(
            Request::Image {
                prompt: "a red circle above a blue square",
            },
            &GenerateOptions {
                guidance: Some(3.0),
                ..options(9)
            },
            |_| Control::Continue,
        )
        .unwrap();
    assert_ne!(plain.images()[0], guided.images()[0]);
}

#[test]
fn vae_roundtrip_is_encode_then_decode_at_the_model_size() {
    let model = tiny_model();
    let size = model.manifest().geometry.image_size;
    let data: Vec<u8> = (0..size * size * 3).map(|i| (i * 37 % 251) as u8).collect();
    let input = RgbImage::new(size as u32, size as u32, data).unwrap();
    let out = model.vae_roundtrip(&input).unwrap();
    assert_eq!((out.width() as usize, out.height() as usize), (size, size));
    // The same as the session's two graph calls.
    let mut session = Session::new(model).unwrap();
    let latent = session.encode_image(&input.to_chw()).unwrap();
    let rgb = session.decode_latent(&latent).unwrap();
    assert_eq!(out, RgbImage::from_chw(&rgb, size, size).unwrap());
    // Another input gives another image (the decoder reads the latent).
    let flat = RgbImage::filled(size as u32, size as u32, [240, 220, 40]).unwrap();
    assert_ne!(model.vae_roundtrip(&flat).unwrap(), out);
    // Any size: resized to the model's first.
    let big = input.resize(2 * size as u32, size as u32 + 8).unwrap();
    let from_big = model.vae_roundtrip(&big).unwrap();
    let resized = big.resize(size as u32, size as u32).unwrap();
    assert_eq!(from_big, model.vae_roundtrip(&resized).unwrap());
}
