//! `transfusion convert`: checkpoint → bundle (manifest, tokenizer, ONNX graphs per precision).

use std::collections::BTreeMap;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use tract_onnx::prelude::*;
use transfusion_sdk::engine::{tensor_to_f32, Graph as TractGraph};
use transfusion_sdk::manifest::{
    GraphEntry, GraphFile, Manifest, Precision, Preview, MANIFEST_FORMAT_VERSION,
};
use transfusion_sdk::GraphId;

pub use transfusion_sdk::manifest::Precision as BundlePrecision;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::onnx::{build_graph, Int8Parts};
use crate::publish::write_dir_atomically;

/// What to convert.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    pub precisions: Vec<Precision>,
    pub int8: Int8Parts,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

impl ConvertOptions {
    /// FP32, FP16 and INT8 with the default INT8 parts: what `transfusion convert` writes
    /// without `--precision`, and what the shipped model's bundle holds.
    pub fn all_precisions(progress: bool) -> Self {
        ConvertOptions {
            precisions: vec![Precision::Fp32, Precision::Fp16, Precision::Int8],
            int8: Int8Parts::default(),
            progress,
        }
    }
}

/// Converts the checkpoint in `ckpt_dir` into a bundle at `out` (atomically).
pub fn convert(ckpt_dir: &Path, out: &Path, options: &ConvertOptions) -> Result<Manifest> {
    let ckpt = Checkpoint::load(ckpt_dir)?;
    let mut precisions = options.precisions.clone();
    precisions.sort();
    precisions.dedup();
    if precisions.is_empty() {
        return Err(Error::Invalid("no precision to convert to".into()));
    }
    let mut manifest = None;
    write_dir_atomically(out, |tmp| {
        manifest = Some(write_bundle(&ckpt, tmp, &precisions, options)?);
        Ok(())
    })?;
    manifest.ok_or_else(|| Error::Invalid("conversion produced no manifest".into()))
}

fn write_bundle(
    ckpt: &Checkpoint,
    dir: &Path,
    precisions: &[Precision],
    options: &ConvertOptions,
) -> Result<Manifest> {
    let bar = if options.progress {
        let bar = ProgressBar::new((precisions.len() * GraphId::ALL.len()) as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {msg}")
                .map_err(|e| Error::Invalid(e.to_string()))?
                .progress_chars("=> "),
        );
        bar.set_prefix("convert");
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut graphs: BTreeMap<String, GraphEntry> = BTreeMap::new();
    for &precision in precisions {
        let sub = dir.join(precision.name());
        for id in GraphId::ALL {
            let name = id.name();
            bar.set_message(format!("{precision} {name}"));
            let graph = build_graph(id, ckpt, precision, options.int8)?;
            let bytes = graph.built.bytes;
            // An INT8 graph with nothing quantized is byte-identical to its FP32 twin (written
            // first: precisions are sorted) and points at it instead of being stored twice.
            let twin = (precision == Precision::Int8 && !graph.int8_ops)
                .then(|| graphs.get(name).and_then(|e| e.files.get(&Precision::Fp32)))
                .flatten()
                .map(|f| f.path.clone())
                .filter(|rel| std::fs::read(dir.join(rel)).is_ok_and(|b| b == bytes));
            let rel = match twin {
                Some(rel) => rel,
                None => {
                    std::fs::create_dir_all(&sub).map_err(|e| Error::io(&sub, e))?;
                    let rel = format!("{}/{name}.onnx", precision.name());
                    let path = dir.join(&rel);
                    std::fs::write(&path, &bytes).map_err(|e| Error::io(&path, e))?;
                    rel
                }
            };
            let entry = graphs
                .entry(name.to_string())
                .or_insert_with(|| GraphEntry {
                    inputs: graph.built.inputs.clone(),
                    outputs: graph.built.outputs.clone(),
                    files: BTreeMap::new(),
                });
            entry.files.insert(
                precision,
                GraphFile {
                    path: rel,
                    bytes: bytes.len() as u64,
                    float: precision.float_dtype(),
                    int8_ops: graph.int8_ops,
                },
            );
            bar.inc(1);
        }
    }
    bar.set_message("fitting the latent preview");
    let first = *precisions
        .first()
        .ok_or_else(|| Error::Invalid("no precision to convert to".into()))?;
    let decoder = graphs
        .get("vae_decoder")
        .and_then(|g| g.files.values().find(|f| f.float == first.float_dtype()))
        .map(|f| dir.join(&f.path))
        .ok_or_else(|| Error::Invalid("no vae_decoder was written".into()))?;
    let preview = fit_preview(ckpt, &decoder, first)?;
    bar.finish_and_clear();

    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = serde_json::to_string_pretty(&ckpt.tokenizer)
        .map_err(|e| Error::Invalid(format!("cannot serialise the tokenizer: {e}")))?;
    std::fs::write(&tokenizer_path, tokenizer + "\n").map_err(|e| Error::io(&tokenizer_path, e))?;

    let config = ckpt.config.clone();
    let manifest = Manifest {
        format_version: MANIFEST_FORMAT_VERSION,
        producer: format!("transfusion-tools {}", env!("CARGO_PKG_VERSION")),
        name: config.name.clone(),
        geometry: config.geometry(),
        special_tokens: config.special_tokens,
        diffusion: config.diffusion.clone(),
        config,
        preview,
        tokenizer: "tokenizer.json".into(),
        precisions: precisions.to_vec(),
        graphs,
    };
    let path = dir.join("manifest.json");
    let text = serde_json::to_string_pretty(&manifest)
        .map_err(|e| Error::Invalid(format!("cannot serialise the manifest: {e}")))?;
    std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))?;
    Ok(manifest)
}

/// Fits the linear latent → RGB preview by least squares: decodes random latents with the VAE
/// and regresses each latent pixel's RGB (the decoded image average-pooled to the latent grid).
fn fit_preview(ckpt: &Checkpoint, decoder: &Path, precision: Precision) -> Result<Preview> {
    const SAMPLES: usize = 4;
    let g = ckpt.config.geometry();
    let (c, hl, h) = (g.latent_channels, g.latent_size, g.image_size);
    // `Config::validate` guarantees this; the pooling below relies on it.
    if c == 0 || hl == 0 || !h.is_multiple_of(hl) {
        return Err(Error::Invalid(format!(
            "config.json: a {c}-channel {hl}×{hl} latent does not tile the {h}×{h} image"
        )));
    }
    let factor = h / hl;
    let graph = TractGraph::load("vae_decoder", decoder)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5eed);
    let latents: Vec<f32> = (0..SAMPLES * c * hl * hl)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    let shape = [SAMPLES, c, hl, hl];
    let input = tract_ndarray::ArrayD::from_shape_vec(&shape[..], latents.clone())
        .map_err(|e| Error::Invalid(e.to_string()))?
        .into_tensor();
    let input = match precision {
        Precision::Fp16 => input
            .cast_to::<f16>()
            .map_err(|e| Error::Invalid(e.to_string()))?
            .into_owned(),
        _ => input,
    };
    let out = graph.run(tvec![input.into()])?;
    let first = out
        .first()
        .ok_or_else(|| Error::Invalid("vae_decoder returned nothing".into()))?;
    let (found, rgb) = tensor_to_f32(first, "vae_decoder image")?;
    let expected = [SAMPLES, 3, h, h];
    if found != expected {
        return Err(Error::Invalid(format!(
            "{}: vae_decoder output has shape {found:?}, expected {expected:?}: the latent \
             preview is fitted to RGB images (config image.channels = {}, expected 3)",
            decoder.display(),
            g.image_channels
        )));
    }
    // Normal equations over features [z_0..z_{c-1}, 1], one row per latent pixel of each sample.
    let n = c + 1;
    let mut ata = vec![0f64; n * n];
    let mut aty = vec![0f64; n * 3];
    let plane = hl * hl;
    for (lat, img) in latents
        .chunks_exact(c * plane)
        .zip(rgb.chunks_exact(3 * h * h))
    {
        for (p, target) in pooled_rgb(img, h, hl, factor).iter().enumerate() {
            let feat: Vec<f64> = lat
                .iter()
                .skip(p)
                .step_by(plane)
                .map(|&z| f64::from(z))
                .chain([1.0])
                .collect();
            let rows = ata.chunks_exact_mut(n).zip(aty.chunks_exact_mut(3));
            for (fi, (ata_row, aty_row)) in feat.iter().zip(rows) {
                for (a, fj) in ata_row.iter_mut().zip(&feat) {
                    *a += fi * fj;
                }
                for (a, t) in aty_row.iter_mut().zip(target) {
                    *a += fi * t;
                }
            }
        }
    }
    for a in ata.iter_mut().step_by(n + 1) {
        *a += 1e-6; // ridge: keeps the solve defined for a degenerate decoder
    }
    let solution = solve(&ata, &aty, n, 3)
        .ok_or_else(|| Error::Invalid("latent preview fit is singular".into()))?;
    // `solution` is `n × 3`: one row per latent channel, then the bias row.
    let mut rows = solution.chunks_exact(3);
    let mut weight: Vec<Vec<f32>> = (0..3).map(|_| Vec::with_capacity(c)).collect();
    for row in rows.by_ref().take(c) {
        for (w, &v) in weight.iter_mut().zip(row) {
            w.push(v as f32);
        }
    }
    let bias = rows
        .next()
        .and_then(|row| <[f64; 3]>::try_from(row).ok())
        .ok_or_else(|| Error::Invalid("latent preview fit has no bias row".into()))?
        .map(|b| b as f32);
    Ok(Preview { weight, bias })
}

/// The mean of each `factor × factor` block of the `[3, h, h]` image `img`, per latent pixel of
/// the `hl × hl` grid (row-major), as RGB.
fn pooled_rgb(img: &[f32], h: usize, hl: usize, factor: usize) -> Vec<[f64; 3]> {
    let mut sums: [Vec<f64>; 3] = std::array::from_fn(|_| vec![0f64; hl * hl]);
    for (sum, channel) in sums.iter_mut().zip(img.chunks_exact(h * h)) {
        for (cells, band) in sum
            .chunks_exact_mut(hl)
            .zip(channel.chunks_exact(h * factor))
        {
            for row in band.chunks_exact(h) {
                for (cell, block) in cells.iter_mut().zip(row.chunks_exact(factor)) {
                    for &v in block {
                        *cell += f64::from(v);
                    }
                }
            }
        }
    }
    let area = (factor * factor) as f64;
    let [r, g, b] = sums;
    r.into_iter()
        .zip(g)
        .zip(b)
        .map(|((r, g), b)| [r / area, g / area, b / area])
        .collect()
}

/// Solves `a · x = b` (`a` is `n×n`, `b` is `n×m`, both row-major) by Gauss-Jordan elimination
/// with partial pivoting; `None` when `a` is singular or the lengths are not `n×n` and `n×m`.
fn solve(a: &[f64], b: &[f64], n: usize, m: usize) -> Option<Vec<f64>> {
    if a.len() != n * n || b.len() != n * m {
        return None;
    }
    if n == 0 || m == 0 {
        return Some(Vec::new());
    }
    let mut rows: Vec<(Vec<f64>, Vec<f64>)> = a
        .chunks_exact(n)
        .zip(b.chunks_exact(m))
        .map(|(a, b)| (a.to_vec(), b.to_vec()))
        .collect();
    for col in 0..n {
        let (pivot, magnitude) = rows
            .iter()
            .enumerate()
            .skip(col)
            .filter_map(|(i, (row, _))| Some((i, row.get(col)?.abs())))
            .max_by(|(_, x), (_, y)| x.total_cmp(y))?;
        if magnitude < 1e-12 {
            return None;
        }
        rows.swap(col, pivot);
        let (pivot_a, pivot_b) = rows.get(col)?.clone();
        let p = *pivot_a.get(col)?;
        for (i, (row_a, row_b)) in rows.iter_mut().enumerate() {
            if i == col {
                continue;
            }
            let factor = row_a.get(col)? / p;
            for (x, y) in row_a.iter_mut().zip(&pivot_a) {
                *x -= factor * y;
            }
            for (x, y) in row_b.iter_mut().zip(&pivot_b) {
                *x -= factor * y;
            }
        }
    }
    let mut x = Vec::with_capacity(n * m);
    for (i, (row_a, row_b)) in rows.iter().enumerate() {
        let d = *row_a.get(i)?;
        x.extend(row_b.iter().map(|v| v / d));
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{convert, solve, ConvertOptions, Int8Parts, Precision};
    use crate::checkpoint::{Checkpoint, Tensor};
    use crate::tensors::tensor_specs;

    #[test]
    fn solves_a_small_system() {
        // [[2, 1], [1, 3]] x = [[3, 1], [5, 2]]
        let a = vec![2.0, 1.0, 1.0, 3.0];
        let b = vec![3.0, 1.0, 5.0, 2.0];
        let x = solve(&a, &b, 2, 2).unwrap();
        let expect = [0.8, 0.2, 1.4, 0.6];
        for (got, want) in x.iter().zip(expect) {
            assert!((got - want).abs() < 1e-12, "{x:?}");
        }
    }

    #[test]
    fn singular_is_none() {
        let a = vec![1.0, 2.0, 2.0, 4.0];
        let b = vec![1.0, 2.0];
        assert!(solve(&a, &b, 2, 1).is_none());
    }

    /// Image channels other than RGB pass `Config::validate`, but the latent preview is an RGB
    /// fit: converting such a checkpoint used to index past the decoder's output and panic.
    #[test]
    fn a_non_rgb_image_is_an_error_not_a_panic() {
        let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny");
        let mut ckpt = Checkpoint::load(&tiny).unwrap();
        ckpt.config.image.channels = 1;
        ckpt.tensors = tensor_specs(&ckpt.config)
            .into_iter()
            .map(|spec| {
                let data = match ckpt.tensors.get(&spec.name) {
                    Some(t) if t.shape == spec.shape => t.data.clone(),
                    _ => vec![0.01; spec.numel()],
                };
                let tensor = Tensor {
                    shape: spec.shape,
                    data,
                };
                (spec.name, tensor)
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        ckpt.save(dir.path().join("ckpt")).unwrap();
        let options = ConvertOptions {
            precisions: vec![Precision::Fp32],
            int8: Int8Parts::default(),
            progress: false,
        };
        let out = dir.path().join("bundle");
        let err = convert(&dir.path().join("ckpt"), &out, &options).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("vae_decoder output has shape [4, 1, 32, 32]"),
            "{message}"
        );
        assert!(
            message.contains("image.channels = 1, expected 3"),
            "{message}"
        );
        assert!(!out.exists());
    }
}
