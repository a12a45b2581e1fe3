//! RMSNorm with its gain as one operator: `y = x / √(mean(x²) + ε) · w` over the last axis.
//!
//! The converter writes it as six standard ONNX nodes (`Mul`, `ReduceMean`, `Add`, `Sqrt`,
//! `Div`, `Mul`), 17 times in the backbone. tract recognises the first five as its own RMS
//! normalisation only after decluttering them, and keeps the gain as a separate pass.
//! [`fuse_rms_norm`] finds the six in a decoded graph and writes one `TransfusionRmsNorm` node of
//! the SDK's operator set ([`super::onnx_graph::DOMAIN`]) in their place, before tract reads the
//! graph; [`rms_norm`] is its parser. [`RmsNorm`] sums each row's squares in eight lanes, so its
//! values agree with tract's to rounding, not bit for bit.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::{GraphProto, NodeProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_hir::internal::{
    check_input_arity, check_output_arity, expand, Expansion, InferenceOp, InferenceResult, Solver,
    TensorProxy,
};

use super::dense_f32;
use super::onnx_graph::{float_attribute, fuse, is, operands, Uses, DOMAIN};

/// ONNX `TensorProto.DataType.FLOAT`.
const FLOAT: i32 = 1;

/// The operator type of the fused node: a name no ONNX operator has (tract-onnx finds a
/// node's parser by its type alone, whatever its domain).
pub const OP_TYPE: &str = "TransfusionRmsNorm";

/// The six nodes of one RMSNorm ending at the gain's `Mul` node `gain`, and the node that
/// replaces them.
fn matched(uses: &Uses, gain: usize) -> Option<(Vec<usize>, NodeProto)> {
    let node = uses.graph.node.get(gain)?;
    let [y] = node.output.as_slice() else {
        return None;
    };
    if !is(node, "Mul") {
        return None;
    }
    let (normed, w) = operands(node, |v| uses.only_step(v, "Div", gain).is_some())?;
    let (idiv, div) = uses.only_step(normed, "Div", gain)?;
    let [x, rms] = div.input.as_slice() else {
        return None;
    };
    // The gain: an f32 vector (the operator takes `[D]`).
    let gain_ok = uses
        .initializer_type(w)
        .is_some_and(|(t, dims)| t == FLOAT && dims.len() == 1);
    if !gain_ok {
        return None;
    }
    let (isqrt, sqrt) = uses.only_step(rms, "Sqrt", idiv)?;
    let [shifted] = sqrt.input.as_slice() else {
        return None;
    };
    let (iadd, add) = uses.only_step(shifted, "Add", isqrt)?;
    let (mean, eps) = operands(add, |v| uses.only_step(v, "ReduceMean", iadd).is_some())?;
    let epsilon = uses.f32_scalar(eps)?;
    let (imean, reduce) = uses.only_step(mean, "ReduceMean", iadd)?;
    let last_axis = Uses::ints_attr(reduce, "axes") == Some(&[-1]);
    let keepdims = Uses::int_attr(reduce, "keepdims").unwrap_or(1) == 1;
    let [squares] = reduce.input.as_slice() else {
        return None;
    };
    if !last_axis || !keepdims {
        return None;
    }
    let (isq, square) = uses.only_step(squares, "Mul", imean)?;
    if square.input.as_slice() != [x.clone(), x.clone()] {
        return None;
    }
    let node = NodeProto {
        input: vec![x.clone(), w.clone()],
        output: vec![y.clone()],
        name: format!("{}.rms_norm", node.name),
        op_type: OP_TYPE.to_string(),
        domain: DOMAIN.to_string(),
        attribute: vec![float_attribute("epsilon", epsilon)],
        ..NodeProto::default()
    };
    Some((vec![isq, imean, iadd, isqrt, idiv, gain], node))
}

/// Replaces every RMSNorm of the form above in `graph` by one `TransfusionRmsNorm` node; returns
/// how many.
pub fn fuse_rms_norm(graph: &mut GraphProto) -> usize {
    fuse(graph, matched)
}

/// Parser of the SDK's `TransfusionRmsNorm` nodes for tract-onnx's operator register.
pub fn rms_norm(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let epsilon = Uses::float_attr(node, "epsilon")
        .ok_or_else(|| format_err!("{}: RmsNorm without `epsilon`", node.name))?;
    Ok((expand(RmsNormOnnx(RmsNorm { epsilon })), vec![]))
}

/// The node while tract infers types: `y` is `x`'s shape, all f32.
#[derive(Clone, Debug)]
struct RmsNormOnnx(RmsNorm);

impl Expansion for RmsNormOnnx {
    fn name(&self) -> StaticName {
        "RmsNorm".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 2)?;
        check_output_arity(outputs, 1)?;
        let ([x, w], [y]) = (inputs, outputs) else {
            bail!("RmsNorm: arity checked above");
        };
        for t in [x, w, y] {
            s.equals(&t.datum_type, f32::datum_type())?;
        }
        s.equals(&x.shape, &y.shape)?;
        s.equals(&w.rank, 1)?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.0.clone(), inputs)
    }
}

/// `y = x / √(mean(x²) + ε) · w` over the last axis of f32 `x [.., D]`, `w [D]`.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    epsilon: f32,
}

/// Equal when the epsilons are the same bits (tract compares operators to merge nodes).
impl PartialEq for RmsNorm {
    fn eq(&self, other: &Self) -> bool {
        self.epsilon.to_bits() == other.epsilon.to_bits()
    }
}

impl Eq for RmsNorm {}

impl Op for RmsNorm {
    fn name(&self) -> StaticName {
        "RmsNorm(transfusion)".into()
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for RmsNorm {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, w) = args_2!(inputs);
        let d = w.len();
        ensure!(
            dense_f32(&x) && dense_f32(&w) && d > 0 && x.shape().last() == Some(&d),
            "RmsNorm: inputs of shapes {:?} and {:?}, expected f32 [.., D] and [D]",
            x.shape(),
            w.shape()
        );
        let mut y = Tensor::zero::<f32>(x.shape())?;
        {
            let (xv, wv) = (x.try_as_plain_ram()?, w.try_as_plain_ram()?);
            let (xs, ws) = (xv.as_slice::<f32>()?, wv.as_slice::<f32>()?);
            let mut yv = y.try_as_plain_ram_mut()?;
            let ys = yv.as_slice_mut::<f32>()?;
            super::wide::avx2(
                #[inline(always)]
                || normalise(xs, ws, ys, self.epsilon),
            );
        }
        Ok(tvec![y.into_tvalue()])
    }
}

/// The rows of `y` from those of `x`, each `w.len()` long.
#[inline(always)]
fn normalise(xs: &[f32], w: &[f32], ys: &mut [f32], epsilon: f32) {
    let d = w.len();
    for (x, y) in xs.chunks_exact(d).zip(ys.chunks_exact_mut(d)) {
        let mean = super::norm::sum(x, |v| v * v) / d as f32;
        let rms = (mean + epsilon).sqrt();
        for ((y, &v), &g) in y.iter_mut().zip(x).zip(w) {
            *y = v / rms * g;
        }
    }
}

impl TypedOp for RmsNorm {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs
            .first()
            .ok_or_else(|| format_err!("RmsNorm takes two inputs"))?;
        Ok(tvec![f32::fact(x.shape.clone())])
    }

    as_op!();
}

#[cfg(test)]
#[path = "rms_norm_tests.rs"]
mod tests;
