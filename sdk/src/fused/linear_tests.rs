//! The grouping of INT8 linear layers against tract running the five ONNX nodes per layer.

use tract_onnx::pb::{ModelProto, ValueInfoProto};
use tract_onnx::prelude::*;

use super::super::linear_onnx::{group_integer_linears, OP_TYPE};
use super::super::onnx_graph::DOMAIN;
use super::super::test_util::{bits, run_onnx, OnnxGraph, Rng, FLOAT, INT8};
use super::integer_linears;

/// One INT8 layer on `x` as the converter writes it; `zero` writes the weights' zero point.
fn layer(g: &mut OnnxGraph, rng: &mut Rng, x: &str, (k, n): (usize, usize), zero: bool) -> String {
    let w: Vec<u8> = (0..k * n)
        .map(|_| (rng.below(255) as i16 - 127) as i8 as u8)
        .collect();
    let w = g.constant("w", INT8, &[k, n], w);
    let scales: Vec<u8> = (0..n)
        .flat_map(|_| (0.001 + 0.01 * rng.unit()).to_le_bytes())
        .collect();
    let scales = g.constant("w_scale", FLOAT, &[n], scales);
    let dq = g.node("DynamicQuantizeLinear", &[x], 3, vec![]);
    let mut inputs = vec![dq[0].as_str(), w.as_str(), dq[2].as_str()];
    let w0 = g.constant("w_zero", INT8, &[], vec![0]);
    if zero {
        inputs.push(&w0);
    }
    let acc = g.node("MatMulInteger", &inputs, 1, vec![]);
    let to_float = OnnxGraph::int("to", i64::from(FLOAT));
    let accf = g.node("Cast", &[&acc[0]], 1, vec![to_float]);
    let scale = g.node("Mul", &[&dq[1], &scales], 1, vec![]);
    g.node("Mul", &[&accf[0], &scale[0]], 1, vec![]).remove(0)
}

/// Q, K and V on `x` (one without the weights' zero point, one of odd width), and one layer on
/// `x + x`: two groups.
fn model(rng: &mut Rng, k: usize) -> (ModelProto, usize) {
    let mut g = OnnxGraph::default();
    let q = layer(&mut g, rng, "x", (k, 19), true);
    let kk = layer(&mut g, rng, "x", (k, 16), false);
    let v = layer(&mut g, rng, "x", (k, 1), true);
    let doubled = g.node("Add", &["x", "x"], 1, vec![]).remove(0);
    let o = layer(&mut g, rng, &doubled, (k, 33), true);
    g.input("x", &["1", "S", &k.to_string()]);
    (g.model(&[q, kk, v, o]), 4)
}

/// The outputs of `proto` run by tract, with the grouping or without.
fn run(proto: &ModelProto, grouped: bool, x: &Tensor) -> Vec<Vec<f32>> {
    run_onnx(proto, &[x], |proto, onnx| {
        if grouped {
            let graph = proto.graph.as_mut().unwrap();
            assert_eq!(group_integer_linears(graph), 4);
            assert_eq!(
                graph.node.iter().filter(|n| n.op_type == OP_TYPE).count(),
                2
            );
            onnx.op_register.insert(OP_TYPE, integer_linears);
        }
    })
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
                assert_eq!(bits(a), bits(b), "k {k}, s {s}, output {i}");
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
