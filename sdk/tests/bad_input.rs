//! Bad generation inputs: every one is a clear error naming the option, file or tensor at fault
//! (never a panic, never a black image), emitted before anything is streamed, or succeeds where
//! the input is merely unusual (unknown words, odd image sizes, truncated prompts).

mod common;

use common::{bundle_copy, fixture_checkpoint, tiny_model};
use rand::SeedableRng;
use transfusion_sdk::config::SamplerKind;
use transfusion_sdk::diffusion::{Sampler, SamplerOptions};
use transfusion_sdk::{
    Control, Error, Event, GenerateOptions, LoadOptions, Model, PartPrecisions, Precision,
    PrecisionChoice, Request, RgbImage, SamplingOptions, Session, StopReason,
};

/// Short runs: a few text tokens after the prompt or image.
fn options() -> GenerateOptions {
    GenerateOptions {
        max_tokens: Some(3),
        ..Default::default()
    }
}

/// Runs `request`, returning the result and the events seen (by kind).
fn run(
    model: &Model,
    request: Request,
    options: &GenerateOptions,
) -> (
    transfusion_sdk::Result<transfusion_sdk::Output>,
    Vec<&'static str>,
) {
    let mut events = Vec::new();
    let result = model.generate(request, options, |e| {
        events.push(match e {
            Event::Token { .. } => "token",
            Event::ImageStart { .. } => "start",
            Event::Step { .. } => "step",
            Event::Image { .. } => "image",
            Event::Done { .. } => "done",
            Event::UnknownWords { .. } => "unknown",
            _ => "other",
        });
        Control::Continue
    });
    (result, events)
}

/// Runs `request` on the tiny model expecting an error before any event was streamed.
fn generate_err(request: Request, options: &GenerateOptions) -> Error {
    let (result, events) = run(tiny_model(), request, options);
    let err = result.expect_err("generation must fail");
    assert!(
        events.is_empty(),
        "events before the error {err}: {events:?}"
    );
    err
}

fn contains_all(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "`{needle}` missing from: {text}");
    }
}

fn assert_invalid_option(err: Error, name: &str, needles: &[&str]) {
    match &err {
        Error::InvalidOption { name: n, message } => {
            assert_eq!(n, name, "{err}");
            contains_all(message, needles);
            contains_all(&err.to_string(), &[&format!("`{name}`")]);
        }
        other => panic!("expected Error::InvalidOption `{name}`, got {other:?}"),
    }
}

fn assert_numerical(err: Error, what: &str, needles: &[&str]) {
    match &err {
        Error::Numerical { what: w, message } => {
            assert_eq!(w, what, "{err}");
            contains_all(message, needles);
        }
        other => panic!("expected Error::Numerical in {what}, got {other:?}"),
    }
}

fn latent_len(model: &Model) -> usize {
    let g = &model.manifest().geometry;
    g.latent_channels * g.latent_size * g.latent_size
}

/// A prompt of about `words` known words.
fn long_prompt(words: usize) -> String {
    let phrase = ["a", "red", "circle", "above", "a", "blue", "square"];
    phrase
        .iter()
        .cycle()
        .take(words)
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn prompt_longer_than_the_context_fails_unless_truncated() {
    let model = tiny_model();
    let max = model.manifest().geometry.max_seq_len;
    let prompt = long_prompt(max + 50);
    let words = model.tokenizer().encode(&prompt).unwrap().len();
    for request in [
        Request::Text { prompt: &prompt },
        Request::Image { prompt: &prompt },
    ] {
        // BOS, the words, and BOI for an image.
        let tokens = words + 1 + usize::from(matches!(request, Request::Image { .. }));
        let err = generate_err(request, &options());
        match &err {
            Error::Context { message } => contains_all(
                message,
                &[
                    &format!("the prompt is {tokens}"),
                    &format!("context of {max}"),
                    "truncate_prompt",
                ],
            ),
            other => panic!("expected Error::Context, got {other:?}"),
        }
        let truncate = GenerateOptions {
            truncate_prompt: true,
            ..options()
        };
        let (result, _) = run(model, request, &truncate);
        let out = result.unwrap();
        if matches!(request, Request::Image { .. }) {
            assert_eq!(out.images().len(), 1);
        }
    }
}

#[test]
fn empty_and_whitespace_prompts_are_refused() {
    let image = RgbImage::filled(32, 32, [10, 200, 10]).unwrap();
    for prompt in ["", " ", " \t\n  "] {
        for request in [
            Request::Text { prompt },
            Request::Image { prompt },
            Request::Edit {
                image: &image,
                instruction: prompt,
            },
        ] {
            let err = generate_err(request, &options());
            assert_invalid_option(err, "prompt", &["empty", "whitespace"]);
        }
    }
}

#[test]
fn unknown_words_map_to_the_unknown_token() {
    let model = tiny_model();
    let unk = model.manifest().special_tokens.unk;
    let boi = model.manifest().special_tokens.boi;
    let ids = model.tokenizer().encode("a zyzzyva xylophone").unwrap();
    assert_eq!(ids.len(), 3);
    assert_ne!(ids[0], unk);
    assert_eq!(&ids[1..], &[unk, unk]);
    // Special-token text typed in a prompt is ordinary text, never an image block.
    let ids = model.tokenizer().encode("[BOI] a [EOS]").unwrap();
    assert!(!ids.contains(&boi), "{ids:?}");
    for prompt in ["zyzzyva quux", "émoji 🦀 ünïcode", "[BOI] [EOI] [PAD]"] {
        let (result, _) = run(model, Request::Image { prompt }, &options());
        assert_eq!(result.unwrap().images().len(), 1, "{prompt}");
    }
}

#[test]
fn input_images_of_the_wrong_size_are_resized() {
    let model = tiny_model();
    let size = model.manifest().geometry.image_size as u32;
    for (w, h) in [(1, 1), (97, 13), (3, 300), (size * 4, size * 4)] {
        let image = RgbImage::filled(w, h, [30, 60, 200]).unwrap();
        let (caption, _) = run(model, Request::Caption { image: &image }, &options());
        assert!(caption.unwrap().images().is_empty());
        let edit = Request::Edit {
            image: &image,
            instruction: "make it red",
        };
        let (edit, _) = run(model, edit, &options());
        let out = edit.unwrap();
        let images = out.images();
        assert_eq!(images.len(), 1);
        assert_eq!((images[0].width(), images[0].height()), (size, size));
    }
}

#[test]
fn unreadable_image_files_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let png = RgbImage::filled(8, 8, [1, 2, 3])
        .unwrap()
        .encode_png()
        .unwrap();
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "garbage.png",
            b"definitely not a png".to_vec(),
            "not a valid PNG",
        ),
        ("truncated.png", png[..png.len() / 2].to_vec(), "truncated"),
        ("empty.png", Vec::new(), "truncated"),
    ];
    for (name, bytes, expected) in cases {
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let err: Error = RgbImage::load_png(&path).unwrap_err().into();
        match &err {
            Error::Image { path: p, message } => {
                assert_eq!(p, &path.display().to_string(), "{err}");
                contains_all(message, &[expected]);
            }
            other => panic!("expected Error::Image for {name}, got {other:?}"),
        }
    }
    // A directory is not a PNG either.
    let err: Error = RgbImage::load_png(tmp.path()).unwrap_err().into();
    match &err {
        Error::Image { path, message } => {
            assert_eq!(path, &tmp.path().display().to_string(), "{err}");
            contains_all(message, &["read failed"]);
        }
        other => panic!("expected Error::Image for a directory, got {other:?}"),
    }
    // A missing file is an I/O error naming it.
    let missing = tmp.path().join("missing.png");
    match Error::from(RgbImage::load_png(&missing).unwrap_err()) {
        Error::Io { path, source } => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Error::Io, got {other:?}"),
    }
}

#[test]
fn steps_out_of_range_are_refused() {
    for (steps, shown) in [(0, "got 0"), (1001, "got 1001")] {
        let options = GenerateOptions {
            steps: Some(steps),
            ..options()
        };
        let err = generate_err(Request::Image { prompt: "a star" }, &options);
        assert_invalid_option(err, "steps", &["1..=1000", shown]);
    }
}

#[test]
fn guidance_must_be_finite_and_at_least_one() {
    for (guidance, shown) in [
        (f32::NAN, "got NaN"),
        (0.5, "got 0.5"),
        (f32::INFINITY, "got inf"),
    ] {
        let options = GenerateOptions {
            guidance: Some(guidance),
            ..options()
        };
        let err = generate_err(Request::Image { prompt: "a star" }, &options);
        assert_invalid_option(err, "guidance", &[">= 1", shown]);
    }
}

#[test]
fn eta_out_of_range_or_for_another_sampler_is_refused() {
    for (eta, shown) in [(2.0, "got 2"), (-0.5, "got -0.5"), (f32::NAN, "got NaN")] {
        let options = GenerateOptions { eta, ..options() };
        let err = generate_err(Request::Image { prompt: "a star" }, &options);
        assert_invalid_option(err, "eta", &["[0, 1]", shown]);
    }
    let options = GenerateOptions {
        eta: 0.5,
        sampler: Some(SamplerKind::Euler),
        ..options()
    };
    let err = generate_err(Request::Image { prompt: "a star" }, &options);
    assert_invalid_option(err, "eta", &["ddim", "Euler"]);
}

#[test]
fn invalid_sampling_options_are_refused() {
    type Case = (&'static str, fn(&mut SamplingOptions), &'static str);
    let cases: [Case; 5] = [
        ("top_p", |o| o.top_p = 0.0, "got 0"),
        ("top_p", |o| o.top_p = 1.5, "got 1.5"),
        ("temperature", |o| o.temperature = -1.0, "got -1"),
        ("temperature", |o| o.temperature = f32::NAN, "got NaN"),
        ("min_p", |o| o.min_p = 1.0, "got 1"),
    ];
    for (name, edit, shown) in cases {
        let mut sampling = SamplingOptions::default();
        edit(&mut sampling);
        let options = GenerateOptions {
            sampling,
            ..options()
        };
        let err = generate_err(
            Request::Text {
                prompt: "a red circle",
            },
            &options,
        );
        assert_invalid_option(err, name, &[shown]);
    }
}

#[test]
fn nan_in_the_sampler_is_numerical() {
    let model = tiny_model();
    let n = latent_len(model);
    let config = &model.manifest().diffusion;
    let mut sampler = Sampler::new(&SamplerOptions::from_config(config)).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut latent = vec![0.5f32; n];
    let mut output = vec![0.1f32; n];
    output[7] = f32::NAN;
    let err = sampler.step(0, &mut latent, &output, &mut rng).unwrap_err();
    assert_numerical(err, "model output", &["NaN", "element 7", "step 0"]);
    assert!(latent.iter().all(|&v| v == 0.5), "the latent was changed");
    latent[3] = f32::NAN;
    let err = sampler
        .step(0, &mut latent, &vec![0.1; n], &mut rng)
        .unwrap_err();
    assert_numerical(err, "latent", &["NaN", "element 3"]);
}

#[test]
fn nan_latent_in_a_session_is_numerical_and_leaves_the_session_unchanged() {
    let model = tiny_model();
    let sp = model.manifest().special_tokens;
    let mut latent = vec![0.25f32; latent_len(model)];
    latent[5] = f32::NAN;
    let mut session = Session::new(model).unwrap();
    session.append_tokens(&[sp.bos, sp.boi]).unwrap();
    let err = session.denoise(&latent, 500.0).unwrap_err();
    assert_numerical(err, "latent", &["NaN", "element 5"]);
    let err = session.append_image(&latent).unwrap_err();
    assert_numerical(err, "latent", &["NaN", "element 5"]);
    // Nothing reached the KV cache: the session still continues normally.
    assert_eq!(session.len(), 2);
    latent[5] = 0.25;
    let hidden = session.append_image(&latent).unwrap();
    assert!(session
        .logits(&hidden)
        .unwrap()
        .iter()
        .all(|v| v.is_finite()));

    // Decoding a NaN latent never becomes a (black) image: the VAE decoder of the tiny model
    // turns it into finite values, so the session checks its input.
    latent[5] = f32::NAN;
    let err = session.decode_latent(&latent).unwrap_err();
    assert_numerical(err, "latent", &["NaN", "element 5"]);
    latent[5] = f32::NEG_INFINITY;
    let err = session.decode_latent(&latent).unwrap_err();
    assert_numerical(err, "latent", &["-inf", "element 5"]);
}

#[test]
fn non_finite_decoder_output_is_numerical_not_a_black_image() {
    let err = RgbImage::from_chw(&[0.0, f32::NAN, 0.0], 1, 1).unwrap_err();
    assert_numerical(err.into(), "image", &["NaN", "channel 1", "pixel (0, 0)"]);
    // A huge finite latent: the tiny VAE decoder's group norms keep it finite, so it can't
    // provoke a NaN; whatever comes out is a valid image or a Numerical error, never a panic.
    let model = tiny_model();
    let g = &model.manifest().geometry;
    let mut session = Session::new(model).unwrap();
    for huge in [1e30, -f32::MAX] {
        let rgb = session
            .decode_latent(&vec![huge; latent_len(model)])
            .unwrap();
        match RgbImage::from_chw(&rgb, g.image_size, g.image_size) {
            Ok(image) => assert_eq!(image.width() as usize, g.image_size),
            Err(err) => assert_numerical(err.into(), "image", &["channel", "pixel"]),
        }
    }
}

#[test]
fn nan_weighted_vae_decoder_gives_a_numerical_error_not_an_image() {
    use transfusion_tools::checkpoint::Checkpoint;
    use transfusion_tools::onnx::build_graph;
    // `Checkpoint::save` refuses non-finite weights, so build the one graph from a checkpoint
    // poisoned in memory and put it in a copy of the bundle (same interface, NaN weights).
    let mut checkpoint = Checkpoint::load(fixture_checkpoint()).unwrap();
    let weight = checkpoint
        .tensors
        .get_mut("vae.decoder.conv_out.weight")
        .unwrap();
    weight.data[0] = f32::NAN;
    let graph = build_graph(
        transfusion_sdk::GraphId::VaeDecoder,
        &checkpoint,
        Precision::Fp32,
        Default::default(),
    )
    .unwrap();
    let (_tmp, dir) = bundle_copy();
    std::fs::write(dir.join("fp32/vae_decoder.onnx"), &graph.built.bytes).unwrap();
    let options = LoadOptions {
        precision: PartPrecisions::all(PrecisionChoice::Exact(Precision::Fp32)),
        ..Default::default()
    };
    let model = Model::load(&dir, &options).unwrap();
    let (result, events) = run(
        &model,
        Request::Image { prompt: "a star" },
        &options_no_text(),
    );
    let err = result.unwrap_err();
    assert_numerical(err, "image", &["NaN", "channel 0"]);
    assert!(!events.contains(&"image"), "{events:?}");
}

fn options_no_text() -> GenerateOptions {
    GenerateOptions {
        max_tokens: Some(0),
        ..Default::default()
    }
}

#[test]
fn a_one_megabyte_prompt_is_a_context_error_or_truncated() {
    let model = tiny_model();
    let prompt = long_prompt(250_000);
    assert!(prompt.len() >= 1 << 20, "{} bytes", prompt.len());
    let request = Request::Image { prompt: &prompt };
    assert!(matches!(
        generate_err(request, &options()),
        Error::Context { .. }
    ));
    let truncate = GenerateOptions {
        truncate_prompt: true,
        ..options()
    };
    let (result, _) = run(model, request, &truncate);
    assert_eq!(result.unwrap().images().len(), 1);
}

#[test]
fn extreme_but_legal_values_end_at_the_context_not_in_a_panic() {
    let model = tiny_model();
    let max = model.manifest().geometry.max_seq_len;
    let options = GenerateOptions {
        seed: u64::MAX,
        max_tokens: Some(usize::MAX),
        max_images: usize::MAX,
        sampling: SamplingOptions {
            temperature: 1e30,
            top_k: usize::MAX,
            ..Default::default()
        },
        ..Default::default()
    };
    let (result, events) = run(model, Request::Text { prompt: "a" }, &options);
    let out = result.unwrap();
    assert!(
        matches!(
            out.stop,
            StopReason::ContextFull | StopReason::EndOfSequence
        ),
        "{:?}",
        out.stop
    );
    assert!(events.len() <= max * 2, "{} events", events.len());
}

#[test]
fn a_latent_beyond_the_fp16_range_is_numerical_at_fp16_and_fine_at_fp32() {
    // What an untrained model's sampler makes (|x| ~ 1e5): cast to FP16 it would be inf, and the
    // KV cache NaN; the session refuses it and stays usable.
    let load = |p| {
        let options = LoadOptions {
            precision: PartPrecisions::all(PrecisionChoice::Exact(p)),
            ..Default::default()
        };
        Model::load(common::tiny_bundle(), &options).unwrap()
    };
    let fp16 = load(Precision::Fp16);
    let sp = fp16.manifest().special_tokens;
    let mut latent = vec![0.25f32; latent_len(&fp16)];
    latent[7] = 1e5;
    let mut session = Session::new(&fp16).unwrap();
    session.append_tokens(&[sp.bos, sp.boi]).unwrap();
    let err = session.append_image(&latent).unwrap_err();
    assert_numerical(
        err,
        "input of `patch_in`",
        &["100000", "element 7", "FP16 range"],
    );
    assert_eq!(session.len(), 2);

    let fp32 = load(Precision::Fp32);
    let mut session = Session::new(&fp32).unwrap();
    session.append_tokens(&[sp.bos, sp.boi]).unwrap();
    let hidden = session.append_image(&latent).unwrap();
    assert!(session
        .logits(&hidden)
        .unwrap()
        .iter()
        .all(|v| v.is_finite()));
}
