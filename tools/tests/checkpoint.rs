//! Checkpoint init/save/load round trips and the specific error of each bad input.

use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use transfusion_tools::checkpoint::{Checkpoint, CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE};
use transfusion_tools::error::Error;
use transfusion_tools::init::{init_checkpoint, run};

/// A saved tiny checkpoint (seed 1) in a fresh temporary directory.
fn saved_tiny() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("ckpt");
    run("tiny", 1, &dir).unwrap();
    (root, dir)
}

/// Every file under `dir` with its bytes, to prove a failing command changed nothing.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.push((path.clone(), Vec::new()));
            out.extend(snapshot(&path));
        } else {
            let bytes = std::fs::read(&path).unwrap();
            out.push((path, bytes));
        }
    }
    out.sort();
    out
}

/// `(name, dtype, shape, little-endian bytes)` of one stored tensor.
type RawTensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// Rewrites `model.safetensors` of `dir` after `edit` changes the raw `(name, dtype, shape,
/// bytes)` list.
fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut Vec<RawTensor>)) {
    let path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut raw: Vec<_> = file
        .tensors()
        .into_iter()
        .map(|(name, v)| (name, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut raw);
    let views: Vec<_> = raw
        .iter()
        .map(|(name, dtype, shape, data)| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::write(&path, out).unwrap();
}

/// Loads `dir` expecting an error, and checks that loading wrote nothing.
fn load_err(dir: &Path) -> Error {
    let before = snapshot(dir.parent().unwrap());
    let err = Checkpoint::load(dir).unwrap_err();
    assert_eq!(
        snapshot(dir.parent().unwrap()),
        before,
        "load changed files"
    );
    err
}

fn edit_config(dir: &Path, from: &str, to: &str) {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from} not in {text}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn init_save_load_round_trip() {
    let (_root, dir) = saved_tiny();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, [CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE]);
    let loaded = Checkpoint::load(&dir).unwrap();
    let mut built = init_checkpoint("tiny", 1).unwrap();
    built.dir = dir.clone();
    assert_eq!(loaded, built);
    assert_eq!(
        loaded.get("text.embed.weight").unwrap().shape,
        [loaded.config.text.vocab_size, 64]
    );
    assert!(matches!(loaded.get("nope"), Err(Error::MissingTensor { name, .. }) if name == "nope"));

    // Saving a loaded checkpoint again gives the same files.
    let again = dir.with_file_name("again");
    loaded.save(&again).unwrap();
    for file in [CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE] {
        assert_eq!(
            std::fs::read(dir.join(file)).unwrap(),
            std::fs::read(again.join(file)).unwrap(),
            "{file}"
        );
    }
}

#[test]
fn seed_determines_the_weights() {
    let root = tempfile::tempdir().unwrap();
    let weights = |seed: u64, name: &str| {
        let dir = root.path().join(name);
        run("tiny", seed, &dir).unwrap();
        std::fs::read(dir.join(WEIGHTS_FILE)).unwrap()
    };
    let a = weights(5, "a");
    assert_eq!(a, weights(5, "b"));
    assert_ne!(a, weights(6, "c"));
}

#[test]
fn float16_weights_are_widened() {
    let (_root, dir) = saved_tiny();
    let f32_checkpoint = Checkpoint::load(&dir).unwrap();
    rewrite_weights(&dir, |raw| {
        for (_, dtype, _, data) in raw.iter_mut() {
            *data = data
                .chunks_exact(4)
                .flat_map(|b| {
                    let x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    half::f16::from_f32(x).to_le_bytes()
                })
                .collect();
            *dtype = Dtype::F16;
        }
    });
    let loaded = Checkpoint::load(&dir).unwrap();
    let a = &f32_checkpoint.get("text.embed.weight").unwrap().data;
    let b = &loaded.get("text.embed.weight").unwrap().data;
    assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-4));
}

#[test]
fn missing_tensor() {
    let (_root, dir) = saved_tiny();
    rewrite_weights(&dir, |raw| {
        raw.retain(|t| t.0 != "backbone.layers.1.ffn.up.weight")
    });
    let err = load_err(&dir);
    assert!(
        matches!(&err, Error::MissingTensor { name, .. } if name == "backbone.layers.1.ffn.up.weight"),
        "{err}"
    );
    assert!(err.to_string().contains("backbone.layers.1.ffn.up.weight"));
}

#[test]
fn unexpected_tensor() {
    let (_root, dir) = saved_tiny();
    rewrite_weights(&dir, |raw| {
        raw.push(("extra.weight".into(), Dtype::F32, vec![1], vec![0; 4]))
    });
    let err = load_err(&dir);
    assert!(
        matches!(&err, Error::UnexpectedTensor { name, .. } if name == "extra.weight"),
        "{err}"
    );
}

#[test]
fn wrong_shape() {
    let (_root, dir) = saved_tiny();
    rewrite_weights(&dir, |raw| {
        let t = raw
            .iter_mut()
            .find(|t| t.0 == "timestep.linear2.weight")
            .unwrap();
        t.2 = vec![32, 128];
    });
    let err = load_err(&dir);
    match &err {
        Error::TensorShape {
            name,
            expected,
            found,
            ..
        } => {
            assert_eq!(name, "timestep.linear2.weight");
            assert_eq!(expected, &[64, 64]);
            assert_eq!(found, &[32, 128]);
        }
        other => panic!("{other}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("[32, 128]") && message.contains("[64, 64]"),
        "{message}"
    );
}

#[test]
fn wrong_dtype() {
    let (_root, dir) = saved_tiny();
    rewrite_weights(&dir, |raw| {
        let t = raw
            .iter_mut()
            .find(|t| t.0 == "text.lm_head.weight")
            .unwrap();
        t.1 = Dtype::I32;
    });
    let err = load_err(&dir);
    assert!(
        matches!(&err, Error::TensorDtype { name, found, .. } if name == "text.lm_head.weight" && found == "I32"),
        "{err}"
    );
}

#[test]
fn garbage_and_truncated_safetensors() {
    let (_root, dir) = saved_tiny();
    let path = dir.join(WEIGHTS_FILE);
    let good = std::fs::read(&path).unwrap();
    for bad in [
        b"definitely not a safetensors file".to_vec(),
        good[..good.len() / 2].to_vec(),
        good[..4].to_vec(),
    ] {
        std::fs::write(&path, &bad).unwrap();
        let err = load_err(&dir);
        assert!(
            matches!(&err, Error::Safetensors { path: p, .. } if p == &path),
            "{err}"
        );
    }
}

#[test]
fn non_finite_weight() {
    let (_root, dir) = saved_tiny();
    rewrite_weights(&dir, |raw| {
        let t = raw
            .iter_mut()
            .find(|t| t.0 == "vae.decoder.conv_out.weight")
            .unwrap();
        t.3[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    let err = load_err(&dir);
    assert!(
        matches!(&err, Error::NonFinite { name, .. } if name == "vae.decoder.conv_out.weight"),
        "{err}"
    );

    // Saving a checkpoint holding a NaN is refused too, and writes nothing.
    let mut c = init_checkpoint("tiny", 1).unwrap();
    c.tensors.get_mut("text.embed.weight").unwrap().data[3] = f32::INFINITY;
    let root = tempfile::tempdir().unwrap();
    let err = c.save(root.path().join("out")).unwrap_err();
    assert!(
        matches!(&err, Error::NonFinite { name, .. } if name == "text.embed.weight"),
        "{err}"
    );
    assert!(snapshot(root.path()).is_empty());
}

#[test]
fn invalid_configs_name_the_key() {
    let cases = [
        ("\"rope_theta\"", "\"rope_thta\"", "rope_thta"),
        ("\"size\": 2", "\"size\": 16", "patch.size"),
        ("\"n_heads\": 1", "\"n_heads\": 3", "backbone.dim"),
    ];
    for (from, to, key) in cases {
        let (_root, dir) = saved_tiny();
        edit_config(&dir, from, to);
        let err = load_err(&dir);
        assert!(err.to_string().contains(key), "{from}: {err}");
        assert!(err.to_string().contains(CONFIG_FILE), "{from}: {err}");
    }
    // The vocabulary smaller than the special ids, on its own.
    let (_root, dir) = saved_tiny();
    let text = std::fs::read_to_string(dir.join(CONFIG_FILE)).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["text"]["vocab_size"] = 5.into();
    std::fs::write(dir.join(CONFIG_FILE), json.to_string()).unwrap();
    let err = load_err(&dir);
    assert!(matches!(&err, Error::Config { .. }), "{err}");
    assert!(err.to_string().contains("special_tokens.unk"), "{err}");

    // An in-memory checkpoint with an invalid config is not saved, and nothing is written.
    let root = tempfile::tempdir().unwrap();
    for edit in [
        (|c: &mut Checkpoint| c.config.patch.size = 3) as fn(&mut Checkpoint),
        |c| c.config.backbone.n_heads = 3,
        |c| c.config.text.vocab_size = 4,
    ] {
        let mut c = init_checkpoint("tiny", 1).unwrap();
        edit(&mut c);
        let err = c.save(root.path().join("out")).unwrap_err();
        assert!(matches!(&err, Error::Config { .. }), "{err}");
    }
    assert!(snapshot(root.path()).is_empty());
}

#[test]
fn tokenizer_must_agree() {
    let (_root, dir) = saved_tiny();
    let path = dir.join(TOKENIZER_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["model"]["vocab"]["[BOI]"] = 4.into();
    json["model"]["vocab"]["[EOI]"] = 3.into();
    json["added_tokens"][3]["id"] = 4.into();
    json["added_tokens"][4]["id"] = 3.into();
    std::fs::write(&path, json.to_string()).unwrap();
    let err = load_err(&dir);
    let message = err.to_string();
    assert!(matches!(err, Error::Tokenizer { .. }), "{message}");
    assert!(
        message.contains("[BOI]") && message.contains("expected 3"),
        "{message}"
    );

    std::fs::remove_file(&path).unwrap();
    assert!(matches!(load_err(&dir), Error::Io { path: p, .. } if p == path));
}

#[test]
fn existing_output_is_left_untouched() {
    let (root, dir) = saved_tiny();
    let before = snapshot(root.path());
    let c = init_checkpoint("tiny", 2).unwrap();
    let err = c.save(&dir).unwrap_err();
    assert!(
        matches!(&err, Error::OutputExists { path } if path == &dir),
        "{err}"
    );
    assert!(err.to_string().contains("exists and is not empty"));
    let err = run("tiny", 2, &dir).unwrap_err();
    assert!(matches!(err, Error::OutputExists { .. }), "{err}");
    // A plain file is refused as well.
    let file = root.path().join("file");
    std::fs::write(&file, b"keep").unwrap();
    assert!(matches!(c.save(&file), Err(Error::OutputExists { .. })));
    std::fs::remove_file(&file).unwrap();
    assert_eq!(snapshot(root.path()), before);

    // An existing empty directory is filled.
    let empty = root.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    c.save(&empty).unwrap();
    assert_eq!(Checkpoint::load(&empty).unwrap().tensors, c.tensors);
}

#[test]
fn unknown_preset() {
    let root = tempfile::tempdir().unwrap();
    let err = run("huge", 0, &root.path().join("x")).unwrap_err();
    assert!(
        matches!(&err, Error::UnknownPreset { name, .. } if name == "huge"),
        "{err}"
    );
    assert!(snapshot(root.path()).is_empty());
}
