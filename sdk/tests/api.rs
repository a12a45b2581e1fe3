//! The app-facing surface: one-call image and caption, image requests without text unless
//! asked, unknown prompt words reported or refused, options checked before anything loads.

mod common;

use common::{tiny_bundle, tiny_model};
use transfusion_sdk::{
    Control, Error, Event, GenerateOptions, GraphId, LoadOptions, Model, Request, Segment,
    StopReason, UnknownWords,
};

#[test]
fn an_image_request_generates_no_text_unless_asked() {
    let model = tiny_model();
    let out = model
        .generate(
            Request::Image {
                prompt: "a red circle",
            },
            &GenerateOptions::default(),
            |_| Control::Continue,
        )
        .unwrap();
    assert_eq!(out.stop, StopReason::Complete);
    assert_eq!(out.segments.len(), 1, "{:?}", out.segments);
    assert!(matches!(out.segments[0], Segment::Image(_)));
    let asked = GenerateOptions {
        max_tokens: Some(3),
        sampling: transfusion_sdk::SamplingOptions::greedy(),
        ..Default::default()
    };
    let out = model
        .generate(
            Request::Image {
                prompt: "a red circle",
            },
            &asked,
            |_| Control::Continue,
        )
        .unwrap();
    assert_ne!(out.stop, StopReason::Complete);
}

#[test]
fn one_call_image_and_caption_match_generate() {
    let model = tiny_model();
    let options = GenerateOptions::default();
    let image = model.generate_image("two blue squares", &options).unwrap();
    let out = model
        .generate(
            Request::Image {
                prompt: "two blue squares",
            },
            &options,
            |_| Control::Continue,
        )
        .unwrap();
    assert_eq!(&image, out.images()[0]);
    let size = model.manifest().geometry.image_size as u32;
    assert_eq!((image.width(), image.height()), (size, size));

    let caption = model.caption(&image, &options).unwrap();
    let full = model
        .generate(
            Request::Caption { image: &image },
            &GenerateOptions {
                max_images: 0,
                ..options.clone()
            },
            |_| Control::Continue,
        )
        .unwrap();
    assert_eq!(caption, full.text());
}

#[test]
fn unknown_prompt_words_are_reported_refused_or_allowed() {
    let model = tiny_model();
    let prompt = "a red zeppelin next to a blorp zeppelin";
    let mut reported = Vec::new();
    let warned = model
        .generate(
            Request::Image { prompt },
            &GenerateOptions::default(),
            |event| {
                if let Event::UnknownWords { words } = event {
                    reported.push(words.to_vec());
                }
                Control::Continue
            },
        )
        .unwrap();
    assert_eq!(
        reported,
        [vec!["zeppelin".to_string(), "blorp".to_string()]]
    );
    assert_eq!(warned.images().len(), 1);

    let refuse = GenerateOptions {
        unknown_words: UnknownWords::Error,
        ..Default::default()
    };
    let mut events = 0;
    let err = model
        .generate(Request::Image { prompt }, &refuse, |_| {
            events += 1;
            Control::Continue
        })
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnknownWords { words } if words == &["zeppelin", "blorp"]),
        "{err}"
    );
    assert!(err.to_string().contains("zeppelin, blorp"), "{err}");
    assert_eq!(events, 0, "refused before anything ran");

    let allow = GenerateOptions {
        unknown_words: UnknownWords::Allow,
        ..Default::default()
    };
    let mut saw = false;
    model
        .generate(Request::Image { prompt }, &allow, |event| {
            saw |= matches!(event, Event::UnknownWords { .. });
            Control::Continue
        })
        .unwrap();
    assert!(!saw);
    // Known words only: no event.
    let mut saw = false;
    model
        .generate(
            Request::Image {
                prompt: "a red circle",
            },
            &GenerateOptions::default(),
            |event| {
                saw |= matches!(event, Event::UnknownWords { .. });
                Control::Continue
            },
        )
        .unwrap();
    assert!(!saw);
}

#[test]
fn load_options_are_checked_before_the_bundle_is_read() {
    let bad = LoadOptions {
        threads: Some(0),
        ..Default::default()
    };
    for dir in [std::path::Path::new("/nonexistent/bundle"), tiny_bundle()] {
        let err = Model::load(dir, &bad).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidOption { name, .. } if name == "threads"),
            "{err}"
        );
    }
    assert!(bad.validate().is_err());
    assert!(LoadOptions::default().validate().is_ok());
}

#[test]
fn per_graph_reports_name_every_graph() {
    let model = tiny_model();
    let precisions = model.precisions();
    let line = model.precisions_line();
    for id in GraphId::ALL {
        assert!(line.contains(&format!("{id} {}", precisions[id])), "{line}");
        assert_eq!(model.runtime(id), "cpu");
    }
    let out = model
        .generate(
            Request::Image {
                prompt: "a red circle",
            },
            &GenerateOptions::default(),
            |_| Control::Continue,
        )
        .unwrap();
    let json = serde_json::to_value(out.timings).unwrap();
    for id in GraphId::ALL {
        assert!(json["graphs"].get(id.name()).is_some(), "{json}");
    }
    assert!(out.timings.graphs_total() <= out.timings.total);
}
