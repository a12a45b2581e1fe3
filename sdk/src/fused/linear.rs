//! INT8 linear layers as one operator each group: `y_i = (q − z) · (W_i − W₀_i) · s · w_scale_i`
//! for the activation `x` quantized once (`q, s, z` = `DynamicQuantizeLinear(x)`), on the CPUs
//! where [`super::integer::wanted_here`] holds.
//!
//! [`super::linear_onnx`] writes each group of the converter's INT8 layers that read one `x`
//! as one `TransfusionIntegerLinears` node before tract reads the graph; [`integer_linears`] is
//! that node's parser for tract-onnx. The weights are packed into the kernel's panels when tract
//! wires the node, at load, and every layer runs on the same kernel as [`super::IntegerProduct`]
//! ([`super::i16_gemm`]), with the quantization of [`super::DynamicQuantizeU8`] and the rescale in
//! the kernel's stores: the values are those of the five ONNX nodes per layer that tract would run,
//! bit for bit. What changes is the number of nodes: one per group instead of five per layer for
//! tract to type, declutter, optimise and run, and one packing of the activation's rows for Q, K
//! and V instead of three.

use std::sync::Arc;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_hir::internal::{
    check_input_arity, check_output_arity, expand, Expansion, InferenceOp, InferenceResult, Solver,
    TensorProxy,
};

use super::c_order;
use super::f32_tile::Bits;
use super::i16_gemm::{pair_rows, product, Panels, Rescaled};
use super::integer::{scale_product, weights};

/// Parser of the SDK's `TransfusionIntegerLinears` nodes ([`super::linear_onnx`]) for tract-onnx's
/// operator register: inputs `x` then `W, W₀, w_scale` per layer, one output per layer.
pub fn integer_linears(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let inputs = node.input.len();
    let layers = node.output.len();
    ensure!(
        layers > 0 && inputs == 1 + 3 * layers,
        "{}: {inputs} inputs for {layers} layers, expected 1 + 3 per layer",
        node.name
    );
    Ok((expand(IntegerLinearsOnnx { layers }), vec![]))
}

/// The node while tract infers types: `y_i` is `x`'s shape with the last axis `W_i`'s second.
#[derive(Clone, Debug)]
struct IntegerLinearsOnnx {
    layers: usize,
}

impl Expansion for IntegerLinearsOnnx {
    fn name(&self) -> StaticName {
        "IntegerLinears".into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(self.layers)
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1 + 3 * self.layers)?;
        check_output_arity(outputs, self.layers)?;
        let Some(x) = inputs.first() else {
            bail!("IntegerLinears: arity checked above");
        };
        s.equals(&x.datum_type, f32::datum_type())?;
        for (y, w) in outputs.iter().zip(inputs.iter().skip(1).step_by(3)) {
            s.equals(&y.datum_type, f32::datum_type())?;
            s.equals(&y.rank, &x.rank)?;
            s.equals(&w.rank, 2)?;
            s.given_2(&x.shape, &w.shape, move |s, x_shape, w_shape| {
                let mut shape = x_shape;
                if let (Some(last), Some(n)) = (shape.last_mut(), w_shape.get(1)) {
                    *last = n.clone();
                }
                s.equals(&y.shape, shape)
            })?;
        }
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let Some((&x, params)) = inputs.split_first() else {
            bail!("{prefix}: IntegerLinears without input");
        };
        let mut layers = Vec::with_capacity(self.layers);
        for (i, p) in params.chunks_exact(3).enumerate() {
            let fact = |ix: usize| -> TractResult<TypedFact> {
                let outlet = p
                    .get(ix)
                    .ok_or_else(|| format_err!("{prefix}: missing input"))?;
                Ok(model.outlet_fact(*outlet)?.clone())
            };
            let (w, w0, scale) = (fact(0)?, fact(1)?, fact(2)?);
            let (values, shape) = weights(&w, &w0).ok_or_else(|| {
                format_err!("{prefix}: layer {i}: weights are not constant 8-bit values with a constant zero point")
            })?;
            let &[k, n] = shape.as_slice() else {
                bail!("{prefix}: layer {i}: weights of shape {shape:?}, expected [k, n]");
            };
            let scales: Vec<f32> = scale
                .konst
                .as_ref()
                .filter(|t| t.datum_type() == DatumType::F32 && (t.len() == 1 || t.len() == n))
                .map(|t| t.try_as_plain_ram()?.as_slice::<f32>().map(<[f32]>::to_vec))
                .transpose()?
                .ok_or_else(|| {
                    format_err!(
                        "{prefix}: layer {i}: w_scale is not a constant f32 of 1 or {n} values"
                    )
                })?;
            layers.push(Layer {
                panels: Arc::new(Panels::from_rows(&values, k, n)),
                scales: Arc::new(Bits(scales)),
            });
        }
        let k = layers.first().map(|l| l.panels.k());
        ensure!(
            layers.iter().all(|l| Some(l.panels.k()) == k),
            "{prefix}: the layers reduce over different lengths"
        );
        model.wire_node(prefix, IntegerLinears { layers }, &[x])
    }
}

/// One layer: the weights `W − W₀` as the kernel's panels, and `w_scale` (one value, or one per
/// output column).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Layer {
    panels: Arc<Panels>,
    scales: Arc<Bits>,
}

/// The layers of one group, which read the same f32 activation `[…, k]`; output `i` is layer
/// `i`'s `[…, n_i]` in f32.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntegerLinears {
    layers: Vec<Layer>,
}

impl IntegerLinears {
    /// Layers in the group.
    pub fn layers(&self) -> usize {
        self.layers.len()
    }

    fn k(&self) -> usize {
        self.layers.first().map_or(0, |l| l.panels.k())
    }
}

impl Op for IntegerLinears {
    fn name(&self) -> StaticName {
        "IntegerLinears(transfusion)".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let sizes: Vec<String> = self
            .layers
            .iter()
            .map(|l| format!("{}×{}", l.panels.k(), l.panels.n()))
            .collect();
        Ok(vec![format!("{} (i16 panels)", sizes.join(", "))])
    }

    fn validation(&self) -> Validation {
        Validation::Accurate
    }

    op_as_typed_op!();
}

impl EvalOp for IntegerLinears {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let k = self.k();
        ensure!(
            x.datum_type() == DatumType::F32 && c_order(&x) && x.shape().last() == Some(&k),
            "IntegerLinears: input {:?} {:?}, expected dense f32 [..., {k}]",
            x.datum_type(),
            x.shape()
        );
        let plain = x.try_as_plain_ram()?;
        let xs = plain.as_slice::<f32>()?;
        let mut q = vec![0u8; xs.len()];
        let (scale, zero) = super::wide::avx2(
            #[inline(always)]
            || super::quantize::quantize_all(xs, &mut q),
        );
        let rows = pair_rows(&q, k, |v| i16::from(v) - i16::from(zero));
        let mut outputs = TVec::with_capacity(self.layers.len());
        for layer in &self.layers {
            // `x_scale × w_scale[j]`, as the converter's `Mul` of the two computes it.
            let scales = scale_product(&[scale], &layer.scales.0)?;
            let mut shape: TVec<usize> = x.shape().into();
            if let Some(last) = shape.last_mut() {
                *last = layer.panels.n();
            }
            let mut out = Tensor::zero::<f32>(&shape)?;
            {
                let mut view = out.try_as_plain_ram_mut()?;
                let c = view.as_slice_mut::<f32>()?;
                product(&layer.panels, &rows, c, &Rescaled(&scales));
            }
            outputs.push(out.into_tvalue());
        }
        Ok(outputs)
    }
}

impl TypedOp for IntegerLinears {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs
            .first()
            .ok_or_else(|| format_err!("IntegerLinears takes one input"))?;
        Ok(self
            .layers
            .iter()
            .map(|l| {
                let mut shape: TVec<TDim> = x.shape.to_tvec();
                if let Some(last) = shape.last_mut() {
                    *last = l.panels.n().into();
                }
                f32::fact(shape)
            })
            .collect())
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let x = inputs
            .first()
            .ok_or_else(|| format_err!("IntegerLinears takes one input"))?;
        let rows: TDim = x.shape.iter().take(x.rank().saturating_sub(1)).product();
        let macs: TDim = self
            .layers
            .iter()
            .map(|l| rows.clone() * (l.panels.k() * l.panels.n()))
            .sum();
        Ok(tvec!((Cost::FMA(DatumType::I32), macs)))
    }

    as_op!();
}

#[cfg(test)]
#[path = "linear_tests.rs"]
mod tests;
