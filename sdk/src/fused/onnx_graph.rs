//! What the SDK's rewrites of a decoded ONNX graph share: who reads each value, who writes it,
//! and the constants the patterns check. The rewrites ([`super::linear_onnx`],
//! [`super::rope`], [`super::rms_norm`], [`super::attention`]) replace groups of standard nodes the
//! converter writes by one node of the SDK's operator set ([`DOMAIN`]) before tract reads the
//! graph: tract then has fewer nodes to type, declutter and optimise at load, and fewer to run.

use std::collections::{HashMap, HashSet};

use tract_onnx::model::Onnx;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};

/// The domain of the SDK's nodes: an operator set of its own, never written to a file.
pub const DOMAIN: &str = "ai.transfusion.sdk";

/// ONNX `TensorProto.DataType.INT64`.
const INT64: i32 = 7;
/// ONNX `TensorProto.DataType.FLOAT`.
const FLOAT: i32 = 1;

/// Whether `node` is the standard ONNX operator `op`.
pub(super) fn is(node: &NodeProto, op: &str) -> bool {
    node.op_type == op && (node.domain.is_empty() || node.domain == "ai.onnx")
}

/// The graph's value names and who reads them.
pub(super) struct Uses<'g> {
    pub graph: &'g GraphProto,
    readers: HashMap<&'g str, Vec<usize>>,
    writers: HashMap<&'g str, usize>,
    outputs: HashSet<&'g str>,
    initializers: HashMap<&'g str, &'g TensorProto>,
}

impl<'g> Uses<'g> {
    pub fn new(graph: &'g GraphProto) -> Self {
        let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut writers: HashMap<&str, usize> = HashMap::new();
        for (i, node) in graph.node.iter().enumerate() {
            // An empty name is an optional input left out, not a value.
            for input in node.input.iter().filter(|i| !i.is_empty()) {
                readers.entry(input.as_str()).or_default().push(i);
            }
            for output in &node.output {
                writers.insert(output.as_str(), i);
            }
        }
        Uses {
            graph,
            readers,
            writers,
            outputs: graph.output.iter().map(|o| o.name.as_str()).collect(),
            initializers: graph
                .initializer
                .iter()
                .map(|t| (t.name.as_str(), t))
                .collect(),
        }
    }

    /// The one node reading `value`, if it has exactly one reader and is no graph output.
    pub fn only_reader(&self, value: &str) -> Option<(usize, &'g NodeProto)> {
        if self.outputs.contains(&value) {
            return None;
        }
        match self.readers.get(value).map(Vec::as_slice) {
            Some(&[i]) => Some((i, self.graph.node.get(i)?)),
            _ => None,
        }
    }

    /// Whether `reader` is the one node reading `value` (and `value` no graph output).
    pub fn read_only_by(&self, value: &str, reader: usize) -> bool {
        self.only_reader(value).map(|r| r.0) == Some(reader)
    }

    /// Whether removing `nodes` for `node` loses no value: each of their outputs is one of
    /// `node`'s, or read only by `nodes` and no graph output. Every matcher checks this on its
    /// own; this is the net under them.
    fn closed(&self, (nodes, node): &(Vec<usize>, NodeProto)) -> bool {
        nodes.iter().all(|&i| {
            let Some(removed) = self.graph.node.get(i) else {
                return false;
            };
            removed.output.iter().all(|value| {
                node.output.contains(value)
                    || (!self.outputs.contains(value.as_str())
                        && self
                            .readers
                            .get(value.as_str())
                            .is_none_or(|readers| readers.iter().all(|r| nodes.contains(r))))
            })
        })
    }

    /// The node writing `value`, if a node does.
    pub fn writer(&self, value: &str) -> Option<(usize, &'g NodeProto)> {
        let &i = self.writers.get(value)?;
        Some((i, self.graph.node.get(i)?))
    }

    /// The node writing `value` when it is the standard operator `op` with that one output and
    /// `reader` the one node reading it: a node a rewrite may remove.
    pub fn only_step(
        &self,
        value: &str,
        op: &str,
        reader: usize,
    ) -> Option<(usize, &'g NodeProto)> {
        let (i, node) = self.writer(value)?;
        let single = self.read_only_by(value, reader);
        (is(node, op) && node.output.len() == 1 && single).then_some((i, node))
    }

    fn initializer(&self, name: &str) -> Option<&'g TensorProto> {
        self.initializers.get(name).copied()
    }

    /// The element type (`TensorProto.DataType`) and dimensions of an initializer.
    pub fn initializer_type(&self, name: &str) -> Option<(i32, &'g [i64])> {
        self.initializer(name)
            .map(|t| (t.data_type, t.dims.as_slice()))
    }

    /// The values of a one-dimensional INT64 initializer (a well-formed one: its data as long
    /// as its dimensions say).
    pub fn int64s(&self, name: &str) -> Option<Vec<i64>> {
        let t = self.initializer(name).filter(|t| t.data_type == INT64)?;
        let &[len] = t.dims.as_slice() else {
            return None;
        };
        let values: Vec<i64> = if t.int64_data.is_empty() {
            let raw = t.raw_data.chunks_exact(8);
            if !raw.remainder().is_empty() {
                return None;
            }
            raw.filter_map(|b| Some(i64::from_le_bytes(b.try_into().ok()?)))
                .collect()
        } else {
            t.int64_data.clone()
        };
        (i64::try_from(values.len()).ok() == Some(len)).then_some(values)
    }

    /// The value of an f32 initializer of one value, of shape `[]` or `[1]`.
    pub fn f32_scalar(&self, name: &str) -> Option<f32> {
        let t = self.initializer(name).filter(|t| t.data_type == FLOAT)?;
        if !matches!(t.dims.as_slice(), [] | [1]) {
            return None;
        }
        match (t.float_data.as_slice(), t.raw_data.as_slice()) {
            ([v], _) => Some(*v),
            ([], raw) => Some(f32::from_le_bytes(raw.try_into().ok()?)),
            _ => None,
        }
    }

    /// The integer attribute `name` of `node`.
    pub fn int_attr(node: &NodeProto, name: &str) -> Option<i64> {
        node.attribute.iter().find(|a| a.name == name).map(|a| a.i)
    }

    /// The float attribute `name` of `node`.
    pub fn float_attr(node: &NodeProto, name: &str) -> Option<f32> {
        node.attribute.iter().find(|a| a.name == name).map(|a| a.f)
    }

    /// The integer-list attribute `name` of `node`.
    pub fn ints_attr<'n>(node: &'n NodeProto, name: &str) -> Option<&'n [i64]> {
        node.attribute
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.ints.as_slice())
    }
}

/// Replaces in `graph` every group of nodes `matched` finds from one of its nodes (by index),
/// with the node it gives; returns how many groups. A group that shares a node with one found
/// before it stays as it is.
pub fn fuse(
    graph: &mut GraphProto,
    matched: impl Fn(&Uses, usize) -> Option<(Vec<usize>, NodeProto)>,
) -> usize {
    let groups: Vec<(Vec<usize>, NodeProto)> = {
        let uses = Uses::new(graph);
        (0..graph.node.len())
            .filter_map(|i| matched(&uses, i))
            .collect()
    };
    replace(graph, groups).iter().filter(|&&done| done).count()
}

/// The two inputs of the two-input `node`, the one `first` accepts first (`None` where neither
/// does): the operands of a commutative node in the order a pattern names them.
pub fn operands(node: &NodeProto, first: impl Fn(&String) -> bool) -> Option<(&String, &String)> {
    match node.input.as_slice() {
        [a, b] if first(a) => Some((a, b)),
        [a, b] if first(b) => Some((b, a)),
        _ => None,
    }
}

/// An integer attribute of a node the rewrites write.
pub fn int_attribute(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..AttributeProto::default()
    }
}

/// A float attribute of a node the rewrites write.
pub fn float_attribute(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f,
        ..AttributeProto::default()
    }
}

/// Replaces matched groups of nodes of `graph`: `groups` gives, for each, its node indices and
/// the node that takes the place of the first of them. A group that would lose a value read
/// elsewhere ([`Uses::closed`]) or that shares a node with one before it stays as it is; the
/// result says, group by group, whether it was replaced.
pub fn replace(graph: &mut GraphProto, groups: Vec<(Vec<usize>, NodeProto)>) -> Vec<bool> {
    let mut replacement: HashMap<usize, NodeProto> = HashMap::new();
    let mut removed: HashSet<usize> = HashSet::new();
    let mut done = Vec::with_capacity(groups.len());
    {
        let uses = Uses::new(graph);
        for group in groups {
            let free = group.0.iter().all(|n| !removed.contains(n));
            let ok = free && uses.closed(&group);
            done.push(ok);
            if !ok {
                continue;
            }
            let (nodes, node) = group;
            if let Some(&first) = nodes.iter().min() {
                replacement.insert(first, node);
            }
            removed.extend(nodes);
        }
    }
    let nodes = std::mem::take(&mut graph.node);
    graph.node = nodes
        .into_iter()
        .enumerate()
        .filter_map(|(i, node)| match replacement.remove(&i) {
            Some(group) => Some(group),
            None => (!removed.contains(&i)).then_some(node),
        })
        .collect();
    done
}

/// Whether `graph` has a float32 input and no input of another floating-point type (the
/// rewrites whose operators compute in f32 leave graphs of other float types to tract).
pub fn float32_graph(graph: &GraphProto) -> bool {
    const FLOAT16: i32 = 10;
    const DOUBLE: i32 = 11;
    const BFLOAT16: i32 = 16;
    let elems: Vec<Option<i32>> = graph
        .input
        .iter()
        .map(|i| {
            i.r#type.as_ref().and_then(|t| match &t.value {
                Some(tract_onnx::pb::type_proto::Value::TensorType(t)) => Some(t.elem_type),
                _ => None,
            })
        })
        .collect();
    elems.contains(&Some(FLOAT))
        && !elems
            .iter()
            .any(|e| matches!(e, Some(FLOAT16 | DOUBLE | BFLOAT16)))
}

/// How many groups of nodes [`rewrite`] replaced, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rewritten {
    /// INT8 linear layers ([`super::linear_onnx`]).
    pub linears: usize,
    /// Rotary embeddings ([`super::rope`]).
    pub ropes: usize,
    /// RMSNorms ([`super::rms_norm`]).
    pub norms: usize,
    /// Attention cores ([`super::attention`]), after their rotary embeddings.
    pub attentions: usize,
}

/// Rewrites `proto` as `rewrites` allows for tract's CPU runtime, and registers with `onnx` the
/// parsers of the SDK's nodes it wrote. The INT8 layers are grouped where the SDK's INT8 kernel
/// replaces tract's ([`super::Rewrites::sdk_integer`]); the f32 rewrites only in graphs whose float
/// inputs are f32.
pub fn rewrite(proto: &mut ModelProto, onnx: &mut Onnx, rewrites: super::Rewrites) -> Rewritten {
    let Some(graph) = proto.graph.as_mut() else {
        return Rewritten::default();
    };
    let mut done = Rewritten::default();
    if rewrites.sdk_integer() {
        done.linears = super::linear_onnx::group_integer_linears(graph);
    }
    if float32_graph(graph) {
        if rewrites.rope {
            done.ropes = super::rope::fuse_rope(graph);
        }
        if rewrites.rms_norm {
            done.norms = super::rms_norm::fuse_rms_norm(graph);
        }
        if rewrites.attention {
            done.attentions = super::attention::fuse_attention(graph);
        }
    }
    let register = &mut onnx.op_register;
    if done.linears > 0 {
        register.insert(super::linear_onnx::OP_TYPE, super::linear::integer_linears);
    }
    if done.ropes > 0 {
        register.insert(super::rope::OP_TYPE, super::rope::rope);
    }
    if done.norms > 0 {
        register.insert(super::rms_norm::OP_TYPE, super::rms_norm::rms_norm);
    }
    if done.attentions > 0 {
        register.insert(super::attention::OP_TYPE, super::attention::attention);
    }
    done
}
