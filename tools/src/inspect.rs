//! `transfusion inspect`: what a checkpoint or a bundle holds — parameters per part, bytes per
//! precision, graphs and their interfaces, op histograms (integer ops show up here), and FLOPs
//! counted by tract's cost model on the actual FP32 graphs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use prost::Message;
use serde::Serialize;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::Cost;
use transfusion_sdk::config::Config;
use transfusion_sdk::engine::Graph;
use transfusion_sdk::manifest::{Manifest, Precision, TensorInfo};
use transfusion_sdk::{GraphId, KernelSummary};

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::onnx::{build_graph, Int8Parts};
use crate::tensors::tensor_specs;

/// Prompt length assumed for the per-image FLOPs (the image attends to it).
pub const FLOPS_PROMPT_LEN: usize = 32;
/// Context length assumed for the per-text-token FLOPs.
pub const FLOPS_CONTEXT_LEN: usize = 64;

/// One graph file's facts.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    pub precision: Precision,
    pub path: String,
    pub bytes: u64,
    /// Op type → count of nodes.
    pub ops: BTreeMap<String, usize>,
    /// MatMulInteger / ConvInteger / QLinear* nodes.
    pub integer_ops: usize,
    /// Matrix-product kernels of tract's optimised plan (with `--kernels`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tract: Option<KernelSummary>,
}

/// One graph: interface and files.
#[derive(Debug, Clone, Serialize)]
pub struct GraphReport {
    pub name: String,
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    pub files: Vec<FileReport>,
}

/// Floating-point operations (2 per multiply-add) of the FP32 graphs.
#[derive(Debug, Clone, Serialize)]
pub struct Flops {
    /// One decode step: text_embed + backbone (1 position, `FLOPS_CONTEXT_LEN` cached) + lm_head.
    pub per_text_token: u64,
    /// One diffusion step: patch_in + backbone over the image block after a prompt of
    /// `FLOPS_PROMPT_LEN` cached positions + patch_out.
    pub per_image_step: u64,
    /// One VAE decode.
    pub vae_decode: u64,
    /// `steps × per_image_step + vae_decode` at the recommended step count.
    pub per_image: u64,
    pub steps: usize,
    pub prompt_len: usize,
    pub context_len: usize,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub kind: &'static str,
    pub path: String,
    pub name: String,
    pub config: Config,
    pub parameters: BTreeMap<String, usize>,
    pub total_parameters: usize,
    /// Bytes per precision: measured file sizes for a bundle, weight bytes for a checkpoint.
    pub bytes: BTreeMap<String, u64>,
    pub graphs: Vec<GraphReport>,
    pub flops: Flops,
}

/// Inspects a checkpoint directory (has `config.json`) or a bundle (has `manifest.json`);
/// `kernels` also loads every bundle file into tract and reports its matrix-product kernels.
pub fn inspect(path: &Path, kernels: bool) -> Result<Report> {
    if path.join("manifest.json").exists() {
        inspect_bundle(path, kernels)
    } else if path.join("config.json").exists() {
        inspect_checkpoint(path)
    } else {
        Err(Error::Invalid(format!(
            "{}: neither a bundle (manifest.json) nor a checkpoint (config.json)",
            path.display()
        )))
    }
}

fn parameters(config: &Config) -> (BTreeMap<String, usize>, usize) {
    let mut per_part = BTreeMap::new();
    for spec in tensor_specs(config) {
        *per_part.entry(spec.part.to_string()).or_insert(0) += spec.numel();
    }
    let total = per_part.values().sum();
    (per_part, total)
}

fn inspect_checkpoint(path: &Path) -> Result<Report> {
    let ckpt = Checkpoint::load(path)?;
    let (parameters, total) = parameters(&ckpt.config);
    let bytes = BTreeMap::from([
        ("fp32".to_string(), total as u64 * 4),
        ("fp16".to_string(), total as u64 * 2),
    ]);
    let mut graphs = BTreeMap::new();
    for id in GraphId::ALL {
        let g = build_graph(id, &ckpt, Precision::Fp32, Int8Parts::default())?;
        graphs.insert(id, g.built.bytes);
    }
    let flops = flops(&ckpt.config, |id| {
        graphs
            .get(&id)
            .cloned()
            .ok_or_else(|| Error::Invalid(format!("graph `{id}` missing")))
    })?;
    Ok(Report {
        kind: "checkpoint",
        path: path.display().to_string(),
        name: ckpt.config.name.clone(),
        config: ckpt.config.clone(),
        parameters,
        total_parameters: total,
        bytes,
        graphs: Vec::new(),
        flops,
    })
}

fn inspect_bundle(path: &Path, kernels: bool) -> Result<Report> {
    let manifest = Manifest::load(path)?;
    let (parameters, total) = parameters(&manifest.config);
    let mut bytes: BTreeMap<String, u64> = BTreeMap::new();
    let mut graphs = Vec::new();
    for id in GraphId::ALL {
        let name = id.name();
        let entry = manifest.graph(id)?;
        let mut files = Vec::new();
        for (precision, file) in &entry.files {
            let full = path.join(&file.path);
            let data = std::fs::read(&full).map_err(|e| Error::io(&full, e))?;
            let model = tract_onnx::pb::ModelProto::decode(data.as_slice()).map_err(|e| {
                Error::Invalid(format!("{}: not an ONNX model: {e}", full.display()))
            })?;
            let mut ops: BTreeMap<String, usize> = BTreeMap::new();
            for node in model.graph.iter().flat_map(|g| g.node.iter()) {
                *ops.entry(node.op_type.clone()).or_insert(0) += 1;
            }
            let integer_ops = ops
                .iter()
                .filter(|(op, _)| op.ends_with("Integer") || op.starts_with("QLinear"))
                .map(|(_, n)| n)
                .sum();
            *bytes.entry(precision.name().to_string()).or_insert(0) += data.len() as u64;
            let tract = if kernels {
                Some(Graph::load(name, &full)?.kernel_summary())
            } else {
                None
            };
            files.push(FileReport {
                precision: *precision,
                path: file.path.clone(),
                bytes: data.len() as u64,
                ops,
                integer_ops,
                tract,
            });
        }
        graphs.push(GraphReport {
            name: name.to_string(),
            inputs: entry.inputs.clone(),
            outputs: entry.outputs.clone(),
            files,
        });
    }
    let float_file = |id: GraphId| -> Result<Vec<u8>> {
        let entry = manifest.graph(id)?;
        let file = entry
            .files
            .get(&Precision::Fp32)
            .or_else(|| entry.files.values().next())
            .ok_or_else(|| Error::Invalid(format!("graph `{id}` has no file")))?;
        let full = path.join(&file.path);
        std::fs::read(&full).map_err(|e| Error::io(&full, e))
    };
    let flops = flops(&manifest.config, float_file)?;
    Ok(Report {
        kind: "bundle",
        path: path.display().to_string(),
        name: manifest.name.clone(),
        config: manifest.config.clone(),
        parameters,
        total_parameters: total,
        bytes,
        graphs,
        flops,
    })
}

/// Multiply-adds of one ONNX graph with its symbols bound to `dims`, by tract's cost model.
fn graph_macs(onnx: &[u8], dims: &[(&str, i64)]) -> Result<u64> {
    let fail = |e: TractError| Error::Invalid(format!("cost model: {e:#}"));
    let model = tract_onnx::onnx()
        .model_for_read(&mut &*onnx)
        .map_err(fail)?
        .into_typed()
        .map_err(fail)?
        .into_decluttered()
        .map_err(fail)?;
    let mut values = SymbolValues::default();
    for (name, v) in dims {
        values = values.with(&model.symbols.sym(name), *v);
    }
    let mut total: u64 = 0;
    for id in model.eval_order().map_err(fail)? {
        let node = model
            .nodes()
            .get(id)
            .ok_or_else(|| Error::Invalid(format!("cost model: no node {id} in the graph")))?;
        let inputs = model.node_input_facts(id).map_err(fail)?;
        for (cost, count) in node.op.cost(&inputs).map_err(fail)? {
            if let Cost::FMA(_) = cost {
                let n = count.eval_to_i64(&values).map_err(fail)?;
                total += n.max(0) as u64;
            }
        }
    }
    Ok(total)
}

fn flops(config: &Config, graph: impl Fn(GraphId) -> Result<Vec<u8>>) -> Result<Flops> {
    let n = config.geometry().num_patches as i64;
    let (prompt, ctx) = (FLOPS_PROMPT_LEN as i64, FLOPS_CONTEXT_LEN as i64);
    let token = graph_macs(&graph(GraphId::TextEmbed)?, &[("S", 1)])?
        + graph_macs(&graph(GraphId::Backbone)?, &[("S", 1), ("P", ctx)])?
        + graph_macs(&graph(GraphId::LmHead)?, &[("S", 1)])?;
    let step = graph_macs(&graph(GraphId::PatchIn)?, &[("B", 1)])?
        + graph_macs(&graph(GraphId::Backbone)?, &[("S", n), ("P", prompt)])?
        + graph_macs(&graph(GraphId::PatchOut)?, &[("B", 1)])?;
    let decode = graph_macs(&graph(GraphId::VaeDecoder)?, &[("B", 1)])?;
    let steps = config.diffusion.steps;
    Ok(Flops {
        per_text_token: 2 * token,
        per_image_step: 2 * step,
        vae_decode: 2 * decode,
        per_image: 2 * (steps as u64 * step + decode),
        steps,
        prompt_len: FLOPS_PROMPT_LEN,
        context_len: FLOPS_CONTEXT_LEN,
    })
}

fn human(n: u64) -> String {
    let f = n as f64;
    if f >= 1e9 {
        format!("{:.2} G", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.2} M", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.1} k", f / 1e3)
    } else {
        format!("{n} ")
    }
}

fn shape_of(t: &TensorInfo) -> String {
    format!("{} {:?} [{}]", t.name, t.dtype, t.shape.join(", ")).to_lowercase()
}

impl Report {
    /// Human-readable report.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let g = self.config.geometry();
        let _ = writeln!(s, "{} `{}` at {}", self.kind, self.name, self.path);
        let _ = writeln!(
            s,
            "image {}x{}x{} → latent {}x{}x{}, patch {} ({:?}) → {} patches; backbone dim {}, {} layers, {} heads x {}",
            g.image_size, g.image_size, g.image_channels, g.latent_size, g.latent_size,
            g.latent_channels, g.patch_size, self.config.patch.kind, g.num_patches, g.dim,
            g.n_layers, g.n_heads, g.head_dim
        );
        let _ = writeln!(
            s,
            "\nparameters ({} in all):",
            human(self.total_parameters as u64)
        );
        for (part, n) in &self.parameters {
            let _ = writeln!(s, "  {part:<10} {:>10}", human(*n as u64));
        }
        let _ = writeln!(s, "\nbytes per precision:");
        for (p, b) in &self.bytes {
            let _ = writeln!(s, "  {p:<6} {:>10}B", human(*b));
        }
        for graph in &self.graphs {
            let _ = writeln!(s, "\ngraph {}", graph.name);
            for t in &graph.inputs {
                let _ = writeln!(s, "  in  {}", shape_of(t));
            }
            for t in &graph.outputs {
                let _ = writeln!(s, "  out {}", shape_of(t));
            }
            for f in &graph.files {
                let ops: Vec<String> = f.ops.iter().map(|(op, n)| format!("{op}×{n}")).collect();
                let _ = writeln!(
                    s,
                    "  {:<5} {} ({}B, {} integer ops): {}",
                    f.precision.name(),
                    f.path,
                    human(f.bytes),
                    f.integer_ops,
                    ops.join(" ")
                );
                if let Some(k) = &f.tract {
                    let _ = writeln!(
                        s,
                        "        tract plan: {} integer / {} float matmuls on {}",
                        k.integer_matmuls,
                        k.float_matmuls,
                        k.kernels.join(", ")
                    );
                }
            }
        }
        let fl = &self.flops;
        let _ = writeln!(s, "\nFLOPs (tract cost model on the FP32 graphs):");
        let _ = writeln!(
            s,
            "  per text token     {:>10}  (context {})",
            human(fl.per_text_token),
            fl.context_len
        );
        let _ = writeln!(
            s,
            "  per diffusion step {:>10}  (after a {}-token prompt)",
            human(fl.per_image_step),
            fl.prompt_len
        );
        let _ = writeln!(s, "  VAE decode         {:>10}", human(fl.vae_decode));
        let _ = writeln!(
            s,
            "  per image          {:>10}  ({} steps)",
            human(fl.per_image),
            fl.steps
        );
        s
    }
}
