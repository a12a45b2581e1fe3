//! The fused RMSNorm against tract running the converter's six ONNX nodes.

use tract_onnx::pb::ModelProto;

use super::super::test_util::{run_onnx, OnnxGraph, Rng};
use super::{fuse_rms_norm, rms_norm, OP_TYPE};

/// `x / √(mean(x²) + ε) · w` over the last axis of `x [1, S, d]`, and `x + 1` (another reader
/// of `x`, as the residual is in the backbone).
fn model(rng: &mut Rng, d: usize) -> (ModelProto, usize) {
    let mut g = OnnxGraph::default();
    let w: Vec<f32> = (0..d).map(|_| 0.5 + rng.unit()).collect();
    let w = g.floats("w", &[d], &w);
    let eps = g.floats("eps", &[], &[1e-5]);
    let one = g.floats("one", &[], &[1.0]);
    let sq = g.node("Mul", &["x", "x"], 1, vec![]).remove(0);
    let attrs = vec![
        OnnxGraph::ints("axes", &[-1]),
        OnnxGraph::int("keepdims", 1),
    ];
    let ms = g.node("ReduceMean", &[&sq], 1, attrs).remove(0);
    let ms = g.node("Add", &[&ms, &eps], 1, vec![]).remove(0);
    let rms = g.node("Sqrt", &[&ms], 1, vec![]).remove(0);
    let y = g.node("Div", &["x", &rms], 1, vec![]).remove(0);
    let y = g.node("Mul", &[&y, &w], 1, vec![]).remove(0);
    let other = g.node("Add", &["x", &one], 1, vec![]).remove(0);
    g.input("x", &["1", "S", &d.to_string()]);
    (g.model(&[y, other]), 6)
}

#[test]
fn fused_rms_norm_agrees_with_the_onnx_nodes() {
    let mut rng = Rng(99);
    for (d, s) in [(256usize, 16usize), (7, 1), (33, 5), (1, 3)] {
        let (proto, nodes) = model(&mut rng, d);
        let x = rng.tensor(&[1, s, d], |r| r.unit() * 8.0 - 4.0);
        let plain = run_onnx(&proto, &[&x], |_, _| {});
        let fused = run_onnx(&proto, &[&x], |proto, onnx| {
            let graph = proto.graph.as_mut().unwrap();
            let before = graph.node.len();
            assert_eq!(fuse_rms_norm(graph), 1);
            assert_eq!(graph.node.len(), before - nodes + 1);
            onnx.op_register.insert(OP_TYPE, rms_norm);
        });
        assert_eq!(plain[1], fused[1], "the other reader of x is untouched");
        for (i, (a, b)) in plain[0].iter().zip(&fused[0]).enumerate() {
            // The sums run in another order, and tract's own fusion of these nodes scales by a
            // reciprocal: a few units in the last place.
            assert!(
                (a - b).abs() <= 2e-6 * a.abs().max(1.0),
                "d {d}, s {s}, [{i}]: {a} vs {b}"
            );
        }
    }
}

#[test]
fn a_norm_over_another_axis_stays_as_it_is() {
    let mut rng = Rng(5);
    let (proto, _) = model(&mut rng, 8);
    let mut graph = proto.graph.unwrap();
    let reduce = graph
        .node
        .iter_mut()
        .find(|n| n.op_type == "ReduceMean")
        .unwrap();
    reduce.attribute[0].ints = vec![1];
    assert_eq!(fuse_rms_norm(&mut graph), 0);
}
