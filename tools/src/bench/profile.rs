//! `transfusion bench --profile`: where each graph's time goes, node by node.
//!
//! Every graph of a bundle is loaded the way the SDK loads it (batch bound to 1, the model's
//! thread count) and run on inputs of the sizes the SDK feeds it — the 16-position diffusion
//! step against a cached prompt, one decoded token, the prompt prefill, one patch or VAE call —
//! with every node of tract's optimised plan timed. The report sums the time per operator kind
//! (`OptMatMul`, `Softmax`, ...) and lists the slowest nodes, so each speed change is chosen and
//! checked on data (`docs/performance.md`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::eval;
use tract_onnx::tract_core::plan::{SimplePlan, SimpleState};
use transfusion_sdk::engine::float_tensor;
use transfusion_sdk::engine::{eval_node, Graph, Rewrites};
use transfusion_sdk::manifest::{FloatDtype, GraphEntry, IoDtype, Manifest, Precision};

use crate::error::{Error, Result};

/// What to profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileOptions {
    pub precision: Precision,
    pub threads: usize,
    /// Timed runs per case (after `warmup` untimed ones).
    pub runs: usize,
    pub warmup: usize,
    /// Prompt tokens before BOI (the prefix is BOS + prompt + BOI).
    pub prompt_tokens: usize,
    /// Slowest nodes listed per case.
    pub top: usize,
    /// Plan at batch 1 as the SDK does (`false`: keep the file's symbolic batch, to measure
    /// what the specialisation buys).
    pub batch_1: bool,
}

impl Default for ProfileOptions {
    fn default() -> Self {
        ProfileOptions {
            precision: Precision::Fp32,
            threads: 1,
            runs: 20,
            warmup: 2,
            prompt_tokens: 32,
            top: 10,
            batch_1: true,
        }
    }
}

/// Time of one operator kind in one case, summed over its nodes (per run).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpTime {
    pub op: String,
    pub nodes: usize,
    pub ms: f64,
    /// Share of the case's node time.
    pub share: f64,
}

/// One node's time (per run).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeTime {
    pub node: String,
    pub op: String,
    pub ms: f64,
    /// What tract says of the node (a matrix product's kernel and geometry) and its output
    /// fact: enough to tell which product or convolution a slow node is.
    pub detail: String,
}

/// The profile of one graph on one input size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseProfile {
    pub graph: String,
    /// `step` (S = N against the prefix), `decode`, `prefill`, or `call`.
    pub case: String,
    pub precision: String,
    /// The symbol values the inputs were made with.
    pub sizes: BTreeMap<String, usize>,
    pub plan_nodes: usize,
    /// Median wall time of one whole run.
    pub run_ms_p50: f64,
    /// Sum of the node times of one run (mean over runs).
    pub node_ms: f64,
    pub by_op: Vec<OpTime>,
    pub top: Vec<NodeTime>,
}

/// The cases profiled for `graph`: (case, symbol values).
fn cases(graph: &str, manifest: &Manifest, prompt: usize) -> Vec<(&'static str, Sizes)> {
    let n = manifest.geometry.num_patches;
    let prefix = prompt + 2;
    let sizes = |s: usize, p: usize| Sizes::from([("B", 1), ("S", s), ("P", p)]);
    match graph {
        "backbone" => vec![
            ("step", sizes(n, prefix)),
            ("decode", sizes(1, prefix + n + 1)),
            ("prefill", sizes(prefix, 0)),
        ],
        "text_embed" => vec![("prefill", sizes(prefix, 0))],
        "lm_head" => vec![("decode", sizes(1, 0))],
        _ => vec![("call", sizes(1, 0))],
    }
}

type Sizes = BTreeMap<&'static str, usize>;

/// A dimension of the manifest (`"16"`, `"B"`, `"P+S"`) at the case's symbol values.
fn dim(text: &str, sizes: &Sizes, what: &str) -> Result<usize> {
    text.split('+')
        .map(|term| {
            let term = term.trim();
            term.parse::<usize>()
                .ok()
                .or_else(|| sizes.get(term).copied())
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "{what}: dimension `{text}` has a term `{term}` that is neither a number \
                         nor one of {:?}",
                        sizes.keys().collect::<Vec<_>>()
                    ))
                })
        })
        .sum()
}

/// Deterministic inputs of `entry` at `sizes`: token ids in the vocabulary, positions after
/// the prefix, an all-attend mask, timestep 500, and smooth pseudo-random floats elsewhere.
fn inputs(
    graph: &str,
    entry: &GraphEntry,
    sizes: &Sizes,
    float: FloatDtype,
    vocab: usize,
) -> Result<TVec<TValue>> {
    let p = sizes.get("P").copied().unwrap_or(0);
    let mut out = TVec::new();
    for (k, info) in entry.inputs.iter().enumerate() {
        let what = format!("{graph} input `{}`", info.name);
        let shape = info
            .shape
            .iter()
            .map(|d| dim(d, sizes, &what))
            .collect::<Result<Vec<_>>>()?;
        let len: usize = shape.iter().product();
        let tensor = match (info.dtype, info.name.as_str()) {
            (IoDtype::Int64, "positions") => {
                let v: Vec<i64> = (0..len).map(|i| (p + i) as i64).collect();
                tensor_i64(&shape, v, &what)?
            }
            (IoDtype::Int64, _) => {
                let v: Vec<i64> = (0..len)
                    .map(|i| (6 + i % (vocab.max(7) - 6)) as i64)
                    .collect();
                tensor_i64(&shape, v, &what)?
            }
            (IoDtype::Float, "attention_mask") => {
                float_tensor(&shape, &vec![0.0; len], float, graph)?
            }
            (IoDtype::Float, "timestep") => float_tensor(&shape, &vec![500.0; len], float, graph)?,
            (IoDtype::Float, _) => {
                let v: Vec<f32> = (0..len)
                    .map(|i| ((i * 7919 + k * 104_729) % 2003) as f32 / 1001.5 - 1.0)
                    .collect();
                float_tensor(&shape, &v, float, graph)?
            }
        };
        out.push(tensor.into());
    }
    Ok(out)
}

fn tensor_i64(shape: &[usize], values: Vec<i64>, what: &str) -> Result<Tensor> {
    Tensor::from_shape(shape, &values).map_err(|e| Error::Invalid(format!("{what}: {e}")))
}

/// Profiles every graph of the bundle in `dir` at `options.precision`.
pub fn profile(dir: &Path, options: &ProfileOptions) -> Result<Vec<CaseProfile>> {
    if options.runs == 0 {
        return Err(Error::Invalid(
            "bench --profile: --runs must be at least 1".into(),
        ));
    }
    let manifest = Manifest::load(dir)?;
    let mut report = Vec::new();
    for (name, entry) in &manifest.graphs {
        let file = entry.files.get(&options.precision).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: graph `{name}` has no {} file",
                dir.display(),
                options.precision
            ))
        })?;
        let path = Manifest::bundle_file(dir, &file.path)?;
        let cpu = tract_onnx::tract_core::runtime::DefaultRuntime;
        let bind: &[(&str, i64)] = if options.batch_1 { &[("B", 1)] } else { &[] };
        let graph = Graph::load_specialized(name, &path, &cpu, bind)?.with_threads(options.threads);
        let model = graph.model().ok_or_else(|| {
            Error::Invalid(format!("{name}: the runtime exposes no plan to profile"))
        })?;
        let plan = SimplePlan::new(model.clone()).map_err(|e| tract_error(name, e))?;
        for (case, sizes) in cases(name, &manifest, options.prompt_tokens) {
            let values = inputs(
                name,
                entry,
                &sizes,
                file.float,
                manifest.geometry.vocab_size,
            )?;
            let mut state = SimpleState::new(&plan).map_err(|e| tract_error(name, e))?;
            // The SDK's own runs clear the vector state after each node unless
            // `TRANSFUSION_FUSED` leaves that out; the profile runs the same way.
            let sdk_ops = Rewrites::from_env().vector_state;
            let mut per_node = vec![Duration::ZERO; model.nodes().len()];
            let mut walls = Vec::with_capacity(options.runs);
            for run in 0..options.warmup + options.runs {
                let timed = run >= options.warmup;
                let start = Instant::now();
                state
                    .run_plan_with_eval(values.clone(), |ctx, op_state, node, input| {
                        let t = Instant::now();
                        let r = if sdk_ops {
                            eval_node(ctx, op_state, node, input)
                        } else {
                            eval(ctx, op_state, node, input)
                        };
                        if timed {
                            if let Some(slot) = per_node.get_mut(node.id) {
                                *slot += t.elapsed();
                            }
                        }
                        r
                    })
                    .map_err(|e| tract_error(name, e))?;
                if timed {
                    walls.push(start.elapsed().as_secs_f64() * 1e3);
                }
            }
            report.push(summarise(
                name, case, options, &sizes, model, &per_node, &mut walls,
            ));
        }
    }
    Ok(report)
}

fn tract_error(graph: &str, e: TractError) -> Error {
    Error::Invalid(format!("profiling `{graph}`: {e:#}"))
}

fn summarise(
    graph: &str,
    case: &str,
    options: &ProfileOptions,
    sizes: &Sizes,
    model: &TypedModel,
    per_node: &[Duration],
    walls: &mut [f64],
) -> CaseProfile {
    let runs = options.runs as f64;
    let per_run = |d: Duration| d.as_secs_f64() * 1e3 / runs;
    let node_ms: f64 = per_node.iter().map(|&d| per_run(d)).sum();
    let mut by_op: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    let mut nodes = Vec::new();
    for (node, &d) in model.nodes().iter().zip(per_node) {
        let op = node.op.name().to_string();
        let ms = per_run(d);
        let slot = by_op.entry(op.clone()).or_default();
        slot.0 += 1;
        slot.1 += ms;
        let mut detail = node.op.info().unwrap_or_default();
        if let Some(output) = node.outputs.first() {
            detail.push(format!("-> {:?}", output.fact));
        }
        nodes.push(NodeTime {
            node: node.name.clone(),
            op,
            ms,
            detail: detail.join("; "),
        });
    }
    let mut by_op: Vec<OpTime> = by_op
        .into_iter()
        .map(|(op, (n, ms))| OpTime {
            op,
            nodes: n,
            ms,
            share: if node_ms > 0.0 { ms / node_ms } else { 0.0 },
        })
        .collect();
    by_op.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    nodes.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    nodes.truncate(options.top);
    walls.sort_by(f64::total_cmp);
    CaseProfile {
        graph: graph.to_string(),
        case: case.to_string(),
        precision: options.precision.to_string(),
        sizes: sizes.iter().map(|(k, &v)| (k.to_string(), v)).collect(),
        plan_nodes: model.nodes().len(),
        run_ms_p50: walls.get(walls.len() / 2).copied().unwrap_or(0.0),
        node_ms,
        by_op,
        top: nodes,
    }
}

/// The profile as text: one block per case, operator kinds by time, then the top nodes.
pub fn to_text(report: &[CaseProfile]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for c in report {
        let sizes: Vec<String> = c.sizes.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            s,
            "{} {} {} ({}): {:.3} ms per run (p50), {:.3} ms in {} nodes",
            c.graph,
            c.case,
            c.precision,
            sizes.join(" "),
            c.run_ms_p50,
            c.node_ms,
            c.plan_nodes
        );
        for op in &c.by_op {
            if op.ms < 0.001 {
                continue;
            }
            let _ = writeln!(
                s,
                "  {:<28} {:>4} nodes {:>9.3} ms {:>5.1} %",
                op.op,
                op.nodes,
                op.ms,
                op.share * 100.0
            );
        }
        let _ = writeln!(s, "  slowest nodes:");
        for n in &c.top {
            let _ = writeln!(
                s,
                "    {:>9.3} ms  {:<20} {}  [{}]",
                n.ms, n.op, n.node, n.detail
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dimensions_resolve_sums_of_symbols_and_numbers() {
        let sizes = Sizes::from([("B", 1), ("S", 16), ("P", 34)]);
        assert_eq!(dim("P+S", &sizes, "x").unwrap(), 50);
        assert_eq!(dim("B", &sizes, "x").unwrap(), 1);
        assert_eq!(dim("256", &sizes, "x").unwrap(), 256);
        let message = dim("Q", &sizes, "backbone input `x`")
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("backbone input `x`") && message.contains('Q'),
            "{message}"
        );
    }
}
