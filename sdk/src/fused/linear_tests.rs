//! The grouping of INT8 linear layers against tract running the five ONNX nodes per layer.

use tract_onnx::pb::{self, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};
use tract_onnx::prelude::*;

use super::super::linear_onnx::{group_integer_linears, DOMAIN, OP_TYPE};
use super::super::test_util::{f32s, Rng};
use super::integer_linears;

const FLOAT: i32 = 1;
const INT8: i32 = 3;

/// A graph under construction: nodes, initializers and the interface.
struct Graph {
    graph: GraphProto,
    fresh: usize,
}

impl Graph {
    fn new() -> Self {
        Graph {
            graph: GraphProto::default(),
            fresh: 0,
        }
    }

    fn name(&mut self, hint: &str) -> String {
        self.fresh += 1;
        format!("{hint}#{}", self.fresh)
    }

    fn node(&mut self, op: &str, inputs: &[&str], outputs: usize) -> Vec<String> {
        let out: Vec<String> = (0..outputs).map(|_| self.name(op)).collect();
        let node = NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: out.clone(),
            name: self.name(&format!("{op}_node")),
            op_type: op.to_string(),
            attribute: if op == "Cast" {
                vec![pb::AttributeProto {
                    name: "to".into(),
                    r#type: pb::attribute_proto::AttributeType::Int as i32,
                    i: i64::from(FLOAT),
                    ..Default::default()
                }]
            } else {
                vec![]
            },
            ..NodeProto::default()
        };
        self.graph.node.push(node);
        out
    }

    fn constant(&mut self, hint: &str, data_type: i32, dims: &[usize], raw: Vec<u8>) -> String {
        let name = self.name(hint);
        self.graph.initializer.push(TensorProto {
            name: name.clone(),
            data_type,
            dims: dims.iter().map(|&d| d as i64).collect(),
            raw_data: raw,
            ..TensorProto::default()
        });
        name
    }

    /// One INT8 layer on `x` as the converter writes it; `zero` writes the weights' zero point.
    fn layer(&mut self, rng: &mut Rng, x: &str, (k, n): (usize, usize), zero: bool) -> String {
        let w: Vec<u8> = (0..k * n)
            .map(|_| (rng.below(255) as i16 - 127) as i8 as u8)
            .collect();
        let w = self.constant("w", INT8, &[k, n], w);
        let scales: Vec<u8> = (0..n)
            .flat_map(|_| (0.001 + 0.01 * rng.unit()).to_le_bytes())
            .collect();
        let scales = self.constant("w_scale", FLOAT, &[n], scales);
        let dq = self.node("DynamicQuantizeLinear", &[x], 3);
        let mut inputs = vec![dq[0].as_str(), w.as_str(), dq[2].as_str()];
        let w0 = self.constant("w_zero", INT8, &[], vec![0]);
        if zero {
            inputs.push(&w0);
        }
        let acc = self.node("MatMulInteger", &inputs, 1);
        let accf = self.node("Cast", &[&acc[0]], 1);
        let scale = self.node("Mul", &[&dq[1], &scales], 1);
        self.node("Mul", &[&accf[0], &scale[0]], 1).remove(0)
    }

    fn value(name: &str, dims: &[pb::tensor_shape_proto::Dimension]) -> ValueInfoProto {
        ValueInfoProto {
            name: name.to_string(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: FLOAT,
                    shape: Some(pb::TensorShapeProto { dim: dims.to_vec() }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn model(mut self, input: &str, k: usize, outputs: &[String]) -> ModelProto {
        use pb::tensor_shape_proto::{dimension::Value, Dimension};
        let dim = |v: Value| Dimension {
            value: Some(v),
            ..Default::default()
        };
        let x = [
            dim(Value::DimValue(1)),
            dim(Value::DimParam("S".into())),
            dim(Value::DimValue(k as i64)),
        ];
        self.graph.input.push(Self::value(input, &x));
        for o in outputs {
            self.graph.output.push(ValueInfoProto {
                name: o.clone(),
                ..Default::default()
            });
        }
        ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(self.graph),
            ..ModelProto::default()
        }
    }
}

/// Q, K and V on `x` (one without the weights' zero point, one of odd width), and one layer on
/// `x + x`: two groups.
fn model(rng: &mut Rng, k: usize) -> (ModelProto, usize) {
    let mut g = Graph::new();
    let q = g.layer(rng, "x", (k, 19), true);
    let kk = g.layer(rng, "x", (k, 16), false);
    let v = g.layer(rng, "x", (k, 1), true);
    let doubled = g.node("Add", &["x", "x"], 1).remove(0);
    let o = g.layer(rng, &doubled, (k, 33), true);
    (g.model("x", k, &[q, kk, v, o]), 4)
}

/// The outputs of `proto` run by tract, with the grouping or without.
fn run(proto: &ModelProto, grouped: bool, x: &Tensor) -> Vec<Vec<f32>> {
    let mut proto = proto.clone();
    let mut onnx = tract_onnx::onnx();
    if grouped {
        let graph = proto.graph.as_mut().unwrap();
        assert_eq!(group_integer_linears(graph), 4);
        assert_eq!(
            graph.node.iter().filter(|n| n.op_type == OP_TYPE).count(),
            2
        );
        onnx.op_register.insert(OP_TYPE, integer_linears);
    }
    let model = onnx.model_for_proto_model(&proto).unwrap();
    let plan = model.into_optimized().unwrap().into_runnable().unwrap();
    let out = plan.run(tvec![x.clone().into_tvalue()]).unwrap();
    out.iter().map(|t| f32s(t)).collect()
}

#[test]
fn grouped_layers_equal_the_onnx_nodes_bit_for_bit() {
    let mut rng = Rng(0x5eed_1234);
    for k in [37usize, 64, 3] {
        let (proto, _) = model(&mut rng, k);
        for s in [1usize, 5, 17] {
            let x = rng.tensor(&[1, s, k], |r| (r.unit() - 0.3) * 4.0);
            let (plain, grouped) = (run(&proto, false, &x), run(&proto, true, &x));
            assert_eq!(plain.len(), 4);
            for (i, (a, b)) in plain.iter().zip(&grouped).enumerate() {
                let (a, b): (Vec<u32>, Vec<u32>) = (
                    a.iter().map(|v| v.to_bits()).collect(),
                    b.iter().map(|v| v.to_bits()).collect(),
                );
                assert_eq!(a, b, "k {k}, s {s}, output {i}");
            }
        }
    }
}

#[test]
fn grouping_rewrites_only_whole_layers() {
    let mut rng = Rng(7);
    let (proto, layers) = model(&mut rng, 8);
    let mut graph = proto.graph.clone().unwrap();
    let before = graph.node.len();
    assert_eq!(group_integer_linears(&mut graph), layers);
    // Five nodes per layer become one node per group; the `Add` stays.
    assert_eq!(graph.node.len(), before - 5 * layers + 2);
    let group = graph.node.iter().find(|n| n.op_type == OP_TYPE).unwrap();
    assert_eq!(group.domain, DOMAIN);
    assert_eq!((group.input.len(), group.output.len()), (10, 3));

    // A layer whose quantization scale is also read elsewhere stays as it is.
    let mut graph = proto.graph.unwrap();
    let scale = graph.node[0].output[1].clone();
    graph.output.push(ValueInfoProto {
        name: scale,
        ..Default::default()
    });
    assert_eq!(group_integer_linears(&mut graph), layers - 1);
    assert_eq!(
        graph
            .node
            .iter()
            .filter(|n| n.op_type == "MatMulInteger")
            .count(),
        1
    );
}
