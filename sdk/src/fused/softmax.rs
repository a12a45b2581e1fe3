//! Softmax over the last axis of an f32 tensor: the backbone's attention weights.
//!
//! tract normalises each row with three of tract-linalg's vectorised kernels (maximum, sum of
//! exponentials, scale), and hands every call its row through an aligned scratch buffer. The
//! backbone's rows are `P + S` values long (50 in a diffusion step), so the set-up of 3 kernel
//! calls a row is most of the work: its 8 softmax nodes cost 0.34 ms of a 4.5 ms INT8 step
//! (`transfusion bench --profile`, docs/performance.md). [`RowSoftmax`] runs the same three
//! passes as plain loops over each row: the maximum, `exp(x − max)` and its sum, then the
//! product by the sum's reciprocal. The exponential is a polynomial of its own ([`exp`]),
//! written so that the loop vectorises, not tract's, so values agree to rounding, not bit for
//! bit.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::nn::{Softmax, SoftmaxKind};

use super::dense_f32;

/// `softmax` along the last axis of a dense f32 tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowSoftmax {
    /// The node this replaced: its output facts, and the fallback for other inputs.
    original: Softmax,
}

impl RowSoftmax {
    /// The replacement for `op` when it is tract's f32 softmax (not log-softmax, not quantized)
    /// over the last axis of its input (`input`).
    pub fn replacing(op: &dyn TypedOp, input: &TypedFact) -> Option<RowSoftmax> {
        let softmax = op.downcast_ref::<Softmax>()?;
        let last = input.rank().checked_sub(1)?;
        let takes = softmax.kind == SoftmaxKind::Softmax
            && softmax.quant_output_dt.is_none()
            && softmax.axes.as_slice() == [last]
            && input.datum_type == DatumType::F32;
        takes.then(|| RowSoftmax {
            original: softmax.clone(),
        })
    }
}

/// Lanes of the partial maxima and sums (one AVX2 register of f32).
const LANES: usize = 8;

/// Softmax of each row of `n` values of `xs`, in place.
fn rows(xs: &mut [f32], n: usize) {
    super::wide::avx2(
        #[inline(always)]
        || rows_here(xs, n),
    );
}

/// [`rows`], compiled for the instruction set of its caller.
#[inline(always)]
pub(super) fn rows_here(xs: &mut [f32], n: usize) {
    for row in xs.chunks_exact_mut(n.max(1)) {
        // Compare and select: one `maxps` on x86 (`f32::max`, which returns the other operand of
        // a NaN on either side, is a compare and blend per value). The partial maxima start at
        // −∞ and only take non-NaN values, so both agree.
        let max = lanes(row, f32::NEG_INFINITY, |a, v| if v > a { v } else { a });
        for v in row.iter_mut() {
            *v = exp(*v - max);
        }
        let scale = lanes(row, 0.0, |a, b| a + b).recip();
        row.iter_mut().for_each(|v| *v *= scale);
    }
}

/// `xs` folded by `f` in [`LANES`] independent lanes, then across them: a fold the compiler
/// vectorises (one accumulator is a chain it may not reorder).
#[inline(always)]
fn lanes(xs: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder().iter().fold(init, |a, &v| f(a, v));
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a = f(*a, v);
        }
    }
    acc.iter().fold(tail, |a, &v| f(a, v))
}

/// `e^x` for `x ≤ 88`, within a few units in the last place: Cephes' single-precision
/// reduction and polynomial (`x = n·ln 2 + r`, `|r| ≤ ln 2 / 2`, `e^r` of degree 7, times
/// `2^n` built in the exponent bits). Below −87 it is 0 (where `e^x` would be subnormal: the
/// masked scores, −∞, included); a NaN stays NaN. Branch-free, so a loop over a row vectorises —
/// the C library's `expf` is a call per value, which made the backbone's softmax nodes 4 % of
/// an INT8 step (docs/performance.md).
#[inline(always)]
fn exp(x: f32) -> f32 {
    /// Adding and subtracting 1.5 · 2²³ rounds an f32 below 2²² to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    // Both selects replace a NaN (`clamp` would keep it), so `n` below is always an integer in
    // −126..=127; written as compare and select, they are one `maxps` and one `minps` on x86.
    let c = if x > -87.0 { x } else { -87.0 };
    let c = if c < 88.0 { c } else { 88.0 };
    let n = (c * std::f32::consts::LOG2_E + ROUND) - ROUND;
    // ln 2 in two parts, the first exact in a few bits, so `n · LN2_HI` is exact.
    let r = c - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = 1.987_569_2e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // SAFETY: `n` is an integer in −126..=127 (`c` is clamped to −87..=88), which `i32` holds;
    // `n + 127` is then a normal exponent, 1..=254.
    let bits = (unsafe { n.to_int_unchecked::<i32>() } + 127) << 23;
    let scaled = e * f32::from_bits(bits.unsigned_abs());
    if x.is_nan() {
        x
    } else if x < -87.0 {
        0.0
    } else {
        scaled
    }
}

impl Op for RowSoftmax {
    fn name(&self) -> StaticName {
        "RowSoftmax(transfusion)".into()
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for RowSoftmax {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        match inputs.first() {
            Some(input) if inputs.len() == 1 && dense_f32(input) => {
                let n = input.shape().last().copied().unwrap_or(1);
                let mut output = args_1!(inputs).into_tensor();
                rows(output.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?, n);
                Ok(tvec![output.into_tvalue()])
            }
            _ => self.original.eval(ctx, inputs),
        }
    }
}

impl TypedOp for RowSoftmax {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.original.output_facts(inputs)
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::test_util::{f32s, Rng};

    /// Ours against tract's own operator: equal to a few units in the last place (tract's
    /// exponential is a polynomial good to a few units itself).
    #[test]
    fn rows_agree_with_tracts_softmax_to_rounding() {
        let mut rng = Rng(0x50f7);
        for shape in [
            [1usize, 4, 16, 50],
            [1, 4, 1, 51],
            [1, 1, 3, 7],
            [2, 3, 5, 64],
        ] {
            let mut x = rng.tensor(&shape, |r| (r.unit() - 0.5) * 20.0);
            // Masked positions, as the attention mask makes them.
            if let Ok(mut view) = x.try_as_plain_ram_mut() {
                let v = view.as_slice_mut::<f32>().unwrap();
                v.iter_mut().step_by(5).for_each(|v| *v = f32::NEG_INFINITY);
            }
            let tract = Softmax::new(tvec![3], None, SoftmaxKind::Softmax);
            let fact = TypedFact::shape_and_dt_of(&x);
            let ours = RowSoftmax::replacing(&tract, &fact).unwrap();
            let ctx = EvalContext::out_of_plan();
            let want = tract.eval(&ctx, tvec![x.clone().into_tvalue()]).unwrap();
            let got = ours.eval(&ctx, tvec![x.into_tvalue()]).unwrap();
            let (want, got) = (f32s(&want[0]), f32s(&got[0]));
            for (w, g) in want.iter().zip(&got) {
                assert!((w - g).abs() <= 1e-6 * w.abs(), "{w} {g}");
            }
        }
    }

    /// The polynomial against the C library's `expf` over the range the scores take, and at
    /// its edges.
    #[test]
    fn exp_agrees_with_the_c_library() {
        let mut x = -90.0f32;
        while x <= 88.0 {
            let (want, got) = (x.exp(), exp(x));
            if x < -87.0 {
                assert_eq!(got, 0.0, "{x}");
            } else {
                assert!(
                    (want - got).abs() <= 3.0 * f32::EPSILON * want,
                    "{x}: {want} {got}"
                );
            }
            x += 0.013;
        }
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn other_axes_and_log_softmax_stay_on_tract() {
        let fact = f32::fact([2, 3, 4]);
        let middle = Softmax::new(tvec![1], None, SoftmaxKind::Softmax);
        assert!(RowSoftmax::replacing(&middle, &fact).is_none());
        let log = Softmax::new(tvec![2], None, SoftmaxKind::LogSoftmax);
        assert!(RowSoftmax::replacing(&log, &fact).is_none());
    }
}
