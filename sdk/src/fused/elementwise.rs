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

use super::dense_f32;
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

/// C-order strides, in elements.
fn strides(shape: &[usize]) -> TVec<usize> {
    let mut s: TVec<usize> = shape
        .iter()
        .rev()
        .scan(1, |acc, &n| {
            let stride = *acc;
            *acc *= n;
            Some(stride)
        })
        .collect();
    s.reverse();
    s
}

impl Layout {
    /// The walk of `c = a ∘ b`, for shapes of equal rank that broadcast to `c`.
    fn new(a: &[usize], b: &[usize], c: &[usize]) -> Layout {
        let (sa, sb, sc) = (strides(a), strides(b), strides(c));
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
    match step {
        Arith::Add => walk(layout, a, b, out, |x, y| x + y),
        Arith::Sub => walk(layout, a, b, out, |x, y| x - y),
        Arith::SubF => walk(layout, a, b, out, |x, y| y - x),
        Arith::Mul => walk(layout, a, b, out, |x, y| x * y),
        Arith::Div => walk(layout, a, b, out, |x, y| x / y),
    }
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
mod tests {
    use super::*;

    /// xorshift: deterministic inputs without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        /// Mostly ordinary values, sometimes zeros, infinities, NaN and subnormals.
        fn value(&mut self) -> f32 {
            match self.below(40) {
                0 => f32::NAN,
                1 => f32::INFINITY,
                2 => f32::NEG_INFINITY,
                3 => 0.0,
                4 => -0.0,
                5 => 1e-40,
                _ => ((self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0,
            }
        }
        fn tensor(&mut self, shape: &[usize]) -> Tensor {
            let n = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|_| self.value()).collect();
            Tensor::from_shape(shape, &data).unwrap()
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
        let (got, want) = (
            got.try_as_plain_ram().unwrap(),
            want.try_as_plain_ram().unwrap(),
        );
        let (got, want) = (
            got.as_slice::<f32>().unwrap(),
            want.as_slice::<f32>().unwrap(),
        );
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
            let inputs = [rng.tensor(&sa), rng.tensor(&sb)];
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
            let x = rng.tensor(&[1, c, h, w]);
            // A [C] constant brought to [1, C, 1, 1] by inserting axes, as tract does: the
            // inserted axes keep strides that are not C order.
            let mut gain = rng.tensor(&[c]);
            let mut bias = rng.tensor(&[c]);
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
}
