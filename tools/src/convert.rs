//! `transfusion convert`: checkpoint → bundle (manifest, tokenizer, ONNX graphs per precision).

use std::collections::BTreeMap;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use tract_onnx::prelude::*;
use transfusion_sdk::graph::{tensor_to_f32, Graph as TractGraph};
use transfusion_sdk::manifest::{
    GraphEntry, GraphFile, Manifest, Precision, Preview, GRAPH_NAMES, MANIFEST_FORMAT_VERSION,
};

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
        let bar = ProgressBar::new((precisions.len() * GRAPH_NAMES.len()) as u64);
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
        for name in GRAPH_NAMES {
            bar.set_message(format!("{precision} {name}"));
            let graph = build_graph(name, ckpt, precision, options.int8)?;
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
    let decoder = graphs
        .get("vae_decoder")
        .and_then(|g| {
            g.files
                .values()
                .find(|f| f.float == precisions[0].float_dtype())
        })
        .map(|f| dir.join(&f.path))
        .ok_or_else(|| Error::Invalid("no vae_decoder was written".into()))?;
    let preview = fit_preview(ckpt, &decoder, precisions[0])?;
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
    let (_, rgb) = tensor_to_f32(first, "vae_decoder image")?;
    // Normal equations over features [z_0..z_{c-1}, 1].
    let n = c + 1;
    let mut ata = vec![0f64; n * n];
    let mut aty = vec![0f64; n * 3];
    let mut feat = vec![0f64; n];
    for s in 0..SAMPLES {
        for y in 0..hl {
            for x in 0..hl {
                for (k, f) in feat.iter_mut().enumerate().take(c) {
                    *f = f64::from(latents[((s * c + k) * hl + y) * hl + x]);
                }
                feat[c] = 1.0;
                let mut target = [0f64; 3];
                for (ch, t) in target.iter_mut().enumerate() {
                    let mut sum = 0f64;
                    for dy in 0..factor {
                        for dx in 0..factor {
                            let (py, px) = (y * factor + dy, x * factor + dx);
                            sum += f64::from(rgb[((s * 3 + ch) * h + py) * h + px]);
                        }
                    }
                    *t = sum / (factor * factor) as f64;
                }
                for i in 0..n {
                    for j in 0..n {
                        ata[i * n + j] += feat[i] * feat[j];
                    }
                    for (ch, t) in target.iter().enumerate() {
                        aty[i * 3 + ch] += feat[i] * t;
                    }
                }
            }
        }
    }
    for i in 0..n {
        ata[i * n + i] += 1e-6; // ridge: keeps the solve defined for a degenerate decoder
    }
    let solution = solve(&mut ata, &mut aty, n, 3)
        .ok_or_else(|| Error::Invalid("latent preview fit is singular".into()))?;
    let weight = (0..3)
        .map(|ch| (0..c).map(|k| solution[k * 3 + ch] as f32).collect())
        .collect();
    let bias = [0, 1, 2].map(|ch| solution[c * 3 + ch] as f32);
    Ok(Preview { weight, bias })
}

/// Solves `a · x = b` (`a` is `n×n`, `b` is `n×m`) by Gauss-Jordan elimination with partial
/// pivoting; `None` when `a` is singular.
fn solve(a: &mut [f64], b: &mut [f64], n: usize, m: usize) -> Option<Vec<f64>> {
    for col in 0..n {
        let pivot =
            (col..n).max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs()))?;
        if a[pivot * n + col].abs() < 1e-12 {
            return None;
        }
        for k in 0..n {
            a.swap(col * n + k, pivot * n + k);
        }
        for k in 0..m {
            b.swap(col * m + k, pivot * m + k);
        }
        let p = a[col * n + col];
        for row in 0..n {
            if row == col {
                continue;
            }
            let factor = a[row * n + col] / p;
            for k in 0..n {
                a[row * n + k] -= factor * a[col * n + k];
            }
            for k in 0..m {
                b[row * m + k] -= factor * b[col * m + k];
            }
        }
    }
    let mut x = vec![0f64; n * m];
    for row in 0..n {
        for k in 0..m {
            x[row * m + k] = b[row * m + k] / a[row * n + row];
        }
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::solve;

    #[test]
    fn solves_a_small_system() {
        // [[2, 1], [1, 3]] x = [[3, 1], [5, 2]]
        let mut a = vec![2.0, 1.0, 1.0, 3.0];
        let mut b = vec![3.0, 1.0, 5.0, 2.0];
        let x = solve(&mut a, &mut b, 2, 2).unwrap();
        let expect = [0.8, 0.2, 1.4, 0.6];
        for (got, want) in x.iter().zip(expect) {
            assert!((got - want).abs() < 1e-12, "{x:?}");
        }
    }

    #[test]
    fn singular_is_none() {
        let mut a = vec![1.0, 2.0, 2.0, 4.0];
        let mut b = vec![1.0, 2.0];
        assert!(solve(&mut a, &mut b, 2, 1).is_none());
    }
}
