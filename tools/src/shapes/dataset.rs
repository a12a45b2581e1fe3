//! `transfusion dataset shapes`: the dataset file `shapes.bin` (format in `docs/dataset.md`)
//! and an optional preview grid.
//!
//! Layout: 8-byte magic, u32 little-endian header length `H`, `H` bytes of JSON header (padded
//! with spaces so the data starts 64-byte aligned), then the sections the header lists by byte
//! offset: images `N×64×64×3` uint8, token ids `N×32` int32 LE (padded), caption lengths `N`
//! int32 LE, and labels as JSON lines. A reader maps images and tokens with `numpy.memmap`
//! without parsing anything but the header.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use serde_json::{json, Value};

use super::caption::{self, WordIds};
use super::render::render;
use super::scene::{sample, Sample, Split};
use super::spec::{spec_json, BACKGROUNDS, CHANNELS, IMAGE_SIZE, MAX_CAPTION_TOKENS, VOCAB_PRESET};
use crate::error::{Error, Result};
use crate::presets::preset;
use crate::publish::write_dir_atomically;

/// First 8 bytes of `shapes.bin`.
pub const MAGIC: &[u8; 8] = b"TFSHAPES";

/// Version of the `shapes.bin` layout (the header's `format_version`).
pub const FORMAT_VERSION: u32 = 1;

/// Name of the data file in the output directory.
pub const DATA_FILE: &str = "shapes.bin";

/// Alignment of every section's offset, in bytes.
pub const ALIGN: u64 = 64;

/// Bytes of one image.
pub const IMAGE_BYTES: u64 = (IMAGE_SIZE * IMAGE_SIZE * CHANNELS) as u64;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetOptions {
    pub count: usize,
    pub seed: u64,
    pub split: Split,
    /// Samples in the preview grid (0: no preview).
    pub preview: usize,
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetSummary {
    pub count: usize,
    /// Samples with a held-out pair.
    pub held_out: usize,
    /// Size of `shapes.bin`.
    pub bytes: u64,
}

fn align(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

/// The structured label of a sample (one JSON line of the labels section).
pub fn label(sample: &Sample) -> Value {
    let scene = &sample.scene;
    let objects: Vec<Value> = scene
        .objects
        .iter()
        .map(|o| {
            let (cx, cy) = o.center();
            json!({
                "shape": o.shape,
                "colour": o.colour,
                "size": o.size,
                "side": o.side,
                "bbox": [o.x0, o.y0, o.side, o.side],
                "center": [cx, cy],
                "position": o.position(),
            })
        })
        .collect();
    let relation = scene
        .relation
        .map(|r| json!({"subject": 0, "relation": r.name(), "object": 1}));
    json!({
        "index": sample.index,
        "split": scene.split().name(),
        "kind": scene.kind,
        "caption": caption::text(&sample.words),
        "background": BACKGROUNDS.get(scene.background).map(|b| b.0),
        "objects": objects,
        "relation": relation,
        "position": scene.position,
        "mentions_size": scene.mention_size,
    })
}

/// Section offsets and sizes for `count` samples and `labels_bytes` of labels, the data
/// starting at `start`.
fn sections(start: u64, count: u64, labels_bytes: u64) -> Value {
    let images = start;
    let images_bytes = count * IMAGE_BYTES;
    let tokens = align(images + images_bytes);
    let tokens_bytes = count * MAX_CAPTION_TOKENS as u64 * 4;
    let lengths = align(tokens + tokens_bytes);
    let lengths_bytes = count * 4;
    let labels = align(lengths + lengths_bytes);
    json!({
        "images": {"offset": images, "bytes": images_bytes, "dtype": "uint8",
                   "shape": [count, IMAGE_SIZE, IMAGE_SIZE, CHANNELS]},
        "tokens": {"offset": tokens, "bytes": tokens_bytes, "dtype": "<i4",
                   "shape": [count, MAX_CAPTION_TOKENS]},
        "lengths": {"offset": lengths, "bytes": lengths_bytes, "dtype": "<i4", "shape": [count]},
        "labels": {"offset": labels, "bytes": labels_bytes, "format": "jsonl"},
    })
}

fn offset_of(sections: &Value, name: &str) -> Result<u64> {
    sections
        .pointer(&format!("/{name}/offset"))
        .and_then(Value::as_u64)
        .ok_or_else(|| Error::Invalid(format!("header section `{name}` has no offset")))
}

/// Writes `shapes.bin` to `path`; returns the summary.
pub fn write_data_file(path: &Path, options: &DatasetOptions) -> Result<DatasetSummary> {
    if options.count == 0 {
        return Err(Error::Invalid("--count must be at least 1".into()));
    }
    let ids = WordIds::new()?;
    let config = preset(VOCAB_PRESET)?;
    let count = options.count as u64;
    // Pass 1: scenes, captions, labels (cheap; images are rendered while writing).
    let mut samples = Vec::with_capacity(options.count);
    let mut tokens: Vec<u8> = Vec::with_capacity(options.count * MAX_CAPTION_TOKENS * 4);
    let mut lengths: Vec<u8> = Vec::with_capacity(options.count * 4);
    let mut labels: Vec<u8> = Vec::new();
    let mut held_out = 0;
    for index in 0..count {
        let s = sample(options.seed, options.split, index);
        let row = ids.encode(&s.words)?;
        if row.len() > MAX_CAPTION_TOKENS {
            return Err(Error::Invalid(format!(
                "caption of sample {index} has {} tokens, more than {MAX_CAPTION_TOKENS}",
                row.len()
            )));
        }
        let pad = std::iter::repeat_n(ids.pad(), MAX_CAPTION_TOKENS - row.len());
        for id in row.iter().copied().chain(pad) {
            tokens.extend_from_slice(&(id as i32).to_le_bytes());
        }
        lengths.extend_from_slice(&(row.len() as i32).to_le_bytes());
        serde_json::to_writer(&mut labels, &label(&s))
            .map_err(|e| Error::Invalid(e.to_string()))?;
        labels.push(b'\n');
        held_out += usize::from(s.scene.is_held_out());
        samples.push(s);
    }
    let sp = &config.special_tokens;
    let mut region = 4096u64;
    let (header_bytes, sections) = loop {
        let sections = sections(region, count, labels.len() as u64);
        let header = json!({
            "format": "transfusion-shapes",
            "format_version": FORMAT_VERSION,
            "count": count,
            "seed": options.seed,
            "split": options.split.name(),
            "held_out_count": held_out,
            "image": {"height": IMAGE_SIZE, "width": IMAGE_SIZE, "channels": CHANNELS,
                      "layout": "NHWC", "dtype": "uint8"},
            "max_caption_tokens": MAX_CAPTION_TOKENS,
            "vocab": {
                "preset": VOCAB_PRESET,
                "size": ids.tokens().len(),
                "special_tokens": {"pad": sp.pad, "bos": sp.bos, "eos": sp.eos,
                                   "boi": sp.boi, "eoi": sp.eoi, "unk": sp.unk},
                "tokens": ids.tokens(),
            },
            "sections": sections,
            "spec": spec_json(),
        });
        let mut bytes = serde_json::to_vec(&header).map_err(|e| Error::Invalid(e.to_string()))?;
        let used = MAGIC.len() as u64 + 4 + bytes.len() as u64;
        if used <= region {
            bytes.resize((region - MAGIC.len() as u64 - 4) as usize, b' ');
            break (bytes, sections);
        }
        region = align(used + ALIGN);
    };
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let io = |e| Error::io(path, e);
    let mut at = 0u64;
    let put = |w: &mut BufWriter<File>, bytes: &[u8], at: &mut u64| -> Result<()> {
        w.write_all(bytes).map_err(io)?;
        *at += bytes.len() as u64;
        Ok(())
    };
    let header_len = u32::try_from(header_bytes.len())
        .map_err(|_| Error::Invalid("dataset header exceeds 4 GiB".into()))?;
    put(&mut w, MAGIC, &mut at)?;
    put(&mut w, &header_len.to_le_bytes(), &mut at)?;
    put(&mut w, &header_bytes, &mut at)?;
    for s in &samples {
        put(&mut w, &render(&s.scene), &mut at)?;
    }
    for (name, bytes) in [
        ("tokens", &tokens),
        ("lengths", &lengths),
        ("labels", &labels),
    ] {
        let offset = offset_of(&sections, name)?;
        let zeros = vec![0u8; offset.saturating_sub(at) as usize];
        put(&mut w, &zeros, &mut at)?;
        put(&mut w, bytes, &mut at)?;
    }
    w.flush().map_err(io)?;
    Ok(DatasetSummary {
        count: options.count,
        held_out,
        bytes: at,
    })
}

/// Reads the JSON header of a `shapes.bin`, checking the magic and the format version.
pub fn read_header(path: &Path) -> Result<Value> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut prefix = [0u8; 12];
    file.read_exact(&mut prefix)
        .map_err(|e| Error::io(path, e))?;
    let bad = |m: String| Error::Invalid(format!("{}: {m}", path.display()));
    if prefix[..8] != MAGIC[..] {
        return Err(bad(format!(
            "expected magic {MAGIC:?}, not a shapes dataset"
        )));
    }
    let len = u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]);
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header)
        .map_err(|e| Error::io(path, e))?;
    let value: Value =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header is not JSON: {e}")))?;
    let version = value.get("format_version").and_then(Value::as_u64);
    if version != Some(u64::from(FORMAT_VERSION)) {
        return Err(bad(format!(
            "format_version {version:?}, expected {FORMAT_VERSION}"
        )));
    }
    Ok(value)
}

/// Writes `preview.png` (the first `k` samples, 8 per row, ×2) and `preview.txt` (one
/// `index<TAB>split<TAB>caption` line per sample) into `dir`.
pub fn write_preview(dir: &Path, options: &DatasetOptions) -> Result<()> {
    const COLUMNS: usize = 8;
    const SCALE: usize = 2;
    const GAP: usize = 2;
    let k = options.preview.min(options.count);
    if k == 0 {
        return Ok(());
    }
    let tile = IMAGE_SIZE as usize * SCALE;
    let cols = k.min(COLUMNS);
    let rows = k.div_ceil(COLUMNS);
    let (w, h) = (cols * (tile + GAP) + GAP, rows * (tile + GAP) + GAP);
    let mut grid: Vec<u8> = [60u8, 60, 60]
        .iter()
        .copied()
        .cycle()
        .take(w * h * 3)
        .collect();
    let mut text = String::new();
    for i in 0..k {
        let s = sample(options.seed, options.split, i as u64);
        text.push_str(&format!(
            "{i}\t{}\t{}\n",
            s.scene.split().name(),
            caption::text(&s.words)
        ));
        let image = render(&s.scene);
        let (ox, oy) = (
            GAP + (i % COLUMNS) * (tile + GAP),
            GAP + (i / COLUMNS) * (tile + GAP),
        );
        for y in 0..tile {
            for x in 0..tile {
                let src = ((y / SCALE) * IMAGE_SIZE as usize + x / SCALE) * 3;
                let dst = ((oy + y) * w + ox + x) * 3;
                if let (Some(s), Some(d)) = (image.get(src..src + 3), grid.get_mut(dst..dst + 3)) {
                    d.copy_from_slice(s);
                }
            }
        }
    }
    let size = |n: usize| u32::try_from(n).map_err(|_| Error::Invalid("preview too large".into()));
    transfusion_sdk::RgbImage::new(size(w)?, size(h)?, grid)?.save_png(dir.join("preview.png"))?;
    let txt = dir.join("preview.txt");
    std::fs::write(&txt, text).map_err(|e| Error::io(&txt, e))?;
    Ok(())
}

/// Writes the dataset directory `dir` atomically: `shapes.bin`, and the preview when asked.
pub fn write_dataset(dir: &Path, options: &DatasetOptions) -> Result<DatasetSummary> {
    let mut summary = None;
    write_dir_atomically(dir, |tmp| {
        summary = Some(write_data_file(&tmp.join(DATA_FILE), options)?);
        write_preview(tmp, options)
    })?;
    summary.ok_or_else(|| Error::Invalid("dataset was not written".into()))
}
