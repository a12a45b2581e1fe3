//! The ONNX side of [`super::IntegerLinears`]: finds the converter's INT8 linear layers in a
//! decoded graph and writes each group of them that reads one activation as one node, before
//! tract reads the graph.
//!
//! An INT8 linear layer of the bundle is five standard ONNX nodes:
//!
//! ```text
//! x ─ DynamicQuantizeLinear ─┬ q ─┐
//!                            ├ z ─┴ MatMulInteger(q, W, z, W₀) ─ Cast(float) ─┐
//!                            └ s ─ Mul(s, w_scale) ─────────────────────────── Mul ─ y
//! ```
//!
//! tract types, declutters and optimises every one of them (the INT8 backbone has 685 nodes
//! against 461 for FP32, and took about twice as long to declutter: docs/performance.md), and
//! its products pack `x`'s rows once per layer even where Q, K and V (or gate and up) read the
//! same `x`. The group becomes one node of the SDK's operator set,
//! `TransfusionIntegerLinears`, with inputs
//! `x, W₁, W₀₁, w_scale₁, W₂, …` and outputs `y₁, y₂, …` (a zero point of 0 added as an
//! initializer where `MatMulInteger` has none); the file itself is untouched.

use tract_onnx::pb::{GraphProto, NodeProto, TensorProto};

use super::onnx_graph::{is, operands, replace, Uses, DOMAIN};

/// The operator type of the grouped node (in [`DOMAIN`]): a name no ONNX operator has
/// (tract-onnx finds a node's parser by its type alone, whatever its domain).
pub const OP_TYPE: &str = "TransfusionIntegerLinears";

/// ONNX `TensorProto.DataType` values the matcher checks (`FLOAT` also the `to` of the `Cast`
/// after `MatMulInteger`).
const FLOAT: i32 = 1;
const UINT8: i32 = 2;
const INT8: i32 = 3;
const INT32: i32 = 6;
/// The name of the zero point the grouping adds for layers written without one.
const ZERO: &str = "ai.transfusion.sdk.weight_zero";

/// One matched layer: the names it reads and writes, and its five nodes.
struct Layer {
    x: String,
    weights: String,
    /// The weights' zero point; `None` where `MatMulInteger` has none (0).
    weight_zero: Option<String>,
    weight_scale: String,
    y: String,
    nodes: [usize; 5],
}

/// The layer whose `DynamicQuantizeLinear` is node `dq`, if the five nodes are there and
/// nothing else reads their intermediate values.
fn layer(uses: &Uses, dq: usize) -> Option<Layer> {
    let node = uses.graph.node.get(dq)?;
    let ([x], [q, s, z]) = (node.input.as_slice(), node.output.as_slice()) else {
        return None;
    };
    if !is(node, "DynamicQuantizeLinear") {
        return None;
    }
    let (mm, matmul) = uses.only_reader(q)?;
    let (w, w0) = match matmul.input.as_slice() {
        [a, w, a0] if a == q && a0 == z => (w, None),
        [a, w, a0, w0] if a == q && a0 == z => (w, Some(w0.clone())),
        _ => return None,
    };
    // What the operator takes: 8-bit weights `[k, n]`, one zero point, f32 scales of one value
    // or one per column (checked below) — anything else stays with tract.
    let (w_type, w_dims) = uses.initializer_type(w)?;
    let &[_, n] = w_dims else {
        return None;
    };
    let zero_ok = w0.as_deref().is_none_or(|w0| {
        uses.initializer_type(w0).is_some_and(|(t, dims)| {
            matches!(t, INT8 | UINT8 | INT32) && dims.iter().product::<i64>() == 1
        })
    });
    if !is(matmul, "MatMulInteger") || !matches!(w_type, INT8 | UINT8) || !zero_ok {
        return None;
    }
    if uses.only_reader(z)?.0 != mm || matmul.output.len() != 1 {
        return None;
    }
    let (cast, to_float) = uses.only_reader(matmul.output.first()?)?;
    let to = to_float.attribute.iter().find(|a| a.name == "to")?.i;
    if !is(to_float, "Cast") || to != i64::from(FLOAT) {
        return None;
    }
    let (mul_scales, scales) = uses.only_reader(s)?;
    let (_, w_scale) = operands(scales, |v| v == s)?;
    let scale_ok = uses
        .initializer_type(w_scale)
        .is_some_and(|(t, dims)| t == FLOAT && (matches!(dims, [] | [1]) || dims == [n]));
    if !is(scales, "Mul") || !scale_ok {
        return None;
    }
    let (rescale, out) = uses.only_reader(scales.output.first()?)?;
    let cast_out = to_float.output.first()?;
    let scale_out = scales.output.first()?;
    let reads = operands(out, |v| v == cast_out).is_some_and(|(_, b)| b == scale_out);
    match out.output.as_slice() {
        [y] if is(out, "Mul") && reads && uses.read_only_by(cast_out, rescale) => Some(Layer {
            x: x.clone(),
            weights: w.clone(),
            weight_zero: w0,
            weight_scale: w_scale.clone(),
            y: y.clone(),
            nodes: [dq, mm, cast, mul_scales, rescale],
        }),
        _ => None,
    }
}

/// Replaces, in `graph`, every INT8 linear layer of the form above by its group's
/// `TransfusionIntegerLinears` node (layers reading the same `x` in one node, at the place of the
/// first);
/// returns how many layers were grouped.
pub fn group_integer_linears(graph: &mut GraphProto) -> usize {
    let layers: Vec<Layer> = {
        let uses = Uses::new(graph);
        (0..graph.node.len())
            .filter_map(|i| layer(&uses, i))
            .collect()
    };
    if layers.is_empty() {
        return 0;
    }
    // Groups by activation, in the order of their first layer.
    let mut groups: Vec<(String, Vec<&Layer>)> = Vec::new();
    for layer in &layers {
        match groups.iter_mut().find(|(x, _)| *x == layer.x) {
            Some((_, group)) => group.push(layer),
            None => groups.push((layer.x.clone(), vec![layer])),
        }
    }
    // A zero point of 0 for the layers written without one (bundles converted before the
    // converter wrote it), so that every layer has its three inputs.
    if layers.iter().any(|l| l.weight_zero.is_none()) {
        graph.initializer.push(TensorProto {
            name: ZERO.to_string(),
            data_type: INT8,
            raw_data: vec![0],
            ..TensorProto::default()
        });
    }
    let mut replaced = Vec::new();
    let sizes: Vec<usize> = groups.iter().map(|(_, group)| group.len()).collect();
    for (x, group) in &groups {
        let first = group.iter().map(|l| l.nodes[0]).min().unwrap_or(0);
        let name = graph
            .node
            .get(first)
            .map(|n| format!("{}.integer_linears", n.name))
            .unwrap_or_default();
        let mut input = vec![x.clone()];
        for layer in group {
            input.extend([
                layer.weights.clone(),
                layer
                    .weight_zero
                    .clone()
                    .unwrap_or_else(|| ZERO.to_string()),
                layer.weight_scale.clone(),
            ]);
        }
        let nodes = group.iter().flat_map(|l| l.nodes).collect();
        let node = NodeProto {
            input,
            output: group.iter().map(|l| l.y.clone()).collect(),
            name,
            op_type: OP_TYPE.to_string(),
            domain: DOMAIN.to_string(),
            ..NodeProto::default()
        };
        replaced.push((nodes, node));
    }
    let done = replace(graph, replaced);
    sizes
        .iter()
        .zip(done)
        .filter(|(_, done)| *done)
        .map(|(n, _)| n)
        .sum()
}
