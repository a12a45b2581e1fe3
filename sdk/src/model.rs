//! A loaded bundle: manifest, tokenizer and the seven graphs, each optimised once at the
//! precision chosen for its part. `Model` is `Send + Sync`: sessions on many threads share it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tract_onnx::prelude::*;

use crate::error::{Error, Result};
use crate::graph::{tensor_to_f32, Graph};
use crate::graph_id::{GraphId, PerGraph};
use crate::image::RgbImage;
use crate::limits::MemoryPlan;
use crate::manifest::{FloatDtype, Manifest, Precision};
use crate::options::{Device, LoadOptions, PrecisionChoice};
use crate::text::Tokenizer;
use tract_onnx::tract_core::runtime::Runtime;

/// Reads one graph file of a bundle for `Model::load_with`: graph, file, and the GPU runtime
/// it goes to (`None`: the CPU). A harness hook of the `engine` feature, not app API.
pub type GraphLoader<'a> = dyn FnMut(GraphId, &Path, Option<&dyn Runtime>) -> Result<Graph> + 'a;

/// [`GraphLoader`] for graphs read on several threads at once.
type SharedGraphLoader<'a> =
    dyn Fn(GraphId, &Path, Option<&dyn Runtime>) -> Result<Graph> + Sync + 'a;

/// A graph read, with the time it took.
type ReadGraph = (Graph, Duration);

/// How [`Model::load_inner`] reads the graph files.
enum Reader<'a> {
    /// One at a time, in bundle order, stopping at the first error ([`Model::load_with`]).
    #[cfg(feature = "engine")]
    InOrder(&'a mut GraphLoader<'a>),
    /// Several at once on the CPU's cores when every graph runs on the CPU ([`Model::load`]);
    /// in bundle order on the calling thread otherwise (a GPU runtime prepares its graphs one
    /// at a time).
    CpuParallel(&'a SharedGraphLoader<'a>),
}

/// Reads and optimises the graph files `paths` (all on the CPU) on up to one thread per core,
/// the largest files first: loading is tract's import and optimiser, one core per graph, and
/// the backbone alone takes about as long as the six other graphs together. Returns each graph
/// with the time it took, or the first error in bundle order; after an error no graph is
/// started.
fn read_in_parallel(
    paths: &PerGraph<PathBuf>,
    read: &SharedGraphLoader<'_>,
) -> Result<PerGraph<ReadGraph>> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;

    let mut order: Vec<GraphId> = GraphId::ALL.to_vec();
    let size = |id: GraphId| std::fs::metadata(&paths[id]).map_or(0, |m| m.len());
    order.sort_by_key(|&id| std::cmp::Reverse(size(id)));
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = workers.min(order.len());
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let slots: PerGraph<Mutex<Option<Result<ReadGraph>>>> = PerGraph::from_fn(|_| Mutex::new(None));
    let work = || {
        while !failed.load(Ordering::Relaxed) {
            let Some(&id) = order.get(next.fetch_add(1, Ordering::Relaxed)) else {
                break;
            };
            let start = Instant::now();
            let result = read(id, &paths[id], None).map(|g| (g, start.elapsed()));
            if result.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            *slots[id].lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
        }
    };
    std::thread::scope(|scope| {
        // The calling thread is one of the workers; a thread that cannot be started leaves its
        // share to the others. tract's import recurses through the graph: the main thread's
        // stack size.
        for _ in 1..workers {
            let spawned = std::thread::Builder::new()
                .name("transfusion-load".into())
                .stack_size(8 << 20)
                .spawn_scoped(scope, work);
            if let Err(e) = spawned {
                log::warn!("loading on fewer threads: {e}");
                break;
            }
        }
        work();
    });
    log::debug!("read {} graphs on {workers} threads", order.len());

    let Ok(mut slots) = slots.try_map_into(|_, slot| {
        Ok::<_, std::convert::Infallible>(slot.into_inner().unwrap_or_else(|e| e.into_inner()))
    });
    // The first error in bundle order; without one, every slot holds its graph.
    for id in GraphId::ALL {
        if let Some(Err(_)) = &slots[id] {
            if let Some(Err(e)) = slots[id].take() {
                return Err(e);
            }
        }
    }
    slots.try_map_into(|id, slot| {
        slot.unwrap_or_else(|| {
            Err(Error::Graph {
                graph: id.to_string(),
                path: paths[id].clone(),
                message: "was not read".into(),
            })
        })
    })
}

/// One graph at its chosen precision.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    pub(crate) graph: Graph,
    pub(crate) precision: Precision,
    pub(crate) float: FloatDtype,
}

impl Part {
    /// A float tensor in this graph's float type from f32 values (an input of this graph: errors
    /// name it).
    pub fn float_tensor(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        float_tensor(shape, data, self.float, self.graph.name())
    }

    /// Runs the graph; returns its outputs in declaration order.
    pub fn run(&self, inputs: TVec<TValue>) -> Result<TVec<TValue>> {
        self.graph.run(inputs)
    }
}

/// Builds a float tensor of `float` type from f32 values, for an input of graph `graph`.
///
/// For FP16 a finite value beyond ±65504 is an [`Error::Numerical`]: the cast would make it ±inf
/// and the graph would answer NaN further on (a diverged sampler's latent, for instance, poisons
/// the KV cache and every later logit). Infinities pass: attention masks use −inf on purpose.
pub fn float_tensor(
    shape: &[usize],
    data: &[f32],
    float: FloatDtype,
    graph: &str,
) -> Result<Tensor> {
    let numerical = |message: String| Error::Numerical {
        what: format!("input of `{graph}`"),
        message,
    };
    if float == FloatDtype::Float16 {
        let max = f32::from(f16::MAX);
        if let Some((i, v)) = data
            .iter()
            .enumerate()
            .find(|(_, v)| v.is_finite() && v.abs() > max)
        {
            return Err(numerical(format!(
                "value {v} at element {i} is outside the FP16 range (±{max}); the values \
                 diverged (an untrained or unstable model?), or run this graph at fp32"
            )));
        }
    }
    let t = tract_ndarray::ArrayD::from_shape_vec(shape, data.to_vec())
        .map_err(|e| {
            numerical(format!(
                "{} values do not make shape {shape:?}: {e}",
                data.len()
            ))
        })?
        .into_tensor();
    match float {
        FloatDtype::Float32 => Ok(t),
        FloatDtype::Float16 => Ok(t
            .cast_to::<f16>()
            .map_err(|e| numerical(format!("{e:#}")))?
            .into_owned()),
    }
}

/// Copies output `index` of `outputs` as f32 values.
pub fn output_f32(outputs: &TVec<TValue>, index: usize, what: &str) -> Result<Vec<f32>> {
    let value = outputs.get(index).ok_or_else(|| Error::Numerical {
        what: what.to_string(),
        message: format!(
            "graph returned {} outputs, expected more than {index}",
            outputs.len()
        ),
    })?;
    Ok(tensor_to_f32(value, what)?.1)
}

/// A loaded model: `Send + Sync`, shared by reference between threads; each generation runs
/// on its own [`Session`](crate::Session).
#[derive(Debug)]
pub struct Model {
    dir: PathBuf,
    manifest: Manifest,
    tokenizer: Tokenizer,
    parts: PerGraph<Part>,
    load_time: Duration,
}

/// Whether `auto` may pick FP16 on CPUs with native FP16 arithmetic. Off until tract's native
/// FP16 kernels have run on ARMv8.2 hardware (the NaN first seen under qemu-aarch64 came from
/// untrained models overflowing FP16, docs/jetson.md); `fp16` can be asked for explicitly.
const AUTO_FP16_ON_CPU: bool = false;

/// Whether `auto` picks the INT8 file (with integer kernels) of graph `id` on this CPU, where
/// it measured faster than the FP32 one and as accurate (docs/performance.md; `models/shapes64`
/// at 12 seeds: 0.548 all-INT8 against 0.525 FP32):
///
/// - the backbone on x86-64 with AVX2: 1.17–1.31× on a Zen 4 with VNNI (tract's kernels); on a
///   Zen 3 without (the SDK's kernels), 1.3× a diffusion step and 2.3–2.8× a decoded token;
/// - the patch layers and the VAE where the SDK's INT8 convolutions run (AVX2 without VNNI): on
///   the Zen 3, `patch_out` 1.27×, the VAE decoder 1.37×, the encoder 1.2×, `patch_in` 1.07×.
///
/// Not the convolutions on VNNI CPUs (tract's kernels: not faster there), not ARM (INT8 not
/// timed there). `int8` can be asked for explicitly, for every part.
fn auto_int8_on_cpu(id: GraphId) -> bool {
    let rewrites = crate::fused::Rewrites::from_env();
    match id {
        GraphId::Backbone => crate::fused::int8_products_fast_here(rewrites),
        GraphId::PatchIn | GraphId::PatchOut | GraphId::VaeEncoder | GraphId::VaeDecoder => {
            rewrites.sdk_integer()
        }
        GraphId::TextEmbed | GraphId::LmHead => false,
    }
}

/// Whether this CPU does FP16 arithmetic natively (aarch64 `asimdhp`, reported as `fp16`).
pub fn native_fp16() -> bool {
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("fp16")
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        false
    }
}

fn choose(
    manifest: &Manifest,
    id: GraphId,
    choice: PrecisionChoice,
    on_gpu: bool,
) -> Result<Precision> {
    let name = id.name();
    let entry = manifest.graph(id)?;
    match choice {
        PrecisionChoice::Exact(p) => {
            if entry.files.contains_key(&p) {
                Ok(p)
            } else {
                Err(Error::InvalidOption {
                    name: "precision".into(),
                    message: format!(
                        "the bundle has no {p} file for `{name}` (it has {})",
                        manifest
                            .precisions
                            .iter()
                            .map(|p| p.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })
            }
        }
        PrecisionChoice::Auto => {
            let int8 = entry
                .files
                .get(&Precision::Int8)
                .is_some_and(|f| f.int8_ops);
            if on_gpu && entry.files.contains_key(&Precision::Fp16) {
                Ok(Precision::Fp16)
            } else if int8 && !on_gpu && auto_int8_on_cpu(id) {
                Ok(Precision::Int8)
            } else if AUTO_FP16_ON_CPU
                && native_fp16()
                && entry.files.contains_key(&Precision::Fp16)
            {
                Ok(Precision::Fp16)
            } else if entry.files.contains_key(&Precision::Fp32) {
                Ok(Precision::Fp32)
            } else {
                manifest
                    .precisions
                    .first()
                    .copied()
                    .ok_or_else(|| Error::Manifest {
                        path: "manifest.json".into(),
                        message: "no precision".into(),
                    })
            }
        }
    }
}

/// The GPU runtime `device` asks for: `None` for the CPU. `Cuda` fails with the reason when
/// tract-cuda can not start; `Auto` falls back to the CPU and logs the reason (warning).
///
/// The reason comes from the [preflight](crate::platform::preflight) first. tract-cuda 0.23.9's
/// own check probes the driver and the libraries but stops at the first missing one and names
/// no package, and it checks neither NVRTC's headers nor its kernel cache: its CUDA context,
/// created when the first graph is prepared, compiles kernels into that cache and *panics*
/// when the headers are missing or the cache can not be written (caught by the graph loader,
/// but as an unhelpful "tract panicked" error). So tract-cuda is asked only when every
/// library, header, device node and the cache are in order, and a refusal names each missing
/// piece and its package. tract-cuda's check then runs with panics caught.
pub fn gpu_runtime(device: Device) -> Result<Option<&'static dyn Runtime>> {
    if device == Device::Cpu {
        return Ok(None);
    }
    let reason = match cuda_runtime() {
        Ok(rt) => return Ok(Some(rt)),
        Err(reason) => reason,
    };
    if device == Device::Auto {
        log::warn!("no usable GPU ({reason}); running on the CPU");
        return Ok(None);
    }
    Err(Error::InvalidOption {
        name: "device".into(),
        message: format!("cuda is unavailable: {reason}; use `cpu`, or `auto` to fall back"),
    })
}

impl Device {
    /// The device graphs asked to run on `self` would run on, found as [`Model::load`] finds
    /// it: [`Device::Cpu`], or [`Device::Cuda`] when tract-cuda can start. `Auto` without a
    /// usable GPU is `Cpu` (the reason logged); `Cuda` without one is an error naming each
    /// missing piece and its package.
    pub fn resolve(self) -> Result<Device> {
        Ok(match gpu_runtime(self)? {
            Some(_) => Device::Cuda,
            None => Device::Cpu,
        })
    }
}

/// tract-cuda's runtime, or why not.
fn cuda_runtime() -> std::result::Result<&'static dyn Runtime, String> {
    if !cfg!(feature = "cuda") {
        return Err(
            "this build of the SDK has no CUDA support (build with a `cuda-*` feature: \
                    `cuda-12000` for JetPack 6, docs/jetson.md)"
                .to_string(),
        );
    }
    // No commands (nvidia-smi can take seconds without persistence mode): files only.
    let env = crate::platform::HostEnv {
        run_commands: false,
        ..crate::platform::HostEnv::from_process()
    };
    let preflight = crate::platform::preflight(Path::new("/"), &env);
    let problems = preflight.cuda_problems();
    if !problems.is_empty() {
        return Err(format!("preflight: {}", problems.join("; ")));
    }
    for warning in preflight.cuda.warnings() {
        log::warn!("cuda: {warning}");
    }
    let found =
        crate::error::catch_panic(|| tract_onnx::tract_core::runtime::runtime_for_name("cuda"));
    let gpu = preflight
        .cuda
        .gpu
        .as_ref()
        .map(|g| {
            format!(
                " (GPU {}, driver {})",
                g.name,
                preflight.cuda.driver.version.as_deref().unwrap_or("?")
            )
        })
        .unwrap_or_default();
    match found {
        Ok(Ok(Some(rt))) => {
            log::info!("cuda: tract-cuda started{gpu}");
            Ok(rt)
        }
        Ok(Ok(None)) => {
            Err("tract's cuda runtime is not registered (tract-cuda not linked)".into())
        }
        Ok(Err(e)) => Err(format!("tract-cuda's check failed{gpu}: {e:#}")),
        Err(panic) => Err(format!("tract-cuda panicked starting{gpu}: {panic}")),
    }
}

impl Model {
    /// Loads the bundle in `dir`: checks `options`, reads and checks the manifest, the
    /// tokenizer, and every graph (interface checked against the manifest, optimised once by
    /// tract). Errors name `dir` as given, or the file inside it.
    pub fn load(dir: impl AsRef<Path>, options: &LoadOptions) -> Result<Self> {
        // The SDK runs every graph at batch 1 (a guidance pass is a second session, not a
        // second batch row): tract plans each graph for that size.
        let batch_1 = [("B", 1)];
        let cpu = tract_onnx::tract_core::runtime::DefaultRuntime;
        let read = |id: GraphId, path: &Path, runtime: Option<&dyn Runtime>| {
            Graph::load_specialized(id.name(), path, runtime.unwrap_or(&cpu), &batch_1)
        };
        Self::load_inner(dir.as_ref(), options, Reader::CpuParallel(&read))
    }

    /// [`Model::load`] with the caller reading each graph file (which graph, its path inside
    /// the bundle, the GPU runtime it goes to or `None` for the CPU). Every check of the bundle
    /// still runs, interfaces included. For harnesses: the bundle fuzz target hands back
    /// graphs it already read for files it did not change, so it can afford a million runs.
    #[cfg(feature = "engine")]
    pub fn load_with(
        dir: impl AsRef<Path>,
        options: &LoadOptions,
        load_graph: &mut GraphLoader<'_>,
    ) -> Result<Self> {
        Self::load_inner(dir.as_ref(), options, Reader::InOrder(load_graph))
    }

    fn load_inner(dir: &Path, options: &LoadOptions, reader: Reader<'_>) -> Result<Self> {
        let start = Instant::now();
        options.validate()?;
        let gpu = gpu_runtime(options.device)?;
        let manifest = Manifest::load(dir)?;
        // Every graph's precision and file first: the memory plan is checked before reading any.
        let chosen = PerGraph::try_from_fn(|id| {
            let on_gpu = gpu.is_some() && !options.cpu_graphs.contains(&id);
            let precision = choose(&manifest, id, options.precision.for_graph(id), on_gpu)?;
            let file =
                manifest
                    .graph(id)?
                    .files
                    .get(&precision)
                    .ok_or_else(|| Error::Manifest {
                        path: dir.join("manifest.json"),
                        message: format!("graph `{id}` has no {precision} file"),
                    })?;
            let path = Manifest::bundle_file(dir, &file.path)?;
            Ok::<_, Error>((precision, file, on_gpu, path))
        })?;
        let tokenizer_path = Manifest::bundle_file(dir, &manifest.tokenizer)?;
        let files: Vec<_> = chosen
            .iter()
            .map(|(id, (precision, _, _, path))| (id, *precision, path.clone()))
            .collect();
        let plan = MemoryPlan::for_bundle(&manifest, &files, &tokenizer_path)?;
        if let Some(cap) = options.memory_cap {
            plan.check(cap, dir)?;
        }
        log::debug!("memory plan of {}: {plan:?}", dir.display());
        let tokenizer = Tokenizer::from_file(&tokenizer_path, manifest.special_tokens)?;
        let finish = |id: GraphId, mut graph: Graph, took: Duration| {
            let (precision, file, _, path) = &chosen[id];
            if let Some(n) = options.threads {
                graph = graph.with_threads(n);
            }
            graph.check_interface(manifest.graph(id)?, file.float)?;
            log::info!(
                "loaded {id} ({precision}, {}) from {} in {:.1} ms",
                graph.runtime(),
                path.display(),
                took.as_secs_f64() * 1e3
            );
            Ok::<_, Error>(Part {
                graph,
                precision: *precision,
                float: file.float,
            })
        };
        // One graph after the other, each checked as soon as it is read.
        let in_order = |read: &mut GraphLoader<'_>| {
            PerGraph::try_from_fn(|id| {
                let (_, _, on_gpu, path) = &chosen[id];
                let start = Instant::now();
                let graph = read(id, path, gpu.filter(|_| *on_gpu))?;
                finish(id, graph, start.elapsed())
            })
        };
        let parts = match reader {
            Reader::CpuParallel(read) if gpu.is_none() => {
                let graphs = read_in_parallel(&chosen.map(|_, c| c.3.clone()), read)?;
                graphs.try_map_into(|id, (graph, took)| finish(id, graph, took))?
            }
            Reader::CpuParallel(read) => in_order(&mut |id, path, gpu| read(id, path, gpu))?,
            #[cfg(feature = "engine")]
            Reader::InOrder(read) => in_order(read)?,
        };
        Ok(Model {
            dir: dir.to_path_buf(),
            tokenizer,
            parts,
            manifest,
            load_time: start.elapsed(),
        })
    }

    /// Graph `id` at its chosen precision.
    pub(crate) fn part(&self, id: GraphId) -> &Part {
        &self.parts[id]
    }

    /// The bundle's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The bundle directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// How long [`Model::load`] took.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// The precision each graph runs at.
    pub fn precisions(&self) -> PerGraph<Precision> {
        self.parts.map(|_, part| part.precision)
    }

    /// Where graph `id` runs: tract's runtime name (`cpu`, `cuda`).
    pub fn runtime(&self, id: GraphId) -> &str {
        self.parts[id].graph.runtime()
    }

    /// The matrix-product kernels tract's optimised plan of graph `id` runs (integer or float,
    /// and their names): how to check that an INT8 graph really runs integer kernels.
    pub fn kernel_summary(&self, id: GraphId) -> crate::graph::KernelSummary {
        self.parts[id].graph.kernel_summary()
    }

    /// Encodes `image` to a latent with the bundle's `vae_encoder` and decodes that latent back
    /// with `vae_decoder`, the two graphs every captioned (encode) and generated (decode) image
    /// goes through: what comes back is the best the VAE lets any image of this model be.
    ///
    /// An image of another size than the model's (`geometry.image_size`) is resized to it
    /// first with [`RgbImage::resize`], as captioning does; the result has the model's size.
    ///
    /// ```no_run
    /// # use transfusion_sdk::{LoadOptions, Model, RgbImage};
    /// let model = Model::load("models/shapes64/bundle", &LoadOptions::default())?;
    /// let image = RgbImage::load_png("scene.png")?;
    /// model.vae_roundtrip(&image)?.save_png("scene.vae.png")?;
    /// # Ok::<(), transfusion_sdk::Error>(())
    /// ```
    ///
    /// Errors: those of [`RgbImage::resize`] and of running the graphs ([`Error::Numerical`]
    /// for a non-finite latent).
    pub fn vae_roundtrip(&self, image: &RgbImage) -> Result<RgbImage> {
        let size = self.manifest.geometry.image_size;
        let resized;
        let image = if image.width() as usize != size || image.height() as usize != size {
            resized = image.resize(size as u32, size as u32)?;
            &resized
        } else {
            image
        };
        let mut session = crate::session::Session::new(self)?;
        let latent = session.encode_image(&image.to_chw())?;
        let rgb = session.decode_latent(&latent)?;
        Ok(RgbImage::from_chw(&rgb, size, size)?)
    }

    /// [`Model::precisions`] as one line for logs, e.g. `text_embed fp32, backbone int8, …`.
    pub fn precisions_line(&self) -> String {
        self.precisions()
            .iter()
            .map(|(id, precision)| format!("{id} {precision}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
