//! f32 constant padding.
//!
//! tract pads the input of every convolution it lowers through lazy im2col with an explicit
//! `Pad` node, and its `Pad` fills the output then assigns the input through a sliced
//! `ndarray` view: 8–12 % of the VAE and patch graphs (`transfusion bench --profile`).
//! [`ConstantPad`] fills the output and copies the input row by row (the last axis is
//! contiguous in both), which is the same tensor element for element.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::array::{Pad, PadMode};

use super::{c_strides, dense_f32};

/// ONNX `Pad` in constant mode on an f32 tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConstantPad {
    /// (before, after) per axis.
    pads: Vec<(usize, usize)>,
    /// The fill value's bits (f32 is not `Eq`).
    value: u32,
    /// The node this replaced: its output facts are this operator's, and it runs inputs this
    /// operator does not take.
    original: Pad,
}

impl ConstantPad {
    /// The replacement for `op` when it is a constant-mode `Pad` of an f32 tensor.
    pub fn replacing(op: &dyn TypedOp, input_types: &[DatumType]) -> Option<ConstantPad> {
        let pad = op.downcast_ref::<Pad>()?;
        if input_types != [DatumType::F32] {
            return None;
        }
        let PadMode::Constant(value) = &pad.mode else {
            return None;
        };
        let value = value.cast_to_scalar::<f32>().ok()?;
        Some(ConstantPad {
            pads: pad.pads.clone(),
            value: value.to_bits(),
            original: pad.clone(),
        })
    }

    fn pad(&self, input: &Tensor) -> TractResult<Tensor> {
        let shape = input.shape();
        ensure!(
            shape.len() == self.pads.len() && !shape.is_empty(),
            "Pad: input of rank {} for {} pads",
            shape.len(),
            self.pads.len()
        );
        let out_shape: TVec<usize> = shape
            .iter()
            .zip(&self.pads)
            .map(|(&n, &(a, b))| n + a + b)
            .collect();
        let mut out =
            tract_ndarray::ArrayD::from_elem(&*out_shape, f32::from_bits(self.value)).into_tensor();
        if input.len() == 0 {
            return Ok(out);
        }
        let plain = input.try_as_plain_ram()?;
        let xs = plain.as_slice::<f32>()?;
        let mut view = out.try_as_plain_ram_mut()?;
        let ys = view.as_slice_mut::<f32>()?;
        copy_rows(xs, shape, &self.pads, &out_shape, ys)
            .ok_or_else(|| format_err!("Pad: {shape:?} with {:?} out of bounds", self.pads))?;
        Ok(out)
    }
}

/// Copies every row (last axis) of `xs`, of shape `shape`, to its padded place in `ys` (of
/// shape `out_shape`, its padding already filled); [`super::DirectConv`] pads its inputs so too.
pub(super) fn copy_rows(
    xs: &[f32],
    shape: &[usize],
    pads: &[(usize, usize)],
    out_shape: &[usize],
    ys: &mut [f32],
) -> Option<()> {
    let (&row, lead) = shape.split_last()?;
    let (&(row_before, _), lead_pads) = pads.split_last()?;
    let strides = c_strides(out_shape);
    let lead_strides = strides.get(..lead.len())?;
    let mut index: TVec<usize> = tvec![0; lead.len()];
    for src in xs.chunks_exact(row) {
        let dst: usize = index
            .iter()
            .zip(lead_pads)
            .zip(lead_strides)
            .map(|((&i, &(before, _)), &s)| (i + before) * s)
            .sum::<usize>()
            + row_before;
        ys.get_mut(dst..dst + row)?.copy_from_slice(src);
        for (i, &n) in index.iter_mut().zip(lead).rev() {
            *i += 1;
            if *i < n {
                break;
            }
            *i = 0;
        }
    }
    Some(())
}

impl Op for ConstantPad {
    fn name(&self) -> StaticName {
        "ConstantPad(transfusion)".into()
    }

    fn validation(&self) -> Validation {
        Validation::Accurate
    }

    op_as_typed_op!();
}

impl EvalOp for ConstantPad {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        match inputs.first() {
            Some(input) if inputs.len() == 1 && dense_f32(input) => {
                Ok(tvec![self.pad(input)?.into_tvalue()])
            }
            _ => self.original.eval(ctx, inputs),
        }
    }
}

impl TypedOp for ConstantPad {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.original.output_facts(inputs)
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::test_util::f32s;

    fn ramp(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
        Tensor::from_shape(shape, &data).unwrap()
    }

    #[test]
    fn matches_tract_on_every_axis_and_odd_shapes() {
        type Case<'a> = (&'a [usize], &'a [(usize, usize)]);
        let cases: &[Case] = &[
            (&[1, 16, 64, 64], &[(0, 0), (0, 0), (1, 1), (1, 1)]),
            (&[1, 3, 5, 7], &[(0, 0), (0, 0), (0, 1), (0, 1)]),
            (&[2, 3, 4], &[(1, 2), (0, 0), (3, 0)]),
            (&[5], &[(2, 3)]),
            (&[1, 4, 1, 1], &[(0, 0), (0, 0), (2, 2), (2, 2)]),
            (&[0, 3], &[(1, 1), (0, 2)]),
        ];
        for &(shape, pads) in cases {
            for value in [0.0f32, -1.5, f32::NAN] {
                let tract = Pad::new(pads.to_vec(), PadMode::Constant(Arc::new(tensor0(value))));
                let ours = ConstantPad::replacing(&tract, &[DatumType::F32]).unwrap();
                let input = ramp(shape).into_tvalue();
                let ctx = EvalContext::out_of_plan();
                let want = tract.eval(&ctx, tvec![input.clone()]).unwrap().remove(0);
                let got = ours.eval(&ctx, tvec![input]).unwrap().remove(0);
                assert_eq!(got.shape(), want.shape(), "{shape:?} {pads:?}");
                let bits = |t: &Tensor| f32s(t).iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{shape:?} {pads:?} {value}");
            }
        }
    }

    #[test]
    fn other_modes_and_types_stay_on_tract() {
        let reflect = Pad::new(vec![(1, 1)], PadMode::Reflect);
        assert!(ConstantPad::replacing(&reflect, &[DatumType::F32]).is_none());
        let zero = Pad::new(vec![(1, 1)], PadMode::Constant(Arc::new(tensor0(0f32))));
        assert!(ConstantPad::replacing(&zero, &[DatumType::F16]).is_none());
        assert!(ConstantPad::replacing(&zero, &[DatumType::I8]).is_none());
    }
}
