//! The shapes dataset: determinism, file layout, the held-out split, grammar and geometry.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use transfusion_tools::presets::preset;
use transfusion_tools::shapes::caption::{text, WordIds};
use transfusion_tools::shapes::dataset::{read_header, DATA_FILE, IMAGE_BYTES, MAGIC};
use transfusion_tools::shapes::render::render;
use transfusion_tools::shapes::spec::{
    grammar_words, is_held_out, IMAGE_SIZE, MAX_CAPTION_TOKENS, OBJECT_GAP,
};
use transfusion_tools::shapes::{sample, write_dataset, DatasetOptions, SceneKind, Split};
use transfusion_tools::vocab::{tokenizer_json, WORDS};

fn options(count: usize, seed: u64, split: Split) -> DatasetOptions {
    DatasetOptions {
        count,
        seed,
        split,
        preview: 0,
    }
}

fn write(dir: &Path, name: &str, o: &DatasetOptions) -> PathBuf {
    let out = dir.join(name);
    write_dataset(&out, o).unwrap();
    out.join(DATA_FILE)
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let a = std::fs::read(write(dir.path(), "a", &options(300, 7, Split::All))).unwrap();
    let b = std::fs::read(write(dir.path(), "b", &options(300, 7, Split::All))).unwrap();
    let c = std::fs::read(write(dir.path(), "c", &options(300, 8, Split::All))).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    // Sample i does not depend on the count: a shorter file is a prefix of the longer one's
    // image section.
    let short = write(dir.path(), "d", &options(10, 7, Split::All));
    let (ha, hd) = (
        read_header(&dir.path().join("a").join(DATA_FILE)).unwrap(),
        read_header(&short).unwrap(),
    );
    let offset = |h: &Value| h["sections"]["images"]["offset"].as_u64().unwrap() as usize;
    let d = std::fs::read(&short).unwrap();
    let n = 10 * IMAGE_BYTES as usize;
    assert_eq!(
        a[offset(&ha)..offset(&ha) + n],
        d[offset(&hd)..offset(&hd) + n]
    );
}

#[test]
fn header_offsets_and_sections_are_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let n = 64usize;
    let path = write(dir.path(), "ds", &options(n, 3, Split::Train));
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..8], MAGIC);
    let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[12..12 + len]).unwrap();
    assert_eq!(header, read_header(&path).unwrap());
    assert_eq!(header["count"], n);
    assert_eq!(header["format_version"], 1);
    assert_eq!(header["split"], "train");
    assert_eq!(header["max_caption_tokens"], MAX_CAPTION_TOKENS);
    let s = &header["sections"];
    let get = |name: &str, key: &str| s[name][key].as_u64().unwrap() as usize;
    assert_eq!(get("images", "offset"), 12 + len);
    let mut end = 0;
    for name in ["images", "tokens", "lengths", "labels"] {
        let offset = get(name, "offset");
        assert_eq!(offset % 64, 0, "{name}");
        assert!(offset >= end, "{name} overlaps the previous section");
        end = offset + get(name, "bytes");
    }
    assert_eq!(end, bytes.len());
    assert_eq!(get("images", "bytes"), n * 64 * 64 * 3);
    assert_eq!(get("tokens", "bytes"), n * MAX_CAPTION_TOKENS * 4);

    let tokens: Vec<String> = header["vocab"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    assert_eq!(tokens, WordIds::new().unwrap().tokens());
    let pad = header["vocab"]["special_tokens"]["pad"].as_u64().unwrap() as i32;
    let labels_at = get("labels", "offset");
    let labels =
        std::str::from_utf8(&bytes[labels_at..labels_at + get("labels", "bytes")]).unwrap();
    let lines: Vec<&str> = labels.lines().collect();
    assert_eq!(lines.len(), n);
    let int = |at: usize| i32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    for (i, line) in lines.iter().enumerate() {
        let label: Value = serde_json::from_str(line).unwrap();
        assert_eq!(label["index"], i);
        assert_eq!(label["split"], "train");
        let s = sample(3, Split::Train, i as u64);
        assert_eq!(label["caption"], text(&s.words));
        // Image bytes are the render of the sample.
        let img = get("images", "offset") + i * IMAGE_BYTES as usize;
        assert_eq!(
            &bytes[img..img + IMAGE_BYTES as usize],
            &render(&s.scene)[..]
        );
        // Token row: the caption's ids, then padding; the length section agrees.
        let length = int(get("lengths", "offset") + 4 * i) as usize;
        assert_eq!(length, s.words.len());
        let row: Vec<i32> = (0..MAX_CAPTION_TOKENS)
            .map(|k| int(get("tokens", "offset") + 4 * (i * MAX_CAPTION_TOKENS + k)))
            .collect();
        let words: Vec<&str> = row[..length]
            .iter()
            .map(|&id| tokens[id as usize].as_str())
            .collect();
        assert_eq!(words, s.words);
        assert!(row[length..].iter().all(|&id| id == pad));
        assert_eq!(
            label["objects"].as_array().unwrap().len(),
            s.scene.objects.len()
        );
    }
}

#[test]
fn held_out_pairs_never_appear_in_train() {
    for i in 0..3000 {
        let s = sample(11, Split::Train, i);
        for o in &s.scene.objects {
            assert!(!is_held_out(o.colour, o.shape), "sample {i}: {:?}", s.words);
        }
        assert!(sample(11, Split::HeldOut, i).scene.is_held_out());
    }
    let all: Vec<bool> = (0..500)
        .map(|i| sample(11, Split::All, i).scene.is_held_out())
        .collect();
    assert!(all.iter().any(|&h| h) && all.iter().any(|&h| !h));
}

#[test]
fn grammar_uses_only_vocabulary_words_and_the_tokenizer_agrees() {
    for w in grammar_words() {
        assert!(WORDS.contains(&w), "`{w}` is not in vocab::WORDS");
    }
    let dir = tempfile::tempdir().unwrap();
    let config = preset("shapes64").unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, tokenizer_json(&config).unwrap().to_string()).unwrap();
    let sp = config.special_tokens;
    let tokenizer = transfusion_sdk::text::Tokenizer::from_file(&path, sp).unwrap();
    let ids = WordIds::new().unwrap();
    let mut kinds = std::collections::HashSet::new();
    for i in 0..1000 {
        let s = sample(5, Split::All, i);
        kinds.insert(format!("{:?}", s.scene.kind));
        let expected = ids.encode(&s.words).unwrap();
        assert!(expected.len() <= MAX_CAPTION_TOKENS);
        let got = tokenizer.encode(&text(&s.words)).unwrap();
        assert_eq!(got, expected, "{}", text(&s.words));
        assert!(!got.contains(&sp.unk));
    }
    assert_eq!(kinds.len(), 5, "{kinds:?}");
}

#[test]
fn objects_are_inside_apart_and_placed_as_captioned() {
    let side = IMAGE_SIZE as f32;
    for i in 0..3000 {
        let s = sample(9, Split::All, i).scene;
        for (k, a) in s.objects.iter().enumerate() {
            assert!(a.x0 >= 0 && a.y0 >= 0);
            assert!(a.x0 + a.side as i32 <= IMAGE_SIZE as i32);
            assert!(a.y0 + a.side as i32 <= IMAGE_SIZE as i32);
            let (lo, hi) = a.size.sides();
            assert!((lo..=hi).contains(&a.side));
            for b in &s.objects[k + 1..] {
                assert!(
                    !a.too_close(b),
                    "sample {i}: objects closer than {OBJECT_GAP} px"
                );
            }
        }
        if let Some(p) = s.position {
            let (x, y) = s.objects[0].center();
            assert!(p.contains(x, y, side), "sample {i}: {p:?} at ({x}, {y})");
        }
        if let Some(r) = s.relation {
            let (a, b) = (s.objects[0].center(), s.objects[1].center());
            assert!(r.holds(a, b, side), "sample {i}: {r:?} {a:?} {b:?}");
        }
        match s.kind {
            SceneKind::Count => {
                let o = s.objects[0];
                assert!(s
                    .objects
                    .iter()
                    .all(|x| (x.shape, x.colour, x.size) == (o.shape, o.colour, o.size)));
            }
            _ => {
                let mut pairs: Vec<_> = s.objects.iter().map(|o| (o.colour, o.shape)).collect();
                pairs.sort();
                pairs.dedup();
                assert_eq!(pairs.len(), s.objects.len(), "sample {i}: repeated pair");
            }
        }
    }
}

#[test]
fn cli_writes_dataset_and_preview_and_rejects_unknown_names() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ds");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_transfusion"))
            .args(args)
            .output()
            .unwrap()
    };
    let o = out.to_str().unwrap();
    let r = run(&[
        "dataset",
        "shapes",
        "--count",
        "40",
        "--seed",
        "2",
        "--split",
        "heldout",
        "-o",
        o,
        "--preview",
        "12",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let header = read_header(&out.join(DATA_FILE)).unwrap();
    assert_eq!(header["split"], "heldout");
    assert_eq!(header["held_out_count"], 40);
    let png = transfusion_sdk::RgbImage::load_png(out.join("preview.png")).unwrap();
    assert_eq!(png.width(), 8 * 130 + 2);
    assert_eq!(
        std::fs::read_to_string(out.join("preview.txt"))
            .unwrap()
            .lines()
            .count(),
        12
    );
    // The output exists now: a second run refuses to overwrite it.
    let r = run(&["dataset", "shapes", "--count", "4", "-o", o]);
    assert!(!r.status.success());
    let other = dir.path().join("x");
    let r = run(&[
        "dataset",
        "mnist",
        "--count",
        "4",
        "-o",
        other.to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("unknown dataset"));
    assert!(!other.exists());
}
