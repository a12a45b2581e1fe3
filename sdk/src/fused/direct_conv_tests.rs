use super::*;
use crate::fused::test_util::{f32s, Rng};
use tract_onnx::tract_core::ops::cnn::{PaddingSpec, PoolSpec};

fn conv(c_in: usize, c_out: usize, k: usize, stride: usize, pad: (usize, usize)) -> Conv {
    let spec = PoolSpec {
        data_format: DataFormat::NCHW,
        kernel_shape: tvec![k, k],
        padding: PaddingSpec::Explicit(tvec![pad.0, pad.0], tvec![pad.1, pad.1]),
        dilations: None,
        strides: Some(tvec![stride, stride]),
        input_channels: c_in,
        output_channels: c_out,
    };
    Conv::new(spec, KernelFormat::OIHW, 1, None)
}

/// The facts tract gives the operator: the activation's shape, the weight and bias constant.
fn facts(x: &Tensor, w: &Tensor, b: &Tensor) -> [TypedFact; 3] {
    let konst = |t: &Tensor| TypedFact::try_from(t.clone().into_arc_tensor()).unwrap();
    [TypedFact::shape_and_dt_of(x), konst(w), konst(b)]
}

/// Ours against tract's own operator on random inputs, to f32 rounding.
fn check(op: &Conv, x: Tensor, w: Tensor, b: Tensor) {
    let [fx, fw, fb] = facts(&x, &w, &b);
    let ours =
        DirectConv::replacing(op, &[&fx, &fw, &fb]).unwrap_or_else(|| panic!("{op:?} not taken"));
    let ctx = EvalContext::out_of_plan();
    let ins = || {
        tvec![
            x.clone().into_tvalue(),
            w.clone().into_tvalue(),
            b.clone().into_tvalue()
        ]
    };
    let want = op.eval(&ctx, ins()).unwrap().remove(0);
    let got = ours.eval(&ctx, ins()).unwrap().remove(0);
    assert_eq!(got.shape(), want.shape(), "{op:?}");
    let depth = w.len() / w.shape()[0];
    for (i, (g, w)) in f32s(&got).iter().zip(f32s(&want)).enumerate() {
        let tol = 1e-5 * (1.0 + w.abs()) * (depth as f32).sqrt();
        assert!((g - w).abs() <= tol, "{op:?} [{i}]: {g} vs {w}");
    }
}

#[test]
fn convolutions_match_tract_at_the_model_sizes_and_odd_ones() {
    let mut rng = Rng(0xd1);
    // (batch, c_in, c_out, size, kernel, stride, padding before/after, bias per channel)
    for (n, ci, co, hw, k, s, p, per_channel) in [
        (
            1usize,
            32usize,
            64usize,
            8usize,
            3usize,
            1usize,
            (1usize, 1usize),
            true,
        ),
        (1, 96, 32, 16, 3, 1, (1, 1), true),
        (2, 4, 32, 16, 3, 2, (1, 1), true),
        (1, 3, 5, 7, 3, 2, (1, 1), false),
        (1, 5, 3, 6, 3, 1, (0, 0), true),
        (1, 16, 3, 13, 3, 1, (1, 1), true),
        (1, 2, 17, 9, 2, 1, (0, 1), true),
        (1, 8, 8, 5, 1, 1, (0, 0), false),
    ] {
        let x = rng.tensor(&[n, ci, hw, hw], |r| r.unit() * 2.0 - 1.0);
        let w = rng.tensor(&[co, ci, k, k], |r| r.unit() - 0.5);
        let b = if per_channel {
            rng.tensor(&[co], |r| r.unit() - 0.5)
        } else {
            tensor0(0.25f32)
        };
        check(&conv(ci, co, k, s, p), x, w, b);
    }
}

#[test]
fn convolutions_it_does_not_compute_stay_on_tract() {
    let mut rng = Rng(5);
    let x = rng.tensor(&[1, 4, 6, 6], |r| r.unit());
    let w = rng.tensor(&[4, 2, 3, 3], |r| r.unit());
    let b = tensor0(0f32);
    let [fx, fw, fb] = facts(&x, &w, &b);
    let mut grouped = conv(4, 4, 3, 1, (1, 1));
    grouped.group = 2;
    assert!(DirectConv::replacing(&grouped, &[&fx, &fw, &fb]).is_none());
    let w = rng.tensor(&[4, 4, 3, 3], |r| r.unit());
    let [fx, fw, fb] = facts(&x, &w, &b);
    let mut dilated = conv(4, 4, 3, 1, (1, 1));
    dilated.pool_spec.dilations = Some(tvec![2, 2]);
    assert!(DirectConv::replacing(&dilated, &[&fx, &fw, &fb]).is_none());
    // A weight that is not constant.
    let fw = TypedFact::shape_and_dt_of(&w);
    assert!(DirectConv::replacing(&conv(4, 4, 3, 1, (1, 1)), &[&fx, &fw, &fb]).is_none());
}

#[test]
fn output_channels_split_between_threads_give_the_same_convolution() {
    use tract_linalg::multithread::{multithread_tract_scope, Executor};
    let mut rng = Rng(9);
    let op = conv(8, 40, 3, 1, (1, 1));
    let x = rng.tensor(&[1, 8, 9, 9], |r| r.unit() - 0.5);
    let w = rng.tensor(&[40, 8, 3, 3], |r| r.unit() - 0.5);
    let b = rng.tensor(&[40], |r| r.unit());
    let [fx, fw, fb] = facts(&x, &w, &b);
    let ours = DirectConv::replacing(&op, &[&fx, &fw, &fb]).unwrap();
    let run = || {
        let ins = tvec![
            x.clone().into_tvalue(),
            w.clone().into_tvalue(),
            b.clone().into_tvalue()
        ];
        ours.eval(&EvalContext::out_of_plan(), ins)
            .unwrap()
            .remove(0)
    };
    let one = run();
    let three = multithread_tract_scope(Executor::multithread(3), run);
    assert_eq!(one, three);
}
