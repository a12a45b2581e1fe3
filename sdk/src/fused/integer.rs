//! INT8 matrix products `c = Σ_k (a − a₀)(w − w₀)` — u8 activations from
//! `DynamicQuantizeLinear` times constant 8-bit weights, accumulated in i32 — on x86 CPUs with
//! AVX2 and no VNNI.
//!
//! There tract 0.23.9 runs them on its `avx2_mmm_i32_8x8` kernel, whose inner loop reads each
//! step's activations with a legacy-SSE `movq` between AVX2 instructions. With the upper halves
//! of the vector registers dirty, every such read pays the SSE/AVX transition: on an AVX2-only
//! AMD EPYC VM the INT8 backbone ran more than 30× slower than the FP32 one
//! (`TRANSFUSION_FUSED=-integer`, docs/performance.md). [`IntegerProduct`] packs the weights
//! once, at load, and multiplies on the SDK's kernel ([`super::i16_gemm`]): `vpmaddwd`, two i16
//! products summed into an i32 lane, exactly (|a − a₀| ≤ 255 and |w − w₀| ≤ 255 cannot
//! overflow it), so its results are tract's bit for bit. Elsewhere — VNNI x86, ARM — tract's
//! own kernels are fast and keep these products.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cast::Cast;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::math::Mul;

use super::i16_gemm::{pair_rows, product, Panels, Rescaled, Store, Sums};
use super::{c_order, single_position};

/// Whether this CPU runs INT8 products on tract's AVX2 kernel (AVX2 without AVX-512 VNNI or
/// AVX-VNNI), so that [`IntegerProduct`] and [`super::IntegerConv`] are the faster way.
pub fn wanted_here() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
            && !std::arch::is_x86_feature_detected!("avx512vnni")
            && !std::arch::is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether INT8 matrix products run on fast integer kernels on this CPU: x86-64 with AVX-512
/// VNNI or AVX-VNNI (tract's kernels), or with AVX2 alone when `rewrites` lets the SDK's kernel
/// replace tract's slow one there.
pub fn int8_products_fast_here(rewrites: super::Rewrites) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let vnni = std::arch::is_x86_feature_detected!("avx512vnni")
            || std::arch::is_x86_feature_detected!("avxvnni");
        vnni || rewrites.sdk_integer()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = rewrites;
        false
    }
}

/// The value of a constant scalar fact, as `T`.
fn scalar<T: Datum + Copy>(fact: &TypedFact) -> Option<T> {
    let k = fact.konst.as_ref()?;
    if k.len() != 1 || k.datum_type() != T::datum_type() {
        return None;
    }
    k.try_as_plain_ram()
        .ok()?
        .as_slice::<T>()
        .ok()?
        .first()
        .copied()
}

/// Whether the seven inputs after the activations and weights of a quantized tract operator
/// (bias, a₀, a-scale, w₀, w-scale, c₀, c-scale) are what ONNX `MatMulInteger`/`ConvInteger`
/// give: no bias, a scalar activation zero point (u8, or the i32 tract casts it to for its
/// convolutions), unit scales, no output zero point.
pub(super) fn plain_integer(q: &[&TypedFact]) -> bool {
    let [bias, a0, a_scale, _w0, w_scale, c0, c_scale] = q else {
        return false;
    };
    [a_scale, w_scale, c_scale]
        .iter()
        .all(|f| scalar::<f32>(f) == Some(1.0))
        && matches!(a0.datum_type, DatumType::U8 | DatumType::I32)
        && a0.shape.volume() == 1.into()
        && scalar::<i32>(bias) == Some(0)
        && scalar::<i32>(c0) == Some(0)
}

/// The value of a tensor holding one 8-bit zero point (as i8, u8 or i32), if it is one.
fn zero_of(t: &Tensor) -> Option<i16> {
    if t.len() != 1 {
        return None;
    }
    let plain = t.try_as_plain_ram().ok()?;
    let z = match t.datum_type() {
        DatumType::I8 => i32::from(*plain.as_slice::<i8>().ok()?.first()?),
        DatumType::U8 => i32::from(*plain.as_slice::<u8>().ok()?.first()?),
        DatumType::I32 => *plain.as_slice::<i32>().ok()?.first()?,
        _ => return None,
    };
    i16::try_from(z).ok().filter(|z| (-128..=255).contains(z))
}

/// The constant 8-bit weights `w − w₀` as i16, with their shape.
pub(super) fn weights(w: &TypedFact, w0: &TypedFact) -> Option<(Vec<i16>, TVec<usize>)> {
    let t = w.konst.as_ref()?;
    let zero = zero_of(w0.konst.as_ref()?)?;
    let plain = t.try_as_plain_ram().ok()?;
    // Both values lie in −128..=255, so the difference never wraps; `wrapping_sub` only keeps
    // the dev build's overflow check out of a loop over every weight at load.
    let values = match t.datum_type() {
        DatumType::I8 => {
            let v = plain.as_slice::<i8>().ok()?;
            v.iter().map(|&v| i16::from(v).wrapping_sub(zero)).collect()
        }
        DatumType::U8 => {
            let v = plain.as_slice::<u8>().ok()?;
            v.iter().map(|&v| i16::from(v).wrapping_sub(zero)).collect()
        }
        _ => return None,
    };
    Some((values, t.shape().into()))
}

/// The activations' zero point (input 3), a u8 value.
pub(super) fn zero_point(a0: &Tensor) -> Option<i16> {
    zero_of(a0).filter(|z| *z >= 0)
}

/// tract's quantized `EinSum` for a matrix product `[…, m, k] · [k, n] → […, m, n]` of u8
/// activations and constant i8/u8 weights with a constant zero point, no bias and unit scales
/// (how tract reads ONNX `MatMulInteger`), computed with AVX2 `vpmaddwd`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntegerProduct {
    panels: Arc<Panels>,
    /// The node this replaced: its output facts, and the fallback for inputs this operator does
    /// not take.
    original: EinSum,
    /// Whether the product goes on to f32 ([`rescale_products`]).
    rescale: Rescale,
}

/// How an [`IntegerProduct`] goes on to f32: `c[…, j] as f32 × s[j]` with `s` one f32 per output
/// column (or one in all), the `Cast` and `Mul` the converter puts after every `MatMulInteger`,
/// done as the kernel stores its tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rescale {
    /// It does not: the i32 sums are the output.
    No,
    /// `s` is a tenth input.
    By,
    /// `s` is the product of a tenth and an eleventh input (`x_scale × w_scale[j]`, the
    /// activation's scale from `DynamicQuantizeLinear` times the weight's), computed once a
    /// call as tract's `Mul` computed it.
    ByProduct,
}

impl Rescale {
    /// How many inputs past the nine of the quantized product it takes.
    fn inputs(self) -> usize {
        match self {
            Rescale::No => 0,
            Rescale::By => 1,
            Rescale::ByProduct => 2,
        }
    }
}

/// `p[j] × q[j]` for each column, either side one value for all (broadcast): the scales' `Mul`.
pub(super) fn scale_product(p: &[f32], q: &[f32]) -> TractResult<Vec<f32>> {
    let n = p.len().max(q.len());
    let at = |v: &[f32], j: usize| v.get(if v.len() == 1 { 0 } else { j }).copied();
    (0..n)
        .map(|j| Some(at(p, j)? * at(q, j)?))
        .collect::<Option<Vec<f32>>>()
        .filter(|_| (p.len() == 1 || p.len() == n) && (q.len() == 1 || q.len() == n))
        .ok_or_else(|| {
            format_err!(
                "INT8 rescale: scales of {} and {} values do not broadcast",
                p.len(),
                q.len()
            )
        })
}

impl IntegerProduct {
    /// The replacement for a quantized `EinSum` of the form above, or `None`.
    pub fn replacing(op: &dyn TypedOp, facts: &[&TypedFact]) -> Option<IntegerProduct> {
        let einsum = op.downcast_ref::<EinSum>()?;
        let [fa, fw, q @ ..] = facts else {
            return None;
        };
        if einsum.q_params != Some(DatumType::I32)
            || fa.datum_type != DatumType::U8
            || fa.konst.is_some()
            || !plain_integer(q)
        {
            return None;
        }
        let (w, shape) = weights(fw, q.get(3)?)?;
        let [k, n] = *shape.as_slice() else {
            return None;
        };
        let rank = fa.rank();
        if k == 0 || n == 0 || fa.shape.last() != Some(&k.into()) {
            return None;
        }
        // Axes: the activation's last one is the weight's first (summed over); the weight's
        // second is the output's last; every other activation axis keeps its position in the
        // output. Nothing else (the scalar inputs have no axes).
        for axis in einsum.axes.iter_all_axes() {
            if (2..9).any(|i| single_position(&axis.inputs, i) != Some(None)) {
                return None;
            }
            let roles = (
                single_position(&axis.inputs, 0)?,
                single_position(&axis.inputs, 1)?,
                single_position(&axis.outputs, 0)?,
            );
            let fits = match roles {
                (Some(a), Some(0), None) => a + 1 == rank,
                (None, Some(1), Some(c)) => c + 1 == rank,
                (Some(a), None, Some(c)) => a == c && a + 1 < rank,
                _ => false,
            };
            if !fits {
                return None;
            }
        }
        Some(IntegerProduct {
            panels: Arc::new(Panels::from_rows(&w, k, n)),
            original: einsum.clone(),
            rescale: Rescale::No,
        })
    }

    /// The product (rescaled by `scale` when given), or `None` where the inputs are not this
    /// operator's (the caller falls back).
    fn product(
        &self,
        a: &Tensor,
        a0: &Tensor,
        scale: Option<&[f32]>,
    ) -> Option<TractResult<Tensor>> {
        let (k, n) = (self.panels.k(), self.panels.n());
        if a.datum_type() != DatumType::U8 || !c_order(a) || a.shape().last() != Some(&k) {
            return None;
        }
        if scale.is_some_and(|s| s.len() != 1 && s.len() != n) {
            return None;
        }
        let zero = zero_point(a0)?;
        let mut shape: TVec<usize> = a.shape().into();
        *shape.last_mut()? = n;
        Some(self.run(a, zero, &shape, scale))
    }

    fn run(
        &self,
        a: &Tensor,
        zero: i16,
        shape: &[usize],
        scale: Option<&[f32]>,
    ) -> TractResult<Tensor> {
        let plain = a.try_as_plain_ram()?;
        let xs = plain.as_slice::<u8>()?;
        let lhs = pair_rows(xs, self.panels.k(), |v| i16::from(v) - zero);
        match scale {
            None => self.stored(&lhs, shape, &Sums),
            Some(scale) => self.stored(&lhs, shape, &Rescaled(scale)),
        }
    }

    /// A tensor of `shape` holding the product of `lhs` (paired rows) as `store` writes it.
    fn stored<S: Store>(&self, lhs: &[i32], shape: &[usize], store: &S) -> TractResult<Tensor> {
        let mut out = Tensor::zero_dt(S::Out::datum_type(), shape)?;
        let mut view = out.try_as_plain_ram_mut()?;
        product(&self.panels, lhs, view.as_slice_mut::<S::Out>()?, store);
        Ok(out)
    }
}

impl Op for IntegerProduct {
    fn name(&self) -> StaticName {
        "IntegerProduct(transfusion)".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} ({}×{} i16 panels)",
            self.original.axes,
            self.panels.k(),
            self.panels.n()
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Accurate
    }

    op_as_typed_op!();
}

impl EvalOp for IntegerProduct {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, mut inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let extra = self.rescale.inputs();
        let tail: TVec<TValue> = inputs.drain(inputs.len().saturating_sub(extra)..).collect();
        ensure!(
            tail.len() == extra,
            "IntegerProduct: {} scale inputs, expected {extra}",
            tail.len()
        );
        let views = tail
            .iter()
            .map(|t| {
                ensure!(
                    t.datum_type() == DatumType::F32 && c_order(t),
                    "IntegerProduct: a scale input is {:?}, expected f32",
                    t.datum_type()
                );
                t.try_as_plain_ram()
            })
            .collect::<TractResult<TVec<_>>>()?;
        let f32s = views
            .iter()
            .map(|v| v.as_slice::<f32>())
            .collect::<TractResult<TVec<&[f32]>>>()?;
        // Read in place; only a product of two factors is computed (once a call).
        let product;
        let scales = match f32s.as_slice() {
            [] => None,
            [s] => Some(*s),
            [p, q] => {
                product = scale_product(p, q)?;
                Some(product.as_slice())
            }
            _ => bail!("IntegerProduct: more than two scale inputs"),
        };
        if let (Some(a), Some(a0)) = (inputs.first(), inputs.get(3)) {
            if let Some(c) = self.product(a, a0, scales) {
                return Ok(tvec![c?.into_tvalue()]);
            }
        }
        let c = self.original.eval(ctx, inputs)?;
        match scales {
            None => Ok(c),
            Some(scales) => {
                let c = c
                    .first()
                    .ok_or_else(|| format_err!("IntegerProduct: no output"))?;
                Ok(tvec![rescale(c, scales)?.into_tvalue()])
            }
        }
    }
}

/// `c[…, j] as f32 × scale[j]` of tract's i32 output, for the inputs the kernel does not take.
fn rescale(c: &Tensor, scales: &[f32]) -> TractResult<Tensor> {
    let n = c.shape().last().copied().unwrap_or(1).max(1);
    ensure!(
        scales.len() == 1 || scales.len() == n,
        "IntegerProduct: {} scales for {n} columns",
        scales.len()
    );
    let mut out = Tensor::zero::<f32>(c.shape())?;
    let sums = c.try_as_plain_ram()?;
    let rows = sums.as_slice::<i32>()?.chunks(n);
    let mut view = out.try_as_plain_ram_mut()?;
    for (o, row) in view.as_slice_mut::<f32>()?.chunks_mut(n).zip(rows) {
        Rescaled(scales).store(o, row, 0);
    }
    Ok(out)
}

impl TypedOp for IntegerProduct {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let products = inputs.get(..9).unwrap_or(inputs);
        let mut facts = self.original.output_facts(products)?;
        if self.rescale != Rescale::No {
            for fact in facts.iter_mut() {
                *fact = DatumType::F32.fact(fact.shape.clone());
            }
        }
        Ok(facts)
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        self.original.cost(inputs.get(..9).unwrap_or(inputs))
    }

    as_op!();
}

/// Folds into each [`IntegerProduct`] of `model` the `Cast` to f32 and the `Mul` by one f32 per
/// output column (or one in all) that follow it, when nothing else reads the product or its
/// cast: the converter's dequantization `y = f32(c) × x_scale × w_scale[j]`, done as the kernel
/// stores its tiles instead of in two passes over the output; the same values, bit for bit.
/// Returns how many were folded.
pub fn rescale_products(model: &mut TypedModel) -> TractResult<usize> {
    let mut folds = Vec::new();
    for node in model.nodes() {
        let Some(op) = node
            .op_as::<IntegerProduct>()
            .filter(|op| op.rescale == Rescale::No)
        else {
            continue;
        };
        let outputs = model.output_outlets()?;
        let only_successor = |outlet: OutletId| match model.outlet_successors(outlet) {
            [next] if !outputs.contains(&outlet) => Some(model.node(next.node)),
            _ => None,
        };
        let Some(cast) = only_successor(node.id.into()) else {
            continue;
        };
        if cast.op_as::<Cast>().map(|c| c.to) != Some(DatumType::F32) {
            continue;
        }
        let Some(mul) = only_successor(cast.id.into()) else {
            continue;
        };
        let is_mul = mul
            .op_as::<TypedBinOp>()
            .is_some_and(|b| b.0.is::<Mul>() && b.1.is_none());
        let scale = match mul.inputs.as_slice() {
            [a, s] | [s, a] if is_mul && a.node == cast.id && s.node != cast.id => *s,
            _ => continue,
        };
        let cast_shape = &model.outlet_fact(cast.id.into())?.shape;
        let same_shape = model.outlet_fact(mul.id.into())?.shape == *cast_shape;
        // f32, and one scale or one per output column: ones on every axis but the last.
        let per_column = |outlet: OutletId| {
            model.outlet_fact(outlet).is_ok_and(|f| {
                f.datum_type == DatumType::F32
                    && match f.shape.dims().split_last() {
                        Some((last, rest)) => {
                            rest.iter().all(|d| *d == 1.into())
                                && (*last == 1.into() || Some(last) == cast_shape.dims().last())
                        }
                        None => true,
                    }
            })
        };
        if !per_column(scale) || !same_shape {
            continue;
        }
        // The scale itself a product of two such factors read by nothing else (`x_scale ×
        // w_scale`, given leading axes of length 1 to match the product's rank): they are taken
        // instead, and the `Mul` and the axes go too.
        let mut product = scale;
        while let [from] = model.node(product.node).inputs.as_slice() {
            let added = model
                .node(product.node)
                .op_as::<AxisOp>()
                .is_some_and(|op| matches!(op, AxisOp::Add(_)));
            if !added || only_successor(product).is_none() {
                break;
            }
            product = *from;
        }
        let producer = model.node(product.node);
        let factors = match producer.inputs.as_slice() {
            [p, q]
                if producer
                    .op_as::<TypedBinOp>()
                    .is_some_and(|b| b.0.is::<Mul>() && b.1.is_none())
                    && only_successor(product).is_some()
                    && per_column(*p)
                    && per_column(*q) =>
            {
                Some((*p, *q))
            }
            _ => None,
        };
        let mut inputs = node.inputs.clone();
        let rescale = match factors {
            Some((p, q)) => {
                inputs.extend([p, q]);
                Rescale::ByProduct
            }
            None => {
                inputs.push(scale);
                Rescale::By
            }
        };
        let rescaled = IntegerProduct {
            rescale,
            ..op.clone()
        };
        folds.push((format!("{}.rescaled", node.name), rescaled, inputs, mul.id));
    }
    let folded = folds.len();
    for (name, op, inputs, mul) in folds {
        let mut patch = TypedModelPatch::new("rescaled integer product");
        let taps = patch.taps(model, &inputs)?;
        let out = patch.wire_node(name, op, &taps)?;
        let out = *out
            .first()
            .ok_or_else(|| format_err!("IntegerProduct wired no output"))?;
        patch.shunt_outside(model, mul.into(), out)?;
        patch.apply(model)?;
    }
    Ok(folded)
}

#[cfg(test)]
#[path = "integer_tests.rs"]
mod tests;
