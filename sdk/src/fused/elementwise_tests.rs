//! Tests of [`super`]: every step against tract's own operator, bit for bit.

use super::*;
use crate::fused::test_util::{f32s, Rng};

/// Mostly ordinary values, sometimes zeros, infinities, NaN and subnormals.
fn value(rng: &mut Rng) -> f32 {
    match rng.below(40) {
        0 => f32::NAN,
        1 => f32::INFINITY,
        2 => f32::NEG_INFINITY,
        3 => 0.0,
        4 => -0.0,
        5 => 1e-40,
        _ => (rng.unit() - 0.5) * 8.0,
    }
}

fn mini(step: Arith) -> Box<dyn BinMiniOp> {
    match step {
        Arith::Add => Box::new(math::Add),
        Arith::Sub => Box::new(math::Sub),
        Arith::SubF => Box::new(math::SubF),
        Arith::Mul => Box::new(math::Mul),
        Arith::Div => Box::new(math::Div),
    }
}

/// tract's own generic operator, step after step.
fn reference(steps: &[Arith], inputs: &[Tensor]) -> Tensor {
    let mut acc = inputs[0].clone().into_tvalue();
    for (&step, b) in steps.iter().zip(&inputs[1..]) {
        let op = TypedBinOp(mini(step), None);
        acc = op
            .eval(
                &EvalContext::out_of_plan(),
                tvec![acc, b.clone().into_tvalue()],
            )
            .unwrap()
            .remove(0);
    }
    acc.into_tensor()
}

fn ours(steps: &[Arith], inputs: &[Tensor], keep_shared: bool) -> Tensor {
    let op = Elementwise {
        steps: steps.iter().copied().collect(),
        original: Box::new(TypedBinOp(mini(steps[0]), None)),
    };
    let values: TVec<TValue> = inputs.iter().map(|t| t.clone().into_tvalue()).collect();
    // A second reference to every input stops the operator from writing into it.
    let held = keep_shared.then(|| values.clone());
    let out = op
        .eval(&EvalContext::out_of_plan(), values)
        .unwrap()
        .remove(0);
    if let Some(held) = held {
        for (kept, original) in held.iter().zip(inputs) {
            assert_eq!(&**kept, original, "a shared input was overwritten");
        }
    }
    out.into_tensor()
}

fn same_bits(got: &Tensor, want: &Tensor, what: &str) {
    assert_eq!(got.shape(), want.shape(), "{what}");
    let (got, want) = (f32s(got), f32s(want));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "{what}: element {i}: {g} against tract's {w}"
        );
    }
}

#[test]
fn one_step_matches_tract_on_random_broadcasts_and_odd_shapes() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let dims = [1usize, 2, 3, 5, 7, 16, 17, 33];
    let steps = [Arith::Add, Arith::Sub, Arith::SubF, Arith::Mul, Arith::Div];
    for case in 0..600 {
        let rank = 1 + rng.below(5);
        let full: Vec<usize> = (0..rank).map(|_| dims[rng.below(dims.len())]).collect();
        // Each operand keeps or drops (to 1) each axis: one- and two-way broadcasts.
        let mut pick = || -> Vec<usize> {
            full.iter()
                .map(|&n| if rng.below(3) == 0 { 1 } else { n })
                .collect()
        };
        let (sa, sb) = (pick(), pick());
        let inputs = [rng.tensor(&sa, value), rng.tensor(&sb, value)];
        let step = steps[case % steps.len()];
        let want = reference(&[step], &inputs);
        let what = format!("{step:?} {sa:?} {sb:?}");
        same_bits(&ours(&[step], &inputs, false), &want, &what);
        same_bits(
            &ours(&[step], &inputs, true),
            &want,
            &format!("{what}, shared"),
        );
    }
}

#[test]
fn per_channel_chain_matches_tract_with_the_strides_tract_leaves_on_constants() {
    let mut rng = Rng(7);
    for (c, h, w) in [
        (64usize, 4usize, 4usize),
        (3, 5, 7),
        (96, 16, 16),
        (1, 1, 9),
    ] {
        let x = rng.tensor(&[1, c, h, w], value);
        // A [C] constant brought to [1, C, 1, 1] by inserting axes, as tract does: the
        // inserted axes keep strides that are not C order.
        let mut gain = rng.tensor(&[c], value);
        let mut bias = rng.tensor(&[c], value);
        for t in [&mut gain, &mut bias] {
            t.insert_axis(0).unwrap();
            t.insert_axis(2).unwrap();
            t.insert_axis(3).unwrap();
            assert!(dense_f32(t), "{:?} strides {:?}", t.shape(), t.strides());
        }
        let inputs = [x, gain, bias];
        let steps = [Arith::Mul, Arith::Add];
        let want = reference(&steps, &inputs);
        same_bits(
            &ours(&steps, &inputs, false),
            &want,
            &format!("{c}x{h}x{w}"),
        );
        same_bits(
            &ours(&steps, &inputs, true),
            &want,
            &format!("{c}x{h}x{w} shared"),
        );
    }
}

#[test]
fn layout_splits_the_contiguous_inner_run_from_the_outer_axes() {
    // GroupNorm affine: one scalar of b per channel, over H·W.
    let l = Layout::new(&[1, 64, 8, 8], &[1, 64, 1, 1], &[1, 64, 8, 8]);
    assert_eq!((l.inner, l.a_full, l.b_full), (64, true, false));
    assert_eq!(&*l.outer, &[(64, 64, 1, 64)]);
    // RoPE: one table for every head.
    let l = Layout::new(&[1, 4, 16, 64], &[1, 1, 16, 64], &[1, 4, 16, 64]);
    assert_eq!((l.inner, l.a_full, l.b_full), (1024, true, true));
    assert_eq!(&*l.outer, &[(4, 1024, 0, 1024)]);
    // Two-way: [S, 1] by [1, D].
    let l = Layout::new(&[5, 1], &[1, 3], &[5, 3]);
    assert_eq!((l.inner, l.a_full, l.b_full), (3, false, true));
    assert_eq!(&*l.outer, &[(5, 1, 0, 3)]);
    // Scalars and empty tensors.
    assert_eq!(Layout::new(&[1, 1], &[1, 1], &[1, 1]).inner, 1);
    assert_eq!(Layout::new(&[0, 3], &[1, 3], &[0, 3]).len, 0);
}

#[test]
fn operands_that_do_not_broadcast_are_an_error() {
    assert!(broadcast_shape(&[2, 3], &[3, 3]).is_err());
    assert!(broadcast_shape(&[2], &[2, 1]).is_err());
    let op = Elementwise {
        steps: tvec![Arith::Add],
        original: Box::new(TypedBinOp(Box::new(math::Add), None)),
    };
    let a = Tensor::zero::<f32>(&[2, 3]).unwrap().into_tvalue();
    let b = Tensor::zero::<f32>(&[3, 3]).unwrap().into_tvalue();
    assert!(op.eval(&EvalContext::out_of_plan(), tvec![a, b]).is_err());
}
