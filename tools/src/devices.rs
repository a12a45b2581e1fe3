//! `transfusion verify --device cuda`: every graph of a bundle on the GPU against the same
//! graph on the CPU, on the same seeded inputs, within the bundle's tolerances.
//!
//! `verify --reference` checks tract's CPU kernels against PyTorch; this checks a GPU runtime
//! against tract's CPU kernels, so the two together cover the GPU path without PyTorch on the
//! device. Inputs follow each graph's manifest interface with its symbols bound (`B` = 1, the
//! SDK's batch; `S` = 8 new positions after `P` = 8 cached ones), so the backbone runs with a
//! real KV prefix and a causal mask with `-inf` entries, as in a generation. Values: uniform in
//! [-1, 1) for floats, token ids below the vocabulary size, positions `P..P+S`, timesteps below
//! the schedule's `train_timesteps`.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::runtime::Runtime;
use transfusion_sdk::engine::{float_tensor, gpu_runtime};
use transfusion_sdk::engine::{tensor_to_f32, Graph};
use transfusion_sdk::manifest::{IoDtype, Manifest, Precision, TensorInfo};
use transfusion_sdk::Device;
use transfusion_sdk::GraphId;

use crate::error::{Error, Result};
use crate::verify::{compare as max_error, tolerance, Comparison};

/// Symbol values the inputs are built with.
const SYMBOLS: [(&str, usize); 3] = [("B", 1), ("S", 8), ("P", 8)];

/// Runs every graph of `bundle` at each of `precisions` (default: all the bundle has) on
/// `device` and on the CPU, and compares every float output.
pub fn compare(
    bundle: &Path,
    device: Device,
    precisions: Option<&[Precision]>,
) -> Result<Vec<Comparison>> {
    if device == Device::Cpu {
        return Err(Error::Invalid(
            "verify --device cpu compares the CPU with itself: use --device cuda, or \
             --reference FILE for PyTorch"
                .into(),
        ));
    }
    // `auto` would fall back silently; here the GPU is the point.
    let gpu = gpu_runtime(Device::Cuda)?
        .ok_or_else(|| Error::Invalid("verify --device: no GPU runtime (see the log)".into()))?;
    compare_on(bundle, gpu, precisions)
}

/// [`compare`] against any tract runtime (`other`), the CPU being the reference. Tests pass
/// the CPU runtime itself, which must agree exactly.
pub fn compare_on(
    bundle: &Path,
    other: &dyn Runtime,
    precisions: Option<&[Precision]>,
) -> Result<Vec<Comparison>> {
    let gpu_name = other.name().to_string();
    let manifest = Manifest::load(bundle)?;
    let mut results = Vec::new();
    for &precision in precisions.unwrap_or(&manifest.precisions) {
        for (index, id) in GraphId::ALL.iter().enumerate() {
            let name = id.name();
            let case = format!("{name}@{gpu_name}");
            match compare_graph(bundle, &manifest, other, precision, (index, *id)) {
                Ok(found) => results.extend(found),
                // One graph the GPU runtime can not prepare or run must not hide the others:
                // it is a failed row naming the error, and the next graph is compared.
                Err(e) => {
                    log::error!("{precision} {case}: {e}");
                    results.push(Comparison {
                        precision,
                        case,
                        tensor: format!("error: {e}"),
                        max_abs: f32::INFINITY,
                        rel: f32::INFINITY,
                        tolerance: tolerance(precision),
                        pass: false,
                    });
                }
            }
        }
    }
    Ok(results)
}

/// Graph `name` (`index` in the bundle) at `precision` on the CPU and on `other`: one row per
/// float output.
fn compare_graph(
    bundle: &Path,
    manifest: &Manifest,
    other: &dyn Runtime,
    precision: Precision,
    (index, id): (usize, GraphId),
) -> Result<Vec<Comparison>> {
    let gpu_name = other.name().to_string();
    let cpu = tract_onnx::tract_core::runtime::DefaultRuntime;
    let batch = [("B", 1i64)];
    let name = id.name();
    let entry = manifest.graph(id)?;
    let file = entry.files.get(&precision).ok_or_else(|| {
        Error::Invalid(format!(
            "{}: the bundle has no {precision} file for `{name}`",
            bundle.join("manifest.json").display()
        ))
    })?;
    let path = bundle.join(&file.path);
    let on_cpu = Graph::load_specialized(name, &path, &cpu, &batch)?;
    let on_gpu = Graph::load_specialized(name, &path, other, &batch)?;
    let seed = 0x7f5e_u64 ^ ((index as u64) << 8) ^ precision as u64;
    let inputs = inputs(manifest, name, &entry.inputs, file.float, seed)?;
    let want = on_cpu.run(inputs.clone())?;
    let got = on_gpu.run(inputs)?;
    let mut rows = Vec::new();
    for (i, info) in entry.outputs.iter().enumerate() {
        if info.dtype != IoDtype::Float {
            continue;
        }
        let (want_shape, want) = tensor_to_f32(nth(&want, i, "CPU", name)?, &info.name)?;
        let (got_shape, got) = tensor_to_f32(nth(&got, i, &gpu_name, name)?, &info.name)?;
        if got_shape != want_shape {
            return Err(Error::Invalid(format!(
                "{precision} `{name}` output `{}`: {gpu_name} gave shape {got_shape:?}, the CPU \
                 {want_shape:?}",
                info.name
            )));
        }
        let (max_abs, rel) = max_error(&got, &want);
        let tol = tolerance(precision);
        rows.push(Comparison {
            precision,
            case: format!("{name}@{gpu_name}"),
            tensor: info.name.clone(),
            max_abs,
            rel,
            tolerance: tol,
            pass: rel <= tol,
        });
    }
    log::info!(
        "{precision} {name}: compared {} on {gpu_name}",
        path.display()
    );
    Ok(rows)
}

/// Output `i` of a run of graph `name` on `side`.
fn nth<'a>(outputs: &'a TVec<TValue>, i: usize, side: &str, name: &str) -> Result<&'a TValue> {
    outputs.get(i).ok_or_else(|| {
        Error::Invalid(format!(
            "`{name}` on the {side} returned {} outputs, expected more than {i}",
            outputs.len()
        ))
    })
}

/// The size of a manifest dimension: a number, a symbol of `SYMBOLS`, or a sum (`P+S`).
pub fn dim(expr: &str) -> Option<usize> {
    expr.split('+')
        .map(str::trim)
        .map(|term| {
            term.parse::<usize>()
                .ok()
                .or_else(|| SYMBOLS.iter().find(|(s, _)| *s == term).map(|&(_, v)| v))
        })
        .sum()
}

fn symbol(name: &str) -> usize {
    SYMBOLS
        .iter()
        .find(|(s, _)| *s == name)
        .map_or(0, |&(_, v)| v)
}

/// Seeded inputs for graph `graph`, in declaration order.
pub fn inputs(
    manifest: &Manifest,
    graph: &str,
    infos: &[TensorInfo],
    float: transfusion_sdk::manifest::FloatDtype,
    seed: u64,
) -> Result<TVec<TValue>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let past = symbol("P");
    let mut out = tvec![];
    for info in infos {
        let shape = info
            .shape
            .iter()
            .map(|d| dim(d))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "manifest: input `{}` of `{graph}` has shape {:?}; expected numbers, B, S, P \
                     or sums of them",
                    info.name, info.shape
                ))
            })?;
        let count: usize = shape.iter().product();
        let bad = |e: String| Error::Invalid(format!("input `{}` of `{graph}`: {e}", info.name));
        let tensor = match (info.dtype, info.name.as_str()) {
            (IoDtype::Int64, "positions") => {
                let values: Vec<i64> = (past..past + count).map(|p| p as i64).collect();
                tract_ndarray::ArrayD::from_shape_vec(shape, values)
                    .map_err(|e| bad(e.to_string()))?
                    .into_tensor()
            }
            (IoDtype::Int64, _) => {
                let vocab = manifest.geometry.vocab_size.max(1) as i64;
                let values: Vec<i64> = (0..count).map(|_| rng.gen_range(0..vocab)).collect();
                tract_ndarray::ArrayD::from_shape_vec(shape, values)
                    .map_err(|e| bad(e.to_string()))?
                    .into_tensor()
            }
            (IoDtype::Float, "attention_mask") => {
                // Row i (new position P+i) sees the prefix and new positions up to itself.
                let width = shape.last().copied().unwrap_or(0);
                let values: Vec<f32> = (0..count)
                    .map(|k| {
                        let (i, j) = (k / width.max(1), k % width.max(1));
                        if j <= past + i {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                    .collect();
                float_tensor(&shape, &values, float, graph)?
            }
            (IoDtype::Float, "timestep") => {
                let t = manifest.diffusion.train_timesteps.max(1) as f32;
                let values: Vec<f32> = (0..count).map(|_| rng.gen_range(0.0..t)).collect();
                float_tensor(&shape, &values, float, graph)?
            }
            (IoDtype::Float, _) => {
                let values: Vec<f32> = (0..count).map(|_| rng.gen_range(-1.0..1.0)).collect();
                float_tensor(&shape, &values, float, graph)?
            }
        };
        out.push(tensor.into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::dim;

    #[test]
    fn manifest_dimensions_are_bound() {
        assert_eq!(dim("256"), Some(256));
        assert_eq!(dim("B"), Some(1));
        assert_eq!(dim("P+S"), Some(16));
        assert_eq!(dim("Q"), None);
    }
}
