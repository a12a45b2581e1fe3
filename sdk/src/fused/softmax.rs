//! Softmax over the last axis of an f32 tensor: the backbone's attention weights.
//!
//! tract normalises each row with three of tract-linalg's vectorised kernels (maximum, sum of
//! exponentials, scale), and hands every call its row through an aligned scratch buffer. The
//! backbone's rows are `P + S` values long (50 in a diffusion step), so the set-up of 3 kernel
//! calls a row is most of the work: its 8 softmax nodes cost 0.34 ms of a 4.5 ms INT8 step
//! (`transfusion bench --profile`, docs/performance.md). [`RowSoftmax`] runs the same three
//! passes as plain loops over each row: the maximum, `exp(x − max)` and its sum, then the
//! product by the sum's reciprocal. The exponential is the C library's (`f32::exp`) rather than
//! tract's polynomial, so values agree to rounding, not bit for bit.

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

/// Softmax of each row of `n` values of `xs`, in place.
fn rows(xs: &mut [f32], n: usize) {
    for row in xs.chunks_exact_mut(n.max(1)) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut sum = 0f32;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        let scale = sum.recip();
        row.iter_mut().for_each(|v| *v *= scale);
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

    #[test]
    fn other_axes_and_log_softmax_stay_on_tract() {
        let fact = f32::fact([2, 3, 4]);
        let middle = Softmax::new(tvec![1], None, SoftmaxKind::Softmax);
        assert!(RowSoftmax::replacing(&middle, &fact).is_none());
        let log = Softmax::new(tvec![2], None, SoftmaxKind::LogSoftmax);
        assert!(RowSoftmax::replacing(&log, &fact).is_none());
    }
}
