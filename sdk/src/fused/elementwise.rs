//! f32 element-wise arithmetic with numpy broadcasting, laid out on the shapes of each call.
//!
//! tract decides at optimisation time how a binary operator runs. With a symbolic sequence
//! length (`S`, `P` in the backbone) it cannot prove the sizes its fast paths need, so the
//! backbone's RoPE products, attention-mask sums and SwiGLU gates stay on its generic operator,
//! which walks every element through a broadcasting `ndarray::Zip` and a function pointer. At
//! concrete shapes its per-channel paths (`OptBinByScalar`, `OptBinChain`: every GroupNorm's
//! affine) hand each block of 16–256 elements to a kernel through an aligned scratch buffer.
//! Both cost 5–20 ns per element at our sizes (`transfusion bench --profile`).
//!
//! [`Elementwise`] does the same arithmetic on the shapes it is given: each call splits the
//! broadcast into a contiguous inner run (both operands full, or one of them a scalar over the
//! run) and an outer odometer, and the inner loops are monomorphised so the compiler
//! vectorises them. Every value is the one tract computes: one IEEE operation per element
//! and step, in the same order.

use tract_linalg::BinOp;

use super::{c_strides, dense_f32};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::{
    BinMiniOp, OptBinByScalar, OptBinChain, OptBinUnicast, TypedBinOp,
};
use tract_onnx::tract_core::ops::math;

/// One arithmetic step `acc ← acc ∘ b` (`SubF`: `b − acc`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Arith {
    Add,
    Sub,
    SubF,
    Mul,
    Div,
}

impl Arith {
    /// The step of a tract mini-operator this module computes identically, if any.
    fn of_mini(op: &dyn BinMiniOp) -> Option<Arith> {
        if op.is::<math::Add>() {
            Some(Arith::Add)
        } else if op.is::<math::Sub>() {
            Some(Arith::Sub)
        } else if op.is::<math::SubF>() {
            Some(Arith::SubF)
        } else if op.is::<math::Mul>() {
            Some(Arith::Mul)
        } else if op.is::<math::Div>() {
            Some(Arith::Div)
        } else {
            None
        }
    }

    fn of_linalg(op: BinOp) -> Option<Arith> {
        match op {
            BinOp::Add => Some(Arith::Add),
            BinOp::Sub => Some(Arith::Sub),
            BinOp::SubF => Some(Arith::SubF),
            BinOp::Mul => Some(Arith::Mul),
            BinOp::Min | BinOp::Max => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Arith::Add => "Add",
            Arith::Sub => "Sub",
            Arith::SubF => "SubF",
            Arith::Mul => "Mul",
            Arith::Div => "Div",
        }
    }
}

/// A chain of f32 element-wise steps over one accumulator: input 0 is the accumulator, input
/// `i + 1` the operand of step `i`. A single step broadcasts both ways (the output may be larger
/// than input 0, as for tract's generic operator); in a longer chain every operand broadcasts
/// into the accumulator's shape (as in tract's `OptBinChain`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Elementwise {
    steps: TVec<Arith>,
    /// The node this replaced: its output facts are this operator's.
    original: Box<dyn TypedOp>,
}

impl Elementwise {
    /// The replacement for `op` when every input of `node` is f32 and the operator is one
    /// this module computes bit for bit the same way.
    pub fn replacing(op: &dyn TypedOp, input_types: &[DatumType]) -> Option<Elementwise> {
        if input_types.iter().any(|&dt| dt != DatumType::F32) {
            return None;
        }
        let steps: TVec<Arith> = if let Some(bin) = op.downcast_ref::<TypedBinOp>() {
            if bin.1.is_some_and(|dt| dt != DatumType::F32) {
                return None;
            }
            tvec![Arith::of_mini(&*bin.0)?]
        } else if let Some(op) = op.downcast_ref::<OptBinUnicast>() {
            tvec![Arith::of_mini(&*op.binop)?]
        } else if let Some(op) = op.downcast_ref::<OptBinByScalar>() {
            tvec![Arith::of_linalg(op.linalg_op)?]
        } else if let Some(op) = op.downcast_ref::<OptBinChain>() {
            op.steps
                .iter()
                .map(|s| Arith::of_linalg(s.linalg_op))
                .collect::<Option<_>>()?
        } else {
            return None;
        };
        (input_types.len() == steps.len() + 1).then(|| Elementwise {
            steps,
            original: tract_onnx::tract_core::dyn_clone::clone_box(op),
        })
    }
}

impl Op for Elementwise {
    fn name(&self) -> StaticName {
        let steps: Vec<&str> = self.steps.iter().map(|s| s.name()).collect();
        format!("Elementwise({})(transfusion)", steps.join("+")).into()
    }

    fn validation(&self) -> Validation {
        Validation::Accurate
    }

    op_as_typed_op!();
}

impl EvalOp for Elementwise {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == self.steps.len() + 1,
            "{} takes {} inputs, got {}",
            self.name(),
            self.steps.len() + 1,
            inputs.len()
        );
        if !inputs.iter().all(|t| dense_f32(t)) {
            // Strided views (left by some tract operators) go back to tract's own operator.
            return self.original.eval(ctx, inputs);
        }
        let mut operands = inputs.into_iter();
        let mut acc = operands
            .next()
            .ok_or_else(|| format_err!("element-wise operator without inputs"))?;
        for (&step, b) in self.steps.iter().zip(operands) {
            acc = apply(step, acc, b)?.into_tvalue();
        }
        Ok(tvec![acc])
    }
}

impl TypedOp for Elementwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.original.output_facts(inputs)
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        self.original.cost(inputs)
    }

    as_op!();
}

/// `a ∘ b` broadcast, computed in place in an operand that already has the output's shape and
/// is not shared, else into a new tensor.
fn apply(step: Arith, a: TValue, b: TValue) -> TractResult<Tensor> {
    let shape = broadcast_shape(a.shape(), b.shape())?;
    let layout = Layout::new(a.shape(), b.shape(), &shape);
    if a.is_exclusive() && a.shape() == &*shape {
        let mut out = a.into_tensor();
        let ys = b.try_as_plain_ram()?;
        run(
            step,
            &layout,
            Side::Out,
            Side::Full(ys.as_slice()?),
            &mut out,
        )?;
        return Ok(out);
    }
    let xs = a.try_as_plain_ram()?;
    if b.is_exclusive() && b.shape() == &*shape {
        let mut out = b.into_tensor();
        run(
            step,
            &layout,
            Side::Full(xs.as_slice()?),
            Side::Out,
            &mut out,
        )?;
        return Ok(out);
    }
    let mut out = Tensor::zero::<f32>(&shape)?;
    let ys = b.try_as_plain_ram()?;
    let (xs, ys) = (Side::Full(xs.as_slice()?), Side::Full(ys.as_slice()?));
    run(step, &layout, xs, ys, &mut out)?;
    Ok(out)
}

/// numpy broadcasting of two shapes of equal rank (tract's operators keep ranks equal).
fn broadcast_shape(a: &[usize], b: &[usize]) -> TractResult<TVec<usize>> {
    ensure!(
        a.len() == b.len(),
        "element-wise operands of ranks {} and {}",
        a.len(),
        b.len()
    );
    a.iter()
        .zip(b)
        .map(|(&x, &y)| match (x, y) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            _ => bail!("shapes {a:?} and {b:?} do not broadcast"),
        })
        .collect()
}

/// How one call walks its operands: an inner run of `inner` elements, contiguous in the
/// output and in every operand that is not broadcast over it, and outer axes.
#[derive(Debug, PartialEq)]
struct Layout {
    inner: usize,
    a_full: bool,
    b_full: bool,
    /// (length, stride in a, stride in b, stride in the output), outermost first; a stride
    /// of 0 broadcasts.
    outer: TVec<(usize, usize, usize, usize)>,
    len: usize,
}

/// One axis of the output that has more than one element.
#[derive(Clone, Copy)]
struct Axis {
    len: usize,
    a_full: bool,
    b_full: bool,
    strides: (usize, usize, usize),
}

impl Layout {
    /// The walk of `c = a ∘ b`, for shapes of equal rank that broadcast to `c`.
    fn new(a: &[usize], b: &[usize], c: &[usize]) -> Layout {
        let (sa, sb, sc) = (c_strides(a), c_strides(b), c_strides(c));
        // Axes of length 1 in the output take no part in the walk.
        let axes: TVec<Axis> = c
            .iter()
            .zip(a.iter().zip(b))
            .zip(sa.iter().zip(&sb).zip(&sc))
            .filter(|((&n, _), _)| n != 1)
            .map(|((&len, (&na, &nb)), ((&sa, &sb), &sc))| Axis {
                len,
                a_full: na != 1,
                b_full: nb != 1,
                strides: (sa, sb, sc),
            })
            .collect();
        let len = c.iter().product();
        let Some(&last) = axes.last() else {
            return Layout {
                inner: 1,
                a_full: true,
                b_full: true,
                outer: tvec![],
                len,
            };
        };
        let kind = |x: &Axis| (x.a_full, x.b_full);
        let split = axes
            .iter()
            .rposition(|x| kind(x) != kind(&last))
            .map_or(0, |p| p + 1);
        let (outer, inner) = axes.split_at_checked(split).unwrap_or((&[], &axes));
        let outer = outer
            .iter()
            .map(|x| {
                let (sa, sb, sc) = x.strides;
                (
                    x.len,
                    if x.a_full { sa } else { 0 },
                    if x.b_full { sb } else { 0 },
                    sc,
                )
            })
            .collect();
        Layout {
            inner: inner.iter().map(|x| x.len).product(),
            a_full: last.a_full,
            b_full: last.b_full,
            outer,
            len,
        }
    }
}

/// Where one operand's values come from.
#[derive(Clone, Copy)]
enum Side<'a> {
    /// Its own buffer, in its own shape.
    Full(&'a [f32]),
    /// The output buffer itself (the operand is updated in place).
    Out,
}

fn run(step: Arith, layout: &Layout, a: Side, b: Side, out: &mut Tensor) -> TractResult<()> {
    let mut view = out.try_as_plain_ram_mut()?;
    let out = view.as_slice_mut::<f32>()?;
    super::wide::avx2(
        #[inline(always)]
        || match step {
            Arith::Add => walk(layout, a, b, out, |x, y| x + y),
            Arith::Sub => walk(layout, a, b, out, |x, y| x - y),
            Arith::SubF => walk(layout, a, b, out, |x, y| y - x),
            Arith::Mul => walk(layout, a, b, out, |x, y| x * y),
            Arith::Div => walk(layout, a, b, out, |x, y| x / y),
        },
    )
}

/// The outer odometer; `f` is inlined into each inner loop.
#[inline(always)]
fn walk<'a, F: Fn(f32, f32) -> f32 + Copy>(
    layout: &Layout,
    a: Side<'a>,
    b: Side<'a>,
    out: &mut [f32],
    f: F,
) -> TractResult<()> {
    if layout.len == 0 {
        return Ok(());
    }
    let n = layout.inner;
    let short = || format_err!("element-wise operand shorter than its shape");
    let operand = |side: Side<'a>, off: usize, full: bool| -> TractResult<Operand<'a>> {
        Ok(match side {
            Side::Out => Operand::Out,
            Side::Full(xs) if full => Operand::Run(xs.get(off..off + n).ok_or_else(short)?),
            Side::Full(xs) => Operand::Scalar(*xs.get(off).ok_or_else(short)?),
        })
    };
    let mut index: TVec<usize> = tvec![0; layout.outer.len()];
    let (mut ao, mut bo, mut co) = (0usize, 0usize, 0usize);
    loop {
        let o = out.get_mut(co..co + n).ok_or_else(short)?;
        let (x, y) = (
            operand(a, ao, layout.a_full)?,
            operand(b, bo, layout.b_full)?,
        );
        inner(o, x, y, f);
        // Next outer index, innermost outer axis first; done when every axis wrapped.
        let mut wrapped = true;
        for (i, &(len, sa, sb, sc)) in index.iter_mut().zip(&layout.outer).rev() {
            *i += 1;
            ao += sa;
            bo += sb;
            co += sc;
            if *i < len {
                wrapped = false;
                break;
            }
            *i = 0;
            ao -= sa * len;
            bo -= sb * len;
            co -= sc * len;
        }
        if wrapped {
            return Ok(());
        }
    }
}

enum Operand<'a> {
    Run(&'a [f32]),
    Scalar(f32),
    Out,
}

#[inline(always)]
fn inner<F: Fn(f32, f32) -> f32>(out: &mut [f32], a: Operand, b: Operand, f: F) {
    use Operand::*;
    match (a, b) {
        (Out, Run(ys)) => out.iter_mut().zip(ys).for_each(|(o, &y)| *o = f(*o, y)),
        (Out, Scalar(y)) => out.iter_mut().for_each(|o| *o = f(*o, y)),
        (Run(xs), Out) => out.iter_mut().zip(xs).for_each(|(o, &x)| *o = f(x, *o)),
        (Scalar(x), Out) => out.iter_mut().for_each(|o| *o = f(x, *o)),
        (Run(xs), Run(ys)) => out
            .iter_mut()
            .zip(xs.iter().zip(ys))
            .for_each(|(o, (&x, &y))| *o = f(x, y)),
        (Run(xs), Scalar(y)) => out.iter_mut().zip(xs).for_each(|(o, &x)| *o = f(x, y)),
        (Scalar(x), Run(ys)) => out.iter_mut().zip(ys).for_each(|(o, &y)| *o = f(x, y)),
        (Scalar(x), Scalar(y)) => out.iter_mut().for_each(|o| *o = f(x, y)),
        (Out, Out) => out.iter_mut().for_each(|o| *o = f(*o, *o)),
    }
}

#[cfg(test)]
#[path = "elementwise_tests.rs"]
mod tests;
