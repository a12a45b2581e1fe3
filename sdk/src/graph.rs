//! One ONNX graph loaded into tract: parsed, type-checked, optimised once, then run many times.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tract_onnx::prelude::*;

use crate::error::{Error, Result};

/// A runnable graph. Cheap to share between threads (`Arc` inside; runs take `&self`).
#[derive(Clone)]
pub struct Graph {
    name: String,
    path: PathBuf,
    plan: Arc<TypedRunnableModel>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("name", &self.name)
            .field("path", &self.path)
            .finish()
    }
}

impl Graph {
    /// Loads and optimises the ONNX file at `path`; `name` labels errors and timings.
    pub fn load(name: &str, path: &Path) -> Result<Self> {
        let fail = |stage: &str, e: TractError| Error::Graph {
            graph: name.to_string(),
            path: path.to_path_buf(),
            message: format!("{stage}: {e:#}"),
        };
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let model = tract_onnx::onnx()
            .model_for_read(&mut bytes.as_slice())
            .map_err(|e| fail("not a readable ONNX model", e))?;
        let typed = model
            .into_optimized()
            .map_err(|e| fail("tract could not type or optimise it", e))?;
        let plan = typed
            .into_runnable()
            .map_err(|e| fail("tract could not plan it", e))?;
        Ok(Graph {
            name: name.to_string(),
            path: path.to_path_buf(),
            plan,
        })
    }

    /// The graph's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The optimised tract model (for inspection: which kernels run).
    pub fn model(&self) -> &TypedModel {
        self.plan.model()
    }

    /// Runs the graph on inputs in declaration order; outputs come in declaration order.
    pub fn run(&self, inputs: TVec<TValue>) -> Result<TVec<TValue>> {
        self.plan.run(inputs).map_err(|e| Error::Graph {
            graph: self.name.clone(),
            path: self.path.clone(),
            message: format!("run failed: {e:#}"),
        })
    }
}

/// Copies a float tensor (f32 or f16) out as `(shape, f32 values)`; `what` names it in errors.
pub fn tensor_to_f32(value: &Tensor, what: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let fail = |e: TractError| Error::Numerical {
        what: what.to_string(),
        message: format!("{e:#}"),
    };
    let cast = value.cast_to::<f32>().map_err(fail)?;
    let view = cast.to_plain_array_view::<f32>().map_err(fail)?;
    Ok((view.shape().to_vec(), view.iter().copied().collect()))
}
