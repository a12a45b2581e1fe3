//! The fused attention core against tract running the converter's nodes.

use tract_onnx::pb::ModelProto;

use super::super::rope::{fuse_rope, rope, OP_TYPE as ROPE};
use super::super::test_util::{bits, run_onnx, OnnxGraph, Rng};
use super::{attention, fuse_attention, OP_TYPE};

/// One layer's attention as the converter writes it, from the projections `q`, `k`, `v`
/// `[1, S, H·hd]`, the tables, the caches and the mask (all graph inputs), to the merged
/// heads and the extended caches (the outputs).
fn model(heads: usize, half: usize) -> ModelProto {
    let mut g = OnnxGraph::default();
    let hd = 2 * half;
    let split = |g: &mut OnnxGraph, x: &str| {
        let shape = g.int64s("heads_shape", &[0, 0, heads as i64, hd as i64]);
        let r = g.node("Reshape", &[x, &shape], 1, vec![]).remove(0);
        let perm = OnnxGraph::ints("perm", &[0, 2, 1, 3]);
        g.node("Transpose", &[&r], 1, vec![perm]).remove(0)
    };
    let rope_of = |g: &mut OnnxGraph, x: &str| {
        let axes = g.int64s("axes", &[3]);
        let (s0, s1, e1) = (
            g.int64s("starts", &[0]),
            g.int64s("starts", &[half as i64]),
            g.int64s("ends", &[hd as i64]),
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
    let (qh, kh, vh) = (split(&mut g, "q"), split(&mut g, "k"), split(&mut g, "v"));
    let (qh, kh) = (rope_of(&mut g, &qh), rope_of(&mut g, &kh));
    let cache_axis = || vec![OnnxGraph::int("axis", 2)];
    let k_all = g
        .node("Concat", &["past_k", &kh], 1, cache_axis())
        .remove(0);
    let v_all = g
        .node("Concat", &["past_v", &vh], 1, cache_axis())
        .remove(0);
    let kt = OnnxGraph::ints("perm", &[0, 1, 3, 2]);
    let kt = g.node("Transpose", &[&k_all], 1, vec![kt]).remove(0);
    let scores = g.node("MatMul", &[&qh, &kt], 1, vec![]).remove(0);
    let scale = g.floats("attn_scale", &[], &[1.0 / (hd as f32).sqrt()]);
    let scores = g.node("Mul", &[&scores, &scale], 1, vec![]).remove(0);
    let scores = g.node("Add", &[&scores, "mask"], 1, vec![]).remove(0);
    let softmax = vec![OnnxGraph::int("axis", -1)];
    let probs = g.node("Softmax", &[&scores], 1, softmax).remove(0);
    let o = g.node("MatMul", &[&probs, &v_all], 1, vec![]).remove(0);
    let perm = OnnxGraph::ints("perm", &[0, 2, 1, 3]);
    let o = g.node("Transpose", &[&o], 1, vec![perm]).remove(0);
    let merge = g.int64s("merge_shape", &[0, 0, (heads * hd) as i64]);
    let o = g.node("Reshape", &[&o, &merge], 1, vec![]).remove(0);
    for x in ["q", "k", "v"] {
        g.input(x, &["1", "S", &(heads * hd).to_string()]);
    }
    for t in ["cos", "sin"] {
        g.input(t, &["S", &hd.to_string()]);
    }
    for c in ["past_k", "past_v"] {
        g.input(c, &["1", &heads.to_string(), "P", &hd.to_string()]);
    }
    g.input("mask", &["S", "T"]);
    g.model(&[o, k_all, v_all])
}

#[test]
fn fused_attention_agrees_with_the_onnx_nodes() {
    let mut rng = Rng(0xa77e);
    for (heads, half, s, p) in [
        (4usize, 32usize, 16usize, 34usize),
        (2, 4, 1, 5),
        (3, 2, 5, 0),
    ] {
        let proto = model(heads, half);
        let hd = 2 * half;
        let mut value = |shape: &[usize]| rng.tensor(shape, |r| r.unit() * 2.0 - 1.0);
        let (q, k, v) = (
            value(&[1, s, heads * hd]),
            value(&[1, s, heads * hd]),
            value(&[1, s, heads * hd]),
        );
        let (cos, sin) = (value(&[s, hd]), value(&[s, hd]));
        let (past_k, past_v) = (value(&[1, heads, p, hd]), value(&[1, heads, p, hd]));
        // Causal, the last two new positions one block (as an image's are).
        let mut mask = vec![f32::NEG_INFINITY; s * (p + s)];
        for (i, row) in mask.chunks_exact_mut(p + s).enumerate() {
            for (j, m) in row.iter_mut().enumerate() {
                if j <= p + i || (i + 2 >= s && j + 2 >= p + s) {
                    *m = 0.0;
                }
            }
        }
        let mask = tract_onnx::prelude::Tensor::from_shape(&[s, p + s], &mask).unwrap();
        let inputs = [&q, &k, &v, &cos, &sin, &past_k, &past_v, &mask];
        let plain = run_onnx(&proto, &inputs, |_, _| {});
        let fused = run_onnx(&proto, &inputs, |proto, onnx| {
            let graph = proto.graph.as_mut().unwrap();
            assert_eq!(fuse_rope(graph), 2);
            assert_eq!(fuse_attention(graph), 1);
            assert_eq!(graph.node.len(), 1, "one node for the whole core");
            onnx.op_register.insert(ROPE, rope);
            onnx.op_register.insert(OP_TYPE, attention);
        });
        let case = format!("heads {heads}, hd {hd}, s {s}, p {p}");
        assert_eq!(bits(&plain[1]), bits(&fused[1]), "K cache, {case}");
        assert_eq!(bits(&plain[2]), bits(&fused[2]), "V cache, {case}");
        for (i, (a, b)) in plain[0].iter().zip(&fused[0]).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                "{case} [{i}]: {a} vs {b}"
            );
        }
    }
}

#[test]
fn a_core_without_its_rotary_embeddings_stays_as_it_is() {
    let proto = model(2, 4);
    let mut graph = proto.graph.unwrap();
    // Without the rope rewrite first there is no `TransfusionRope` node to start from.
    assert_eq!(fuse_attention(&mut graph), 0);
}
