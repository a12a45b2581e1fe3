//! Rotary position embedding as one operator: `y = x · cos + rotate_half(x) · sin` on
//! `x [.., S, 2h]` with `cos`, `sin` `[S, 2h]`, where `rotate_half(x) = [−x[h..], x[..h]]`.
//!
//! The converter writes it, for Q and K of every layer, as seven standard ONNX nodes: two
//! `Slice`s, a `Neg`, a `Concat`, two `Mul`s and an `Add` — 112 of the 461 nodes of the FP32
//! backbone, each its own pass over the heads for tract. [`fuse_rope`] finds them in a decoded
//! graph and writes one `TransfusionRope` node of the SDK's operator set
//! ([`super::onnx_graph::DOMAIN`]) in their place, before tract reads the graph; [`rope`] is its
//! parser. [`Rope`] computes the same operations in the same order, one row at a time: tract's
//! values, bit for bit.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::{GraphProto, NodeProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_hir::internal::{
    check_input_arity, check_output_arity, expand, Expansion, InferenceOp, InferenceResult, Solver,
    TensorProxy,
};

use super::dense_f32;
use super::onnx_graph::{fuse, int_attribute, is, operands, Uses, DOMAIN};

/// The operator type of the fused node: a name no ONNX operator has (tract-onnx finds a
/// node's parser by its type alone, whatever its domain).
pub const OP_TYPE: &str = "TransfusionRope";

/// The seven nodes of one rotary embedding ending at the `Add` node `add`, and the node that
/// replaces them.
fn matched(uses: &Uses, add: usize) -> Option<(Vec<usize>, NodeProto)> {
    let node = uses.graph.node.get(add)?;
    let ([a_out, r_out], [y]) = (node.input.as_slice(), node.output.as_slice()) else {
        return None;
    };
    if !is(node, "Add") {
        return None;
    }
    let (ia, a) = uses.only_step(a_out, "Mul", add)?;
    let (ir, r) = uses.only_step(r_out, "Mul", add)?;
    // `rotate_half(x) · sin`: the `Concat` on either side.
    let (rot, sin) = operands(r, |v| uses.only_step(v, "Concat", ir).is_some())?;
    let (ic, concat) = uses.only_step(rot, "Concat", ir)?;
    let axis = Uses::int_attr(concat, "axis")?;
    let [neg_out, x1] = concat.input.as_slice() else {
        return None;
    };
    let (ineg, neg) = uses.only_step(neg_out, "Neg", ic)?;
    let [x2] = neg.input.as_slice() else {
        return None;
    };
    let (is1, s1) = uses.only_step(x1, "Slice", ic)?;
    let (is2, s2) = uses.only_step(x2, "Slice", ineg)?;
    // Both halves of the same `x`, along the concatenated axis: `[0, h)` and `[h, 2h)`.
    let slice = |n: &NodeProto| -> Option<(String, i64, i64, i64)> {
        let [x, starts, ends, axes] = n.input.as_slice() else {
            return None;
        };
        let one = |name: &str| match uses.int64s(name)?.as_slice() {
            [v] => Some(*v),
            _ => None,
        };
        Some((x.clone(), one(starts)?, one(ends)?, one(axes)?))
    };
    let (x, start1, half, axis1) = slice(s1)?;
    let (x_, start2, end2, axis2) = slice(s2)?;
    let last = |a: i64| a == -1 || a == 3;
    if x != x_ || start1 != 0 || start2 != half || Some(end2) != half.checked_mul(2) || half <= 0 {
        return None;
    }
    if !(last(axis) && last(axis1) && last(axis2)) {
        return None;
    }
    // `x · cos`, `x` on either side.
    let (_, cos) = operands(a, |v| *v == x)?;
    let node = NodeProto {
        input: vec![x, cos.clone(), sin.clone()],
        output: vec![y.clone()],
        name: format!("{}.rope", node.name),
        op_type: OP_TYPE.to_string(),
        domain: DOMAIN.to_string(),
        attribute: vec![int_attribute("half", half)],
        ..NodeProto::default()
    };
    Some((vec![ia, ir, ic, ineg, is1, is2, add], node))
}

/// Replaces every rotary embedding of the form above in `graph` by one `TransfusionRope` node;
/// returns how many.
pub fn fuse_rope(graph: &mut GraphProto) -> usize {
    fuse(graph, matched)
}

/// Parser of the SDK's `TransfusionRope` nodes for tract-onnx's operator register.
pub fn rope(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let half = Uses::int_attr(node, "half")
        .and_then(|h| usize::try_from(h).ok())
        .filter(|&h| h > 0 && h.checked_mul(2).is_some())
        .ok_or_else(|| format_err!("{}: Rope without a positive `half`", node.name))?;
    Ok((expand(RopeOnnx(Rope { half })), vec![]))
}

/// The node while tract infers types: `y` is `x`'s shape and type, all f32.
#[derive(Clone, Debug)]
struct RopeOnnx(Rope);

impl Expansion for RopeOnnx {
    fn name(&self) -> StaticName {
        "Rope".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 3)?;
        check_output_arity(outputs, 1)?;
        let ([x, cos, sin], [y]) = (inputs, outputs) else {
            bail!("Rope: arity checked above");
        };
        for t in [x, cos, sin, y] {
            s.equals(&t.datum_type, f32::datum_type())?;
        }
        s.equals(&x.shape, &y.shape)?;
        s.equals(&cos.shape, &sin.shape)?;
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

/// `y = x · cos + [−x[h..], x[..h]] · sin` for f32 `x [.., S, 2h]`, `cos`, `sin` `[S, 2h]` (or
/// with leading axes of 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rope {
    half: usize,
}

impl Op for Rope {
    fn name(&self) -> StaticName {
        "Rope(transfusion)".into()
    }

    fn validation(&self) -> Validation {
        Validation::Accurate
    }

    op_as_typed_op!();
}

impl EvalOp for Rope {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, cos, sin) = args_3!(inputs);
        let width = 2 * self.half;
        // The tables broadcast as `[S, 2h]` against the last two axes of `x`: row `r` of `x`
        // takes table row `r mod S`.
        let table = cos.shape().iter().skip_while(|&&d| d == 1).copied();
        let table: TVec<usize> = table.collect();
        let tail = x
            .shape()
            .get(x.rank().saturating_sub(2)..)
            .unwrap_or_default();
        let rows_ok = match table.as_slice() {
            [s, w] => *w == width && tail == [*s, width],
            [w] => *w == width && tail.last() == Some(&width) && tail.first() == Some(&1),
            _ => false,
        };
        ensure!(
            [&x, &cos, &sin].iter().all(|t| dense_f32(t))
                && x.rank() >= 2
                && cos.shape() == sin.shape()
                && rows_ok,
            "Rope: inputs of shapes {:?}, {:?}, {:?}, expected f32 [.., S, {width}] and [S, {width}] twice",
            x.shape(),
            cos.shape(),
            sin.shape()
        );
        let mut y = Tensor::zero::<f32>(x.shape())?;
        {
            let (xv, cv, sv) = (
                x.try_as_plain_ram()?,
                cos.try_as_plain_ram()?,
                sin.try_as_plain_ram()?,
            );
            let (xs, cs, ss) = (
                xv.as_slice::<f32>()?,
                cv.as_slice::<f32>()?,
                sv.as_slice::<f32>()?,
            );
            let mut yv = y.try_as_plain_ram_mut()?;
            let ys = yv.as_slice_mut::<f32>()?;
            super::wide::avx2(
                #[inline(always)]
                || rotate(xs, cs, ss, ys, self.half),
            );
        }
        Ok(tvec![y.into_tvalue()])
    }
}

/// The rows of `y` from those of `x`, row `r` with the `cos`/`sin` row `r mod S`.
#[inline(always)]
pub(super) fn rotate(xs: &[f32], cos: &[f32], sin: &[f32], ys: &mut [f32], half: usize) {
    let width = 2 * half;
    let tables = cos.chunks_exact(width).zip(sin.chunks_exact(width)).cycle();
    for ((x, y), (c, s)) in xs
        .chunks_exact(width)
        .zip(ys.chunks_exact_mut(width))
        .zip(tables)
    {
        let (x1, x2) = x.split_at(half);
        // `rotate_half(x)` is `−x2` then `x1`: the two halves of `y` each read one half of `x`
        // straight and the other rotated.
        let (y1, y2) = y.split_at_mut(half);
        let (c1, c2) = c.split_at(half);
        let (s1, s2) = s.split_at(half);
        for (((y, (&a, &b)), &c), &s) in y1.iter_mut().zip(x1.iter().zip(x2)).zip(c1).zip(s1) {
            *y = a * c + -b * s;
        }
        for (((y, (&a, &b)), &c), &s) in y2.iter_mut().zip(x2.iter().zip(x1)).zip(c2).zip(s2) {
            *y = a * c + b * s;
        }
    }
}

impl TypedOp for Rope {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs
            .first()
            .ok_or_else(|| format_err!("Rope takes three inputs"))?;
        Ok(tvec![f32::fact(x.shape.clone())])
    }

    as_op!();
}

#[cfg(test)]
#[path = "rope_tests.rs"]
mod tests;
