//! One ONNX graph loaded into tract: parsed, type-checked, optimised once, then run many times.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::tract_core::internal::{EvalContext, OpState};
use tract_onnx::tract_core::plan::SimpleState;

use crate::error::{catch_panic, Error, Result};
use crate::manifest::{FloatDtype, GraphEntry, IoDtype};

/// A runnable graph. Cheap to share between threads (`Arc` inside; runs take `&self`).
#[derive(Clone)]
pub struct Graph {
    name: String,
    path: PathBuf,
    prepared: Prepared,
    runtime: String,
    inputs: Vec<(String, Option<DatumType>)>,
    outputs: Vec<String>,
    /// The matrix-product executor of this graph's runs (`None`: tract's process default).
    executor: Option<Executor>,
}

/// How a graph runs.
#[derive(Clone)]
enum Prepared {
    /// tract's CPU plan, driven node by node by [`eval_node`] when the flag is set (by tract's
    /// own loop when `TRANSFUSION_FUSED` leaves the vector-state clearing out).
    Cpu(Arc<TypedSimplePlan>, bool),
    /// Another runtime's own runnable (tract-cuda's).
    Runtime(Arc<dyn Runnable>),
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
    /// Loads the ONNX file at `path` and optimises it for tract's CPU kernels; `name` labels
    /// errors and timings.
    #[cfg_attr(not(feature = "engine"), allow(dead_code))]
    pub fn load(name: &str, path: &Path) -> Result<Self> {
        Self::load_on(name, path, &tract_onnx::tract_core::runtime::DefaultRuntime)
    }

    /// Loads the ONNX file at `path` and prepares it for `runtime` (tract's CPU runtime, or a
    /// GPU one such as tract-cuda's).
    #[cfg_attr(not(feature = "engine"), allow(dead_code))]
    pub fn load_on(name: &str, path: &Path, runtime: &dyn Runtime) -> Result<Self> {
        Self::load_specialized(name, path, runtime, &[])
    }

    /// Like [`Graph::load_on`], with the symbolic dimensions named in `symbols` bound to
    /// values before tract optimises the graph. The ONNX file keeps its symbols (`B` for the
    /// batch, docs/bundle.md); a plan for a concrete size lets tract pick convolution and
    /// matrix-product kernels for it instead of generic ones, which at batch 1 — all the SDK
    /// ever runs — makes the VAE and patch graphs markedly faster (docs/performance.md).
    /// A name the graph does not use is ignored.
    pub fn load_specialized(
        name: &str,
        path: &Path,
        runtime: &dyn Runtime,
        symbols: &[(&str, i64)],
    ) -> Result<Self> {
        let fail = |stage: &str, e: TractError| Error::Graph {
            graph: name.to_string(),
            path: path.to_path_buf(),
            message: format!("{stage}: {e:#}"),
        };
        let bytes = file_bytes(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // tract's ONNX import and shape inference panic on some malformed graphs (fuzzing
        // found an out-of-range Unsqueeze axis: docs/bad-inputs.md); a bundle file must give
        // an error, not abort the app, so the import runs under `catch_unwind`.
        let rewrites = crate::fused::Rewrites::from_env();
        let on_cpu = runtime.name() == CPU_RUNTIME;
        let prepare = || -> Result<_> {
            let start = std::time::Instant::now();
            let mut onnx = tract_onnx::onnx();
            if on_cpu && rewrites.norm {
                onnx.op_register.insert(
                    "InstanceNormalization",
                    crate::fused::instance_normalization,
                );
            }
            let mut proto = <tract_onnx::pb::ModelProto as prost::Message>::decode(&*bytes)
                .map_err(|e| fail("not a readable ONNX model", e.into()))?;
            if on_cpu {
                // Groups of standard nodes as one node of the SDK's each, before tract reads
                // the graph: fewer nodes to type, declutter, optimise and run
                // (docs/performance.md).
                let done = crate::fused::rewrite_onnx(&mut proto, &mut onnx, rewrites);
                if done != crate::fused::Rewritten::default() {
                    log::debug!(
                        "{name}: {} INT8 linear layers, {} rotary embeddings, {} RMSNorms and \
                         {} attention cores on the SDK's operators",
                        done.linears,
                        done.ropes,
                        done.norms,
                        done.attentions
                    );
                }
            }
            // Each copy of the weights freed as soon as the next exists: fewer fresh pages
            // to fault in while the graph is built.
            drop(bytes);
            let model = onnx
                .model_for_proto_model(&proto)
                .map_err(|e| fail("not a readable ONNX model", e))?;
            drop(proto);
            let inputs = model
                .input_outlets()
                .map_err(|e| fail("no inputs", e))?
                .iter()
                .enumerate()
                .map(|(ix, o)| {
                    let dt = model
                        .input_fact(ix)
                        .ok()
                        .and_then(|f| f.datum_type.concretize());
                    (model.node(o.node).name.clone(), dt)
                })
                .collect();
            let outputs = model
                .output_outlets()
                .map_err(|e| fail("no outputs", e))?
                .iter()
                .map(|o| {
                    model
                        .outlet_label(*o)
                        .map(str::to_string)
                        .unwrap_or_else(|| model.node(o.node).name.clone())
                })
                .collect();
            let mut typed = model
                .into_typed()
                .map_err(|e| fail("tract could not type it", e))?;
            log::debug!("{name}: read and typed in {:?}", start.elapsed());
            let subs: std::collections::HashMap<Symbol, TDim> = symbols
                .iter()
                .filter_map(|&(s, v)| typed.symbols.get(s).map(|sym| (sym, TDim::Val(v))))
                .collect();
            if !subs.is_empty() {
                typed = typed
                    .set_symbols(&subs)
                    .map_err(|e| fail("tract could not bind its symbols", e))?;
            }
            let replaced = crate::fused::apply(&mut typed, rewrites);
            if replaced > 0 {
                log::debug!("{name}: {replaced} nodes on the SDK's faster operators");
            }
            let prepared = if on_cpu {
                Prepared::Cpu(
                    prepare_cpu(name, typed, rewrites)
                        .map_err(|e| fail("tract could not optimise it", e))?,
                    rewrites.vector_state,
                )
            } else {
                Prepared::Runtime(Arc::from(runtime.prepare(typed).map_err(|e| {
                    fail(
                        &format!("tract's `{}` runtime could not prepare it", runtime.name()),
                        e,
                    )
                })?))
            };
            Ok((inputs, outputs, prepared))
        };
        let (inputs, outputs, prepared) = catch_panic(prepare).map_err(|what| Error::Graph {
            graph: name.to_string(),
            path: path.to_path_buf(),
            message: format!("tract panicked reading it ({what}): the file is malformed"),
        })??;
        Ok(Graph {
            name: name.to_string(),
            path: path.to_path_buf(),
            prepared,
            runtime: runtime.name().to_string(),
            inputs,
            outputs,
            executor: None,
        })
    }

    /// This graph's runs use `threads` matrix-product threads (1: on the calling thread only),
    /// set for the duration of each run on the calling thread — no process-wide setting is
    /// touched, so two models in one process keep their own thread counts.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.executor = Some(executor_for(threads));
        self
    }

    /// Checks the file's inputs and outputs (names, order, element types) against the
    /// manifest's entry, so a swapped or stale file fails at load, not mid-generation.
    pub fn check_interface(&self, entry: &GraphEntry, float: FloatDtype) -> Result<()> {
        let mismatch = |message: String| Error::Graph {
            graph: self.name.clone(),
            path: self.path.clone(),
            message: format!("does not match manifest.json: {message}"),
        };
        let names: Vec<&str> = self.inputs.iter().map(|(n, _)| n.as_str()).collect();
        let expected: Vec<&str> = entry.inputs.iter().map(|t| t.name.as_str()).collect();
        if names != expected {
            return Err(mismatch(format!("inputs {names:?}, expected {expected:?}")));
        }
        let outputs: Vec<&str> = self.outputs.iter().map(String::as_str).collect();
        let expected: Vec<&str> = entry.outputs.iter().map(|t| t.name.as_str()).collect();
        if outputs != expected {
            return Err(mismatch(format!(
                "outputs {outputs:?}, expected {expected:?}"
            )));
        }
        for ((name, dt), info) in self.inputs.iter().zip(&entry.inputs) {
            let want = match info.dtype {
                IoDtype::Int64 => DatumType::I64,
                IoDtype::Float => match float {
                    FloatDtype::Float32 => DatumType::F32,
                    FloatDtype::Float16 => DatumType::F16,
                },
            };
            if let Some(dt) = dt {
                if *dt != want {
                    return Err(mismatch(format!(
                        "input `{name}` is {dt:?}, expected {want:?}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The graph's name.
    #[cfg_attr(not(feature = "engine"), allow(dead_code))]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name of the tract runtime the graph was prepared for (`cpu`, `cuda`).
    pub fn runtime(&self) -> &str {
        &self.runtime
    }

    /// The optimised tract model (for inspection: which kernels run), when the runtime
    /// exposes one.
    pub fn model(&self) -> Option<&TypedModel> {
        match &self.prepared {
            Prepared::Cpu(plan, _) => Runnable::typed_model(plan).map(|m| m.as_ref()),
            Prepared::Runtime(runnable) => runnable.typed_model().map(|m| m.as_ref()),
        }
    }

    /// Runs the graph on inputs in declaration order; outputs come in declaration order.
    pub fn run(&self, inputs: TVec<TValue>) -> Result<TVec<TValue>> {
        let run = || match &self.prepared {
            Prepared::Cpu(plan, true) => {
                SimpleState::new(plan)?.run_plan_with_eval(inputs, eval_node)
            }
            Prepared::Cpu(plan, false) => SimpleState::new(plan)?.run(inputs),
            Prepared::Runtime(runnable) => runnable.run(inputs),
        };
        let result = match &self.executor {
            Some(executor) => multithread_tract_scope(executor.clone(), run),
            None => run(),
        };
        result.map_err(|e| Error::Graph {
            graph: self.name.clone(),
            path: self.path.clone(),
            message: format!("run failed: {e:#}"),
        })
    }
}

/// The name of tract's CPU runtime (`DefaultRuntime`).
const CPU_RUNTIME: &str = "cpu";

/// A graph file's bytes, for the protobuf decoder to copy its tensors out of.
enum FileBytes {
    /// The file mapped into memory, its pages populated at once.
    Mapped(memmap2::Mmap),
    /// The file read into memory, where it cannot be mapped.
    Read(Vec<u8>),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(map) => map,
            FileBytes::Read(bytes) => bytes,
        }
    }
}

/// The bytes of the file at `path`, mapped where the OS allows it (read where it does not).
/// Mapping saves the copy into fresh heap pages that reading makes: the FP32 model loads in
/// 128–134 ms mapped against 148–152 ms read, alternating `bench` runs (docs/performance.md).
fn file_bytes(path: &Path) -> std::io::Result<FileBytes> {
    let file = std::fs::File::open(path)?;
    // SAFETY: the mapping is read-only and lives only while its protobuf is decoded (the
    // caller drops it right after), as tract's own `model_for_path` maps ONNX files. The
    // converter writes a bundle beside its place and renames it in, which leaves a mapped
    // file intact; a file truncated in place by another process within that window would end
    // the process with SIGBUS, as under tract (docs/bundle.md).
    let mapped = unsafe { memmap2::MmapOptions::new().populate().map(&file) };
    match mapped {
        Ok(map) => Ok(FileBytes::Mapped(map)),
        Err(_) => std::fs::read(path).map(FileBytes::Read),
    }
}

/// What tract's CPU runtime does to prepare a graph (declutter, optimise, plan), with the SDK's
/// operators swapped in as `rewrites` allows: products and convolutions between declutter and
/// optimisation ([`crate::fused::apply_decluttered`]), element-wise, padding, patch-matrix and
/// softmax nodes after it ([`crate::fused::apply_optimized`]).
fn prepare_cpu(
    name: &str,
    mut typed: TypedModel,
    rewrites: crate::fused::Rewrites,
) -> TractResult<Arc<TypedSimplePlan>> {
    let start = std::time::Instant::now();
    typed.declutter()?;
    let decluttered = start.elapsed();
    let replaced = crate::fused::apply_decluttered(&mut typed, rewrites)?;
    let convs = crate::fused::conv_shapes(&typed);
    if replaced > 0 {
        log::debug!("{name}: {replaced} products and convolutions on the SDK's operators");
    }
    typed.optimize()?;
    log::debug!(
        "{name}: decluttered in {decluttered:?}, optimised in {:?}",
        start.elapsed() - decluttered
    );
    let replaced = crate::fused::apply_optimized(&mut typed, rewrites, &convs);
    if replaced > 0 {
        log::debug!("{name}: {replaced} nodes on the SDK's operators after optimisation");
    }
    TypedSimplePlan::new(typed)
}

/// Evaluates one node of a CPU plan as tract's own plan loop does, then clears the upper halves
/// of the vector registers on x86.
///
/// tract's AVX/AVX-512 matrix kernels return with the upper register state dirty, and every
/// legacy-SSE instruction after that — the code of every other operator, compiled for the
/// baseline x86-64 target — can pay for it: the INT8 backbone step's quantizations take about
/// twice as long without the clearing (`TRANSFUSION_FUSED=-vector-state`, docs/performance.md).
pub fn eval_node(
    ctx: &EvalContext,
    state: Option<&mut (dyn OpState + 'static)>,
    node: &TypedNode,
    inputs: TVec<TValue>,
) -> TractResult<TVec<TValue>> {
    let outputs = tract_onnx::tract_core::plan::eval(ctx, state, node, inputs);
    vector_state::clear_upper();
    outputs
}

mod vector_state {
    /// `vzeroupper` where the CPU has AVX; nothing elsewhere.
    #[cfg(target_arch = "x86_64")]
    pub fn clear_upper() {
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: `vzeroupper` needs AVX, which the CPU was just checked to have; it only
            // zeroes the upper halves of the ymm/zmm registers, which no Rust value lives in
            // across this call.
            unsafe { vzeroupper() }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx")]
    fn vzeroupper() {
        std::arch::x86_64::_mm256_zeroupper()
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub fn clear_upper() {}
}

/// tract's executor for `threads` matrix-product threads. One thread is tract's single-thread
/// executor: a one-thread rayon pool would still hand large products to rayon's global pool.
fn executor_for(threads: usize) -> Executor {
    if threads <= 1 {
        Executor::SingleThread
    } else {
        Executor::multithread(threads)
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

/// What tract's optimised plan of a graph runs its matrix products on.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelSummary {
    /// Optimised matrix products accumulating in i32 (integer kernels: MatMulInteger/ConvInteger),
    /// tract's or the SDK's.
    pub integer_matmuls: usize,
    /// Optimised matrix products accumulating in floats.
    pub float_matmuls: usize,
    /// Distinct kernel names tract picked (e.g. `avx512vnni_mmm_i32_16x16`), and the SDK's own
    /// `transfusion_avx2_maddwd_i32_6x16` where it replaced tract's INT8 products.
    pub kernels: Vec<String>,
}

impl Graph {
    /// Summarises the matrix-product kernels of the optimised plan: the way to check that an INT8
    /// graph really runs integer kernels rather than dequantized float ones.
    pub fn kernel_summary(&self) -> KernelSummary {
        let mut summary = KernelSummary::default();
        let Some(model) = self.model() else {
            return summary;
        };
        for node in model.nodes() {
            let op: &dyn TypedOp = node.op.as_ref();
            let sdk_products =
                if let Some(linears) = op.downcast_ref::<crate::fused::IntegerLinears>() {
                    linears.layers()
                } else {
                    usize::from(
                        op.downcast_ref::<crate::fused::IntegerProduct>().is_some()
                            || op.downcast_ref::<crate::fused::IntegerConv>().is_some(),
                    )
                };
            if sdk_products > 0 {
                // The SDK's own INT8 products (x86 with AVX2 and no VNNI).
                summary.integer_matmuls += sdk_products;
                let kernel = crate::fused::INTEGER_KERNEL.to_string();
                if !summary.kernels.contains(&kernel) {
                    summary.kernels.push(kernel);
                }
                continue;
            }
            if node.op.name() != "OptMatMul" {
                continue;
            }
            let integer = node
                .outputs
                .first()
                .is_some_and(|o| o.fact.datum_type == DatumType::I32);
            if integer {
                summary.integer_matmuls += 1;
            } else {
                summary.float_matmuls += 1;
            }
            for line in node.op.info().unwrap_or_default() {
                if let Some(start) = line.find(" with [") {
                    let rest = &line[start + 7..];
                    if let Some(end) = rest.find(']') {
                        let kernel = rest[..end].to_string();
                        if !summary.kernels.contains(&kernel) {
                            summary.kernels.push(kernel);
                        }
                    }
                }
            }
        }
        summary.kernels.sort();
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::{file_bytes, FileBytes};

    #[test]
    fn file_bytes_maps_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let (full, empty) = (dir.path().join("full.onnx"), dir.path().join("empty.onnx"));
        std::fs::write(&full, [1u8, 2, 3]).unwrap();
        std::fs::write(&empty, []).unwrap();
        let bytes = file_bytes(&full).unwrap();
        assert!(matches!(bytes, FileBytes::Mapped(_)));
        assert_eq!(&*bytes, &[1, 2, 3]);
        assert!(file_bytes(&empty).unwrap().is_empty());
        assert!(file_bytes(&dir.path().join("missing.onnx")).is_err());
    }
}
