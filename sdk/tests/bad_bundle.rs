//! Broken bundles and load options: every one is a clear error naming the file, graph, key or
//! option at fault, never a panic, and a failed load writes nothing (into the bundle or beside it).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{bundle_copy, fixture_checkpoint, tiny_bundle};
use serde_json::Value;
use transfusion_sdk::{
    Control, Error, GenerateOptions, GraphId, LoadOptions, Model, PartPrecisions, Precision,
    PrecisionChoice, Request,
};
use transfusion_tools::convert::{convert, BundlePrecision, ConvertOptions};

fn exact(precision: Precision) -> LoadOptions {
    LoadOptions {
        precision: PartPrecisions::all(PrecisionChoice::Exact(precision)),
        ..Default::default()
    }
}

/// Every file under `dir`, with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                files.insert(path, bytes);
            }
        }
    }
    files
}

/// Loads `dir` expecting failure; checks nothing was written in the bundle's parent directory.
fn load_err(dir: &Path, options: &LoadOptions) -> Error {
    let parent = dir.parent().unwrap();
    let before = snapshot(parent);
    let err = Model::load(dir, options).expect_err("the load must fail");
    assert!(
        snapshot(parent) == before,
        "a failed load changed files in {}",
        parent.display()
    );
    err
}

/// Asserts `text` contains every needle.
fn contains_all(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "`{needle}` missing from: {text}");
    }
}

fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let path = dir.join("manifest.json");
    let mut manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut manifest);
    std::fs::write(&path, serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
}

/// A manifest error naming `manifest.json` and saying `needles`.
fn assert_manifest_error(err: Error, needles: &[&str]) {
    let text = err.to_string();
    match &err {
        Error::Manifest { path, message } => {
            assert!(path.ends_with("manifest.json"), "{text}");
            contains_all(message, needles);
        }
        other => panic!("expected Error::Manifest, got {other:?}"),
    }
}

/// An I/O error naming the missing file `rel` of the bundle.
fn assert_missing_file(err: Error, dir: &Path, rel: &str) {
    let text = err.to_string();
    match &err {
        Error::Io { path, source } => {
            assert_eq!(path, &dir.join(rel), "{text}");
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound, "{text}");
            contains_all(&text, &[rel]);
        }
        other => panic!("expected Error::Io for {rel}, got {other:?}"),
    }
}

/// A graph error for graph `graph` in file `rel`, saying `needles`.
fn assert_graph_error(err: Error, dir: &Path, graph: &str, rel: &str, needles: &[&str]) {
    let text = err.to_string();
    match &err {
        Error::Graph {
            graph: g,
            path,
            message,
        } => {
            assert_eq!(g, graph, "{text}");
            assert_eq!(path, &dir.join(rel), "{text}");
            contains_all(message, needles);
            contains_all(&text, &[rel]);
        }
        other => panic!("expected Error::Graph for {graph}, got {other:?}"),
    }
}

fn assert_invalid_option(err: Error, name: &str, needles: &[&str]) {
    match &err {
        Error::InvalidOption { name: n, message } => {
            assert_eq!(n, name, "{err}");
            contains_all(message, needles);
        }
        other => panic!("expected Error::InvalidOption `{name}`, got {other:?}"),
    }
}

#[test]
fn missing_graph_file_is_an_io_error_naming_it() {
    let (_tmp, dir) = bundle_copy();
    std::fs::remove_file(dir.join("fp32/backbone.onnx")).unwrap();
    let err = load_err(&dir, &exact(Precision::Fp32));
    assert_missing_file(err, &dir, "fp32/backbone.onnx");
}

#[test]
fn missing_manifest_is_an_io_error_naming_it() {
    let (_tmp, dir) = bundle_copy();
    std::fs::remove_file(dir.join("manifest.json")).unwrap();
    assert_missing_file(
        load_err(&dir, &exact(Precision::Fp32)),
        &dir,
        "manifest.json",
    );
}

#[test]
fn corrupt_graph_files_are_graph_errors_naming_graph_and_file() {
    let (_tmp, dir) = bundle_copy();
    let path = dir.join("fp32/patch_out.onnx");
    let good = std::fs::read(&path).unwrap();
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    let cases: [(&str, Vec<u8>); 4] = [
        ("garbage", garbage),
        ("empty", Vec::new()),
        ("truncated to half", good[..good.len() / 2].to_vec()),
        ("truncated by one byte", good[..good.len() - 1].to_vec()),
    ];
    for (_case, bytes) in cases {
        std::fs::write(&path, bytes).unwrap();
        let err = load_err(&dir, &exact(Precision::Fp32));
        assert_graph_error(
            err,
            &dir,
            "patch_out",
            "fp32/patch_out.onnx",
            &["not a readable ONNX model"],
        );
    }
}

#[test]
fn graph_that_does_not_match_the_manifest_fails_at_load() {
    // A swapped file: the text head where the embedding should be.
    let (_tmp, dir) = bundle_copy();
    std::fs::copy(
        dir.join("fp32/lm_head.onnx"),
        dir.join("fp32/text_embed.onnx"),
    )
    .unwrap();
    let err = load_err(&dir, &exact(Precision::Fp32));
    assert_graph_error(
        err,
        &dir,
        "text_embed",
        "fp32/text_embed.onnx",
        &["does not match manifest.json", "hidden", "input_ids"],
    );

    // A manifest whose input names are not the file's.
    let (_tmp, dir) = bundle_copy();
    edit_manifest(&dir, |m| {
        m["graphs"]["backbone"]["inputs"][0]["name"] = "embeds".into();
    });
    let err = load_err(&dir, &exact(Precision::Fp32));
    assert_graph_error(
        err,
        &dir,
        "backbone",
        "fp32/backbone.onnx",
        &["does not match manifest.json", "embeds", "embeddings"],
    );

    // ... or whose output names are not.
    let (_tmp, dir) = bundle_copy();
    edit_manifest(&dir, |m| {
        m["graphs"]["lm_head"]["outputs"][0]["name"] = "scores".into();
    });
    let err = load_err(&dir, &exact(Precision::Fp32));
    assert_graph_error(
        err,
        &dir,
        "lm_head",
        "fp32/lm_head.onnx",
        &["outputs", "scores", "logits"],
    );
}

#[test]
fn unsupported_format_version_is_refused() {
    let (_tmp, dir) = bundle_copy();
    edit_manifest(&dir, |m| m["format_version"] = 99.into());
    let err = load_err(&dir, &exact(Precision::Fp32));
    assert_manifest_error(err, &["unsupported format_version 99", "version 1"]);
}

#[test]
fn manifest_missing_a_graph_is_refused() {
    let (_tmp, dir) = bundle_copy();
    edit_manifest(&dir, |m| {
        m["graphs"].as_object_mut().unwrap().remove("vae_encoder");
    });
    let err = load_err(&dir, &LoadOptions::default());
    assert_manifest_error(err, &["graph `vae_encoder` is missing"]);
}

#[test]
fn graph_paths_must_stay_inside_the_bundle() {
    for bad in ["../x.onnx", "fp32/../../x.onnx", "/tmp/x.onnx"] {
        let (_tmp, dir) = bundle_copy();
        edit_manifest(&dir, |m| {
            m["graphs"]["backbone"]["files"]["fp32"]["path"] = bad.into();
        });
        let err = load_err(&dir, &exact(Precision::Fp32));
        assert_manifest_error(
            err,
            &["graph `backbone` fp32", bad, "must stay inside the bundle"],
        );
    }
}

#[test]
fn graph_paths_of_unlisted_precisions_must_stay_inside_the_bundle_too() {
    // `precisions` lists fp32 only, but the text_embed entry still has an int8 file pointing
    // outside the bundle, where a loadable graph waits: asking for int8 must not load it.
    let (tmp, dir) = bundle_copy();
    std::fs::copy(dir.join("fp32/text_embed.onnx"), tmp.path().join("x.onnx")).unwrap();
    edit_manifest(&dir, |m| {
        m["precisions"] = serde_json::json!(["fp32"]);
        m["graphs"]["text_embed"]["files"]["int8"]["path"] = "../x.onnx".into();
    });
    let options = LoadOptions {
        precision: PartPrecisions {
            text: PrecisionChoice::Exact(Precision::Int8),
            ..exact(Precision::Fp32).precision
        },
        ..Default::default()
    };
    let err = load_err(&dir, &options);
    assert_manifest_error(
        err,
        &["graph `text_embed` int8", "../x.onnx", "inside the bundle"],
    );
}

#[test]
fn invalid_json_names_the_manifest() {
    let (_tmp, dir) = bundle_copy();
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap();
    for bad in ["{ this is not json", "", &text[..text.len() / 2]] {
        std::fs::write(&path, bad).unwrap();
        let err = load_err(&dir, &exact(Precision::Fp32));
        match &err {
            Error::Json { path, message } => {
                assert!(path.ends_with("manifest.json"), "{err}");
                assert!(message.contains("line"), "no position in: {err}");
            }
            other => panic!("expected Error::Json, got {other:?}"),
        }
    }
    // Valid JSON of the wrong shape names the key.
    edit_manifest_text(&path, &text, |m| {
        m["precisions"] = serde_json::json!(["fp64"]);
    });
    let err = load_err(&dir, &exact(Precision::Fp32));
    assert!(matches!(&err, Error::Json { .. }), "{err:?}");
    contains_all(&err.to_string(), &["manifest.json", "fp64"]);
}

fn edit_manifest_text(path: &Path, text: &str, edit: impl FnOnce(&mut Value)) {
    let mut manifest: Value = serde_json::from_str(text).unwrap();
    edit(&mut manifest);
    std::fs::write(path, serde_json::to_string(&manifest).unwrap()).unwrap();
}

#[test]
fn missing_tokenizer_is_an_io_error_naming_it() {
    let (_tmp, dir) = bundle_copy();
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    assert_missing_file(
        load_err(&dir, &exact(Precision::Fp32)),
        &dir,
        "tokenizer.json",
    );
}

#[test]
fn tokenizer_whose_special_ids_disagree_with_the_manifest_is_refused() {
    let (_tmp, dir) = bundle_copy();
    let path = dir.join("tokenizer.json");
    // Swap the texts of [BOS] (id 1) and [EOS] (id 2).
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("[BOS]", "[TMP]")
        .replace("[EOS]", "[BOS]")
        .replace("[TMP]", "[EOS]");
    std::fs::write(&path, text).unwrap();
    let err = load_err(&dir, &exact(Precision::Fp32));
    match &err {
        Error::Tokenizer { path: p, message } => {
            assert_eq!(p, &path, "{err}");
            contains_all(
                message,
                &["[BOS]", "special_tokens.bos", "expects id 1", "has id 2"],
            );
        }
        other => panic!("expected Error::Tokenizer, got {other:?}"),
    }

    // Garbage instead of a tokenizer names the file too.
    std::fs::write(&path, "{\"model\": 3}").unwrap();
    let err = load_err(&dir, &exact(Precision::Fp32));
    assert!(
        matches!(&err, Error::Tokenizer { path: p, .. } if p == &path),
        "{err:?}"
    );
}

#[test]
fn precision_the_bundle_lacks_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bundle");
    let options = ConvertOptions {
        precisions: vec![BundlePrecision::Fp32],
        int8: Default::default(),
        progress: false,
    };
    convert(&fixture_checkpoint(), &dir, &options).unwrap();
    let err = load_err(&dir, &exact(Precision::Int8));
    assert_invalid_option(
        err,
        "precision",
        &["no int8 file", "text_embed", "it has fp32"],
    );
    // Auto picks what is there.
    let model = Model::load(&dir, &LoadOptions::default()).unwrap();
    assert!(model
        .precisions()
        .iter()
        .all(|(_, p)| *p == Precision::Fp32));
    let line = model.precisions_line();
    assert!(
        line.starts_with("text_embed fp32, backbone fp32, "),
        "{line}"
    );
    assert_eq!(line.matches("fp32").count(), 7, "{line}");
}

#[test]
#[cfg(not(feature = "cuda"))]
fn cuda_without_the_cuda_feature_is_refused() {
    let options = LoadOptions {
        device: transfusion_sdk::Device::Cuda,
        ..Default::default()
    };
    let err = load_err(tiny_bundle(), &options);
    assert_invalid_option(err, "device", &["CUDA", "`cuda-*` feature", "cpu"]);
}

#[test]
fn zero_threads_is_refused() {
    for (threads, shown) in [(0, "got 0"), (100_000, "got 100000")] {
        let options = LoadOptions {
            threads: Some(threads),
            ..Default::default()
        };
        let err = load_err(tiny_bundle(), &options);
        assert_invalid_option(err, "threads", &["1..=1024", shown]);
    }
}

#[test]
fn model_is_send_sync_and_loads_twice_in_parallel() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Model>();

    let options = exact(Precision::Fp32);
    let models: Vec<Model> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| s.spawn(|| Model::load(tiny_bundle(), &options).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let generate = |model: &Model| {
        model
            .generate(
                Request::Image {
                    prompt: "a red circle",
                },
                &GenerateOptions {
                    max_tokens: Some(3),
                    ..Default::default()
                },
                |_| Control::Continue,
            )
            .unwrap()
            .segments
    };
    assert_eq!(models[0].precisions(), models[1].precisions());
    assert_eq!(generate(&models[0]), generate(&models[1]));
}

#[test]
fn a_max_seq_len_beyond_the_memory_cap_is_refused_before_loading() {
    let (_tmp, dir) = bundle_copy();
    edit_manifest(&dir, |m| {
        m["config"]["text"]["max_seq_len"] = 1_000_000_000u64.into();
        m["geometry"]["max_seq_len"] = 1_000_000_000u64.into();
    });
    let err = load_err(&dir, &exact(Precision::Fp32));
    assert_manifest_error(err, &["KV cache at max_seq_len", "memory cap of 4.0 GiB"]);
}

#[test]
fn the_memory_cap_is_the_callers() {
    let small = LoadOptions {
        memory_cap: Some(1 << 20),
        ..exact(Precision::Fp32)
    };
    let err = load_err(tiny_bundle(), &small);
    assert_manifest_error(err, &["more than the memory cap of 1.0 MiB"]);
    let none = LoadOptions {
        memory_cap: None,
        ..small
    };
    Model::load(tiny_bundle(), &none).unwrap();
}

#[test]
fn dimensions_the_weight_files_do_not_hold_are_refused() {
    let (_tmp, dir) = bundle_copy();
    edit_manifest(&dir, |m| {
        let layers = m["geometry"]["n_layers"].as_u64().unwrap() * 100;
        m["config"]["backbone"]["n_layers"] = layers.into();
        m["geometry"]["n_layers"] = layers.into();
    });
    let err = load_err(&dir, &exact(Precision::Int8));
    assert_graph_error(
        err,
        &dir,
        "backbone",
        "int8/backbone.onnx",
        &["the config's dimensions need at least", "int8 weights"],
    );
}

#[cfg(unix)]
#[test]
fn symlinks_leaving_the_bundle_are_refused_and_inside_ones_load() {
    let (tmp, dir) = bundle_copy();
    let outside = tmp.path().join("elsewhere.onnx");
    std::fs::rename(dir.join("fp32/lm_head.onnx"), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("fp32/lm_head.onnx")).unwrap();
    let err = load_err(&dir, &exact(Precision::Fp32));
    assert_manifest_error(err, &["fp32/lm_head.onnx", "outside the bundle"]);

    // The same file linked from inside the bundle is fine (e.g. deduplicated precisions).
    std::fs::remove_file(dir.join("fp32/lm_head.onnx")).unwrap();
    std::fs::rename(&outside, dir.join("lm_head.onnx")).unwrap();
    std::os::unix::fs::symlink("../lm_head.onnx", dir.join("fp32/lm_head.onnx")).unwrap();
    Model::load(&dir, &exact(Precision::Fp32)).unwrap();
}

#[test]
fn a_graph_that_makes_tract_panic_is_an_error() {
    // Found by `cargo fuzz run bundle` (docs/bad-inputs.md): an Unsqueeze whose `axes`
    // initializer is out of range makes tract's shape inference panic (smallvec "index exceeds
    // length"). Graph::load catches it.
    let (_tmp, dir) = bundle_copy();
    let path = dir.join("fp32/backbone.onnx");
    let mut bytes = std::fs::read(&path).unwrap();
    let axes = b"B\x06axes#3J\x08\x01\x00\x00\x00\x00\x00\x00\x00";
    let at = bytes
        .windows(axes.len())
        .position(|w| w == axes)
        .expect("the backbone's first Unsqueeze axes initializer");
    bytes[at + axes.len() - 6] = 0xea;
    std::fs::write(&path, bytes).unwrap();
    let err = load_err(&dir, &exact(Precision::Fp32));
    assert_graph_error(
        err,
        &dir,
        "backbone",
        "fp32/backbone.onnx",
        &["tract panicked", "malformed"],
    );
}

#[test]
fn load_with_reads_each_graph_once_in_bundle_order_and_stops_at_its_first_error() {
    let mut seen = Vec::new();
    let err = Model::load_with(
        tiny_bundle(),
        &exact(Precision::Fp32),
        &mut |name, path, gpu| {
            assert!(gpu.is_none(), "a CPU load hands graphs no GPU runtime");
            assert_eq!(path, tiny_bundle().join(format!("fp32/{name}.onnx")));
            seen.push(name);
            if name == GraphId::PatchIn {
                return Err(Error::InvalidOption {
                    name: "test".into(),
                    message: "refused by the caller".into(),
                });
            }
            transfusion_sdk::engine::Graph::load(name.name(), path)
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("refused by the caller"), "{err}");
    let order = GraphId::ALL;
    let stop = order.iter().position(|g| *g == GraphId::PatchIn).unwrap();
    assert_eq!(seen, order[..=stop]);
}
