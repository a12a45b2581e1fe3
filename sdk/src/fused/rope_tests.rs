//! The fused rotary embedding against tract running the converter's seven ONNX nodes.

use tract_onnx::pb::ModelProto;

use super::super::test_util::{bits, run_onnx, OnnxGraph, Rng};
use super::{fuse_rope, rope, OP_TYPE};

/// `x·cos + rotate_half(x)·sin` on `x [1, H, S, 2h]`, as the converter writes it, for Q and for
/// K (both reading the same tables), and the tables also as outputs.
fn model(heads: usize, half: usize) -> (ModelProto, [String; 2]) {
    let mut g = OnnxGraph::default();
    let width = 2 * half as i64;
    let rope_of = |g: &mut OnnxGraph, x: &str| {
        let axes = g.int64s("axes", &[3]);
        let (s0, s1, e1) = (
            g.int64s("starts", &[0]),
            g.int64s("starts", &[half as i64]),
            g.int64s("ends", &[width]),
        );
        let x1 = g.node("Slice", &[x, &s0, &s1, &axes], 1, vec![]).remove(0);
        let x2 = g.node("Slice", &[x, &s1, &e1, &axes], 1, vec![]).remove(0);
        let neg = g.node("Neg", &[&x2], 1, vec![]).remove(0);
        let axis = OnnxGraph::int("axis", 3);
        let rot = g.node("Concat", &[&neg, &x1], 1, vec![axis]).remove(0);
        let a = g.node("Mul", &[x, "cos"], 1, vec![]).remove(0);
        let r = g.node("Mul", &[&rot, "sin"], 1, vec![]).remove(0);
        g.node("Add", &[&a, &r], 1, vec![]).remove(0)
    };
    let q = rope_of(&mut g, "q");
    let k = rope_of(&mut g, "k");
    for x in ["q", "k"] {
        g.input(x, &["1", &heads.to_string(), "S", &(2 * half).to_string()]);
    }
    for t in ["cos", "sin"] {
        g.input(t, &["S", &(2 * half).to_string()]);
    }
    (g.model(&[q.clone(), k.clone()]), [q, k])
}

#[test]
fn fused_rope_equals_the_onnx_nodes_bit_for_bit() {
    let mut rng = Rng(0xc0ffee);
    for (heads, half, s) in [
        (4usize, 32usize, 16usize),
        (3, 5, 1),
        (1, 1, 7),
        (2, 16, 34),
    ] {
        let (proto, _) = model(heads, half);
        let width = 2 * half;
        let q = rng.tensor(&[1, heads, s, width], |r| r.unit() * 6.0 - 3.0);
        let k = rng.tensor(&[1, heads, s, width], |r| r.unit() * 6.0 - 3.0);
        let cos = rng.tensor(&[s, width], |r| r.unit() * 2.0 - 1.0);
        let sin = rng.tensor(&[s, width], |r| r.unit() * 2.0 - 1.0);
        let inputs = [&q, &k, &cos, &sin];
        let plain = run_onnx(&proto, &inputs, |_, _| {});
        let fused = run_onnx(&proto, &inputs, |proto, onnx| {
            let graph = proto.graph.as_mut().unwrap();
            assert_eq!(fuse_rope(graph), 2);
            assert_eq!(graph.node.len(), 2, "only the two Rope nodes are left");
            onnx.op_register.insert(OP_TYPE, rope);
        });
        for (a, b) in plain.iter().zip(&fused) {
            assert_eq!(bits(a), bits(b), "heads {heads}, half {half}, s {s}");
        }
    }
}

#[test]
fn other_slices_stay_as_they_are() {
    // The second half cut short: not a rotation of halves.
    let (proto, _) = model(2, 4);
    let mut graph = proto.graph.unwrap();
    let ends = graph
        .initializer
        .iter_mut()
        .find(|t| t.name.starts_with("ends"))
        .unwrap();
    ends.raw_data = 7i64.to_le_bytes().to_vec();
    assert_eq!(fuse_rope(&mut graph), 1, "K's rotation is still whole");
}

#[test]
fn tables_that_do_not_line_up_with_the_last_two_axes_are_an_error() {
    use tract_onnx::prelude::*;
    use tract_onnx::tract_core::internal::EvalOp;
    let op = super::Rope { half: 2 };
    let eval = |x: &[usize], table: &[usize]| {
        let t = |shape: &[usize]| Tensor::zero::<f32>(shape).unwrap().into_tvalue();
        let ctx = tract_onnx::tract_core::internal::EvalContext::out_of_plan();
        op.eval(&ctx, tvec![t(x), t(table), t(table)])
    };
    assert!(eval(&[1, 2, 3, 4], &[3, 4]).is_ok());
    assert!(eval(&[1, 2, 1, 4], &[1, 4]).is_ok());
    // Positions before heads, or a table of another length: refused, not misread.
    assert!(eval(&[1, 3, 2, 4], &[3, 1, 4]).is_err());
    assert!(eval(&[1, 2, 3, 4], &[6, 4]).is_err());
    assert!(eval(&[1, 2, 3, 4], &[3, 6]).is_err());
}
