//! `transfusion verify`: runs every graph of every precision of a bundle in tract on the
//! reference inputs written by the PyTorch model and compares the outputs.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Serialize;
use tract_onnx::prelude::*;
use transfusion_sdk::engine::{tensor_to_f32, Graph};
use transfusion_sdk::manifest::{IoDtype, Manifest, Precision};
use transfusion_sdk::GraphId;

use crate::error::{Error, Result};

/// Largest accepted error relative to the reference's largest magnitude, per precision.
///
/// FP32 differs from PyTorch only by summation order. FP16 keeps a 10-bit mantissa (2^-11 ≈ 5e-4
/// per rounding) and tract accumulates FP16 dot products in FP16 (as the aarch64 FP16 kernels
/// do): a 3×3 conv over 128 channels sums 1152 terms, ≈ √1152 · 2^-11 ≈ 1.7 % of the range in the
/// worst case. INT8 quantizes weights per channel and activations per tensor dynamically (≈ 1/255
/// of the tensor range per step), compounding through the backbone. Measured figures are in
/// `docs/bundle.md`.
pub fn tolerance(precision: Precision) -> f32 {
    match precision {
        Precision::Fp32 => 1e-4,
        Precision::Fp16 => 3e-2,
        Precision::Int8 => 0.1,
    }
}

/// One compared output.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub precision: Precision,
    pub case: String,
    pub tensor: String,
    pub max_abs: f32,
    pub rel: f32,
    pub tolerance: f32,
    pub pass: bool,
}

/// A reference tensor: shape and values (f32 or i64).
enum RefData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

struct RefTensor {
    shape: Vec<usize>,
    data: RefData,
}

fn read_reference(path: &Path) -> Result<BTreeMap<String, RefTensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let raw = view.data();
        let data = match view.dtype() {
            safetensors::Dtype::F32 => RefData::F32(
                raw.as_chunks::<4>()
                    .0
                    .iter()
                    .map(|&c| f32::from_le_bytes(c))
                    .collect(),
            ),
            safetensors::Dtype::I64 => RefData::I64(
                raw.as_chunks::<8>()
                    .0
                    .iter()
                    .map(|&c| i64::from_le_bytes(c))
                    .collect(),
            ),
            other => {
                return Err(Error::TensorDtype {
                    path: path.to_path_buf(),
                    name,
                    found: format!("{other:?} (expected F32 or I64)"),
                })
            }
        };
        out.insert(
            name,
            RefTensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(out)
}

fn to_tract(t: &RefTensor, name: &str, precision: Precision) -> Result<Tensor> {
    let bad = |e: String| Error::Invalid(format!("reference tensor `{name}`: {e}"));
    let tensor = match &t.data {
        RefData::F32(v) => {
            let a = tract_ndarray::ArrayD::from_shape_vec(t.shape.clone(), v.clone())
                .map_err(|e| bad(e.to_string()))?
                .into_tensor();
            match precision {
                Precision::Fp16 => a
                    .cast_to::<f16>()
                    .map_err(|e| bad(e.to_string()))?
                    .into_owned(),
                _ => a,
            }
        }
        RefData::I64(v) => tract_ndarray::ArrayD::from_shape_vec(t.shape.clone(), v.clone())
            .map_err(|e| bad(e.to_string()))?
            .into_tensor(),
    };
    Ok(tensor)
}

/// Tract's outputs by `{precision}/{case}/{tensor}`: shape and float32 values.
pub type Dump = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Runs the comparison; `dump` receives tract's outputs as `{precision}/{case}/{tensor}`.
pub fn verify(
    bundle: &Path,
    reference: &Path,
    precisions: Option<&[Precision]>,
    mut dump: Option<&mut Dump>,
) -> Result<Vec<Comparison>> {
    let manifest = Manifest::load(bundle)?;
    let reference_tensors = read_reference(reference)?;
    let mut cases: BTreeMap<String, Vec<(&str, &RefTensor)>> = BTreeMap::new();
    for (name, t) in &reference_tensors {
        let (case, tensor) = name.split_once('/').ok_or_else(|| {
            Error::Invalid(format!(
                "{}: tensor `{name}` is not named `case/tensor`",
                reference.display()
            ))
        })?;
        cases.entry(case.to_string()).or_default().push((tensor, t));
    }
    if cases.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no reference cases",
            reference.display()
        )));
    }
    let g = &manifest.geometry;
    let mut results = Vec::new();
    for &precision in precisions.unwrap_or(&manifest.precisions) {
        let mut loaded: HashMap<String, Graph> = HashMap::new();
        for (case, tensors) in &cases {
            let graph_name = case.split('.').next().unwrap_or(case);
            let id: GraphId = graph_name.parse().map_err(|e| {
                Error::Invalid(format!("{}: case `{case}`: {e}", reference.display()))
            })?;
            let entry = manifest.graph(id)?;
            let file = entry.files.get(&precision).ok_or_else(|| {
                Error::Invalid(format!("bundle has no {precision} file for `{graph_name}`"))
            })?;
            let graph = match loaded.entry(graph_name.to_string()) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(Graph::load(graph_name, &bundle.join(&file.path))?),
            };
            let find = |n: &str| tensors.iter().find(|(t, _)| *t == n).map(|(_, r)| *r);
            let mut inputs: TVec<TValue> = tvec![];
            for input in &entry.inputs {
                let t = match find(&input.name) {
                    Some(r) => to_tract(r, &format!("{case}/{}", input.name), precision)?,
                    None if input.name.starts_with("past_") => {
                        let shape = [1, g.n_heads, 0, g.head_dim];
                        match precision {
                            Precision::Fp16 => Tensor::zero::<f16>(&shape),
                            _ => Tensor::zero::<f32>(&shape),
                        }
                        .map_err(|e| Error::Invalid(e.to_string()))?
                    }
                    None => {
                        return Err(Error::Invalid(format!(
                            "{}: missing reference input `{case}/{}`",
                            reference.display(),
                            input.name
                        )))
                    }
                };
                inputs.push(t.into());
            }
            let outputs = graph.run(inputs)?;
            for (info, value) in entry.outputs.iter().zip(outputs.iter()) {
                let Some(expected) = find(&info.name) else {
                    continue;
                };
                let RefData::F32(want) = &expected.data else {
                    continue;
                };
                let (got_shape, got_data) = tensor_to_f32(value, &info.name)?;
                if got_shape != expected.shape {
                    return Err(Error::Invalid(format!(
                        "{precision} {case}/{}: tract gave shape {got_shape:?}, reference has {:?}",
                        info.name, expected.shape
                    )));
                }
                let (max_abs, rel) = compare(&got_data, want);
                let tol = tolerance(precision);
                if info.dtype == IoDtype::Float {
                    results.push(Comparison {
                        precision,
                        case: case.clone(),
                        tensor: info.name.clone(),
                        max_abs,
                        rel,
                        tolerance: tol,
                        pass: rel <= tol,
                    });
                }
                if let Some(d) = dump.as_deref_mut() {
                    d.insert(
                        format!("{precision}/{case}/{}", info.name),
                        (got_shape, got_data),
                    );
                }
            }
        }
    }
    Ok(results)
}

/// `(max |a − b|, max |a − b| / max |b|)`; NaN anywhere counts as infinitely wrong.
pub fn compare(got: &[f32], want: &[f32]) -> (f32, f32) {
    let mut max_abs = 0f32;
    let mut max_ref = 0f32;
    for (&a, &b) in got.iter().zip(want) {
        let d = (a - b).abs();
        max_abs = if d.is_nan() {
            f32::INFINITY
        } else {
            max_abs.max(d)
        };
        max_ref = max_ref.max(b.abs());
    }
    (max_abs, max_abs / max_ref.max(1e-6))
}

/// Writes tract's outputs (`dump` of [`verify`]) as a float32 safetensors file.
pub fn write_dump(path: &Path, dump: &Dump) -> Result<()> {
    let mut views = Vec::new();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = dump
        .iter()
        .map(|(k, (shape, data))| {
            (
                k.clone(),
                shape.clone(),
                data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    for (name, shape, raw) in &bytes {
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), raw)
                .map_err(|e| Error::Safetensors {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
        views.push((name.clone(), view));
    }
    safetensors::serialize_to_file(views, None, path).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::compare;

    #[test]
    fn relative_error_is_against_the_reference_range() {
        let (abs, rel) = compare(&[1.0, 2.1], &[1.0, 2.0]);
        assert!((abs - 0.1).abs() < 1e-6);
        assert!((rel - 0.05).abs() < 1e-6);
        let (abs, _) = compare(&[f32::NAN], &[1.0]);
        assert!(abs.is_infinite());
    }
}
