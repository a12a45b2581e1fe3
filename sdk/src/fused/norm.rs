//! ONNX `InstanceNormalization` as one operator: the GroupNorm of the U-Net patch layers and the
//! VAE, which the converter writes as InstanceNormalization over `[B, groups, rest]`.
//!
//! tract expands InstanceNormalization into a mean, a difference, a square, a second mean, an
//! epsilon, a reciprocal square root and an affine step; after optimisation 3–5 nodes remain a
//! norm (a sum, a subtraction, tract's RMS normalisation), each its own pass over the tensor —
//! 0.9 ms of the 8.5 ms VAE decode (`transfusion bench --profile`, docs/performance.md).
//! [`InstanceNorm`] makes two passes over each normalised plane, which fits in the cache: the
//! mean, then the variance of the differences, then writes `(x − mean) · s + bias` with
//! `s = scale / √(variance + ε)`. The sums run in a different order from tract's, so values
//! agree to rounding, not bit for bit.
//!
//! The SDK registers [`instance_normalization`] as the parser of the ONNX operator for the
//! graphs it runs on tract's CPU runtime (GPU runtimes keep tract's expansion, which they
//! translate to their own kernels).

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cast::cast;
use tract_onnx::tract_hir::internal::{
    check_input_arity, check_output_arity, expand, Expansion, InferenceOp, InferenceResult, Solver,
    TensorProxy,
};

use super::dense_f32;

/// ONNX's default `epsilon` of InstanceNormalization.
const DEFAULT_EPSILON: f32 = 1e-5;

/// Parser of ONNX `InstanceNormalization` nodes for `tract_onnx`'s operator register.
pub fn instance_normalization(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let epsilon = node.get_attr_opt("epsilon")?.unwrap_or(DEFAULT_EPSILON);
    Ok((expand(InstanceNormalization { epsilon }), vec![]))
}

/// The ONNX operator while tract infers types: the same rules as ONNX states them, wired as
/// one [`InstanceNorm`] (in f32, with casts around it for other float types).
#[derive(Clone, Debug)]
struct InstanceNormalization {
    epsilon: f32,
}

impl Expansion for InstanceNormalization {
    fn name(&self) -> StaticName {
        "InstanceNormalization".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 3)?;
        check_output_arity(outputs, 1)?;
        let ([x, scale, bias], [y]) = (inputs, outputs) else {
            bail!("InstanceNormalization: arity checked above");
        };
        s.equals(&x.datum_type, &y.datum_type)?;
        s.equals(&x.datum_type, &scale.datum_type)?;
        s.equals(&x.datum_type, &bias.datum_type)?;
        s.equals(&scale.shape, &bias.shape)?;
        s.equals(&x.shape, &y.shape)?;
        s.equals(&scale.shape[0], &x.shape[1])?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let x = inputs
            .first()
            .ok_or_else(|| format_err!("InstanceNormalization without input"))?;
        let dt = model.outlet_fact(*x)?.datum_type;
        if dt == DatumType::F32 {
            return model.wire_node(prefix, InstanceNorm::new(self.epsilon), inputs);
        }
        let mut f32_inputs = tvec![];
        for (ix, input) in inputs.iter().enumerate() {
            f32_inputs.extend(model.wire_node(
                format!("{prefix}.to_f32.{ix}"),
                cast(DatumType::F32),
                &[*input],
            )?);
        }
        let normed = model.wire_node(
            format!("{prefix}.f32"),
            InstanceNorm::new(self.epsilon),
            &f32_inputs,
        )?;
        model.wire_node(prefix, cast(dt), &normed)
    }
}

/// `y[n, c, …] = (x[n, c, …] − mean) · scale[c] / √(variance + ε) + bias[c]`, the mean and
/// variance taken over the axes past the second, for f32 `x [N, C, …]`, `scale [C]`, `bias [C]`.
#[derive(Clone, Debug)]
pub struct InstanceNorm {
    epsilon: f32,
}

/// Equal when the epsilons are the same bits (tract compares operators to merge nodes).
impl PartialEq for InstanceNorm {
    fn eq(&self, other: &Self) -> bool {
        self.epsilon.to_bits() == other.epsilon.to_bits()
    }
}

impl Eq for InstanceNorm {}

impl InstanceNorm {
    pub fn new(epsilon: f32) -> InstanceNorm {
        InstanceNorm { epsilon }
    }
}

/// Σ `value(x)` over `xs`, with eight partial sums so the loop vectorises.
#[inline(always)]
pub(super) fn sum(xs: &[f32], value: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|&x| value(x)).sum();
    for chunk in chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a += value(x);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Normalises `plane` into `out` (same length).
#[inline(always)]
fn normalise(plane: &[f32], out: &mut [f32], epsilon: f32, scale: f32, bias: f32) {
    let n = plane.len().max(1) as f32;
    let mean = sum(plane, |x| x) / n;
    let variance = sum(plane, |x| (x - mean) * (x - mean)) / n;
    let s = scale / (variance + epsilon).sqrt();
    for (y, &x) in out.iter_mut().zip(plane) {
        *y = (x - mean) * s + bias;
    }
}

impl Op for InstanceNorm {
    fn name(&self) -> StaticName {
        "InstanceNorm(transfusion)".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("epsilon: {}", self.epsilon)])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for InstanceNorm {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let [x, scale, bias] = inputs.as_slice() else {
            bail!(
                "InstanceNorm takes 3 inputs (x, scale, bias), got {}",
                inputs.len()
            );
        };
        let shape = x.shape();
        let (Some(&batch), Some(&channels)) = (shape.first(), shape.get(1)) else {
            bail!("InstanceNorm: input of shape {shape:?}, expected [N, C, …]");
        };
        let (scale, bias) = (scale.cast_to::<f32>()?, bias.cast_to::<f32>()?);
        let (scale, bias) = (scale.try_as_plain_ram()?, bias.try_as_plain_ram()?);
        let (scale, bias) = (scale.as_slice::<f32>()?, bias.as_slice::<f32>()?);
        if scale.len() != channels || bias.len() != channels {
            bail!(
                "InstanceNorm: scale and bias of {} and {} values for {channels} channels",
                scale.len(),
                bias.len()
            );
        }
        if !dense_f32(x) {
            bail!(
                "InstanceNorm: input is {:?}, expected dense f32",
                x.datum_type()
            );
        }
        let xs = x.try_as_plain_ram()?;
        let xs = xs.as_slice::<f32>()?;
        let mut out = Tensor::zero::<f32>(shape)?;
        let plane = shape.iter().skip(2).product::<usize>();
        if plane > 0 && batch > 0 && channels > 0 {
            let mut view = out.try_as_plain_ram_mut()?;
            let ys = view.as_slice_mut::<f32>()?;
            let params = scale.iter().zip(bias).cycle();
            let planes = xs.chunks_exact(plane).zip(ys.chunks_exact_mut(plane));
            super::wide::avx2(
                #[inline(always)]
                || {
                    for ((xp, yp), (&s, &b)) in planes.zip(params) {
                        normalise(xp, yp, self.epsilon, s, b);
                    }
                },
            );
        }
        Ok(tvec![out.into_tvalue()])
    }
}

impl TypedOp for InstanceNorm {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs
            .first()
            .ok_or_else(|| format_err!("InstanceNorm without input"))?;
        Ok(tvec![f32::fact(x.shape.clone())])
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::test_util::{f32s, Rng};

    /// The operator's output for `x`, `scale`, `bias`, or its error.
    fn normed(x: &Tensor, scale: &Tensor, bias: &Tensor) -> TractResult<Tensor> {
        let inputs = tvec![
            x.clone().into_tvalue(),
            scale.clone().into_tvalue(),
            bias.clone().into_tvalue()
        ];
        let mut out = InstanceNorm::new(1e-5).eval(&EvalContext::out_of_plan(), inputs)?;
        Ok(out.remove(0).into_tensor())
    }

    /// Against the definition in f64, at the VAE's shape kind and odd ones.
    #[test]
    fn normalises_each_plane_as_defined() {
        let mut rng = Rng(17);
        for shape in [
            vec![1usize, 8, 4 * 64],
            vec![2, 3, 5, 7],
            vec![1, 2, 1],
            vec![1, 4, 13],
        ] {
            let x = rng.tensor(&shape, |r| r.unit() * 6.0 - 2.0);
            let c = shape[1];
            let scale = rng.tensor(&[c], |r| r.unit() + 0.5);
            let bias = rng.tensor(&[c], |r| r.unit() - 0.5);
            let got = normed(&x, &scale, &bias).unwrap();
            assert_eq!(got.shape(), x.shape());
            let (xs, got) = (f32s(&x), f32s(&got));
            let (scale, bias) = (f32s(&scale), f32s(&bias));
            let plane: usize = shape[2..].iter().product();
            for (p, (xp, yp)) in xs.chunks(plane).zip(got.chunks(plane)).enumerate() {
                let n = plane as f64;
                let mean = xp.iter().map(|&v| v as f64).sum::<f64>() / n;
                let var = xp.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
                let (s, b) = (scale[p % c] as f64, bias[p % c] as f64);
                for (&v, &y) in xp.iter().zip(yp) {
                    let want = (v as f64 - mean) / (var + 1e-5).sqrt() * s + b;
                    assert!(
                        (y as f64 - want).abs() < 1e-4,
                        "{shape:?} plane {p}: {y} vs {want}"
                    );
                }
            }
        }
    }

    /// Through tract's type inference and optimisation, as the ONNX parser wires it: f32 as
    /// one operator, f16 with casts around it.
    #[test]
    fn the_parsed_operator_runs_in_a_graph_of_either_float_type() {
        use tract_onnx::tract_hir::prelude::{InferenceFact, InferenceModel};
        let mut rng = Rng(29);
        let x = rng.tensor(&[1, 2, 6], |r| r.unit() * 4.0 - 1.0);
        let scale = tensor1(&[1.5f32, 0.5]);
        let bias = tensor1(&[0.25f32, -1.0]);
        let want = normed(&x, &scale, &bias).unwrap();
        for dt in [DatumType::F32, DatumType::F16] {
            let cast = |t: &Tensor| t.cast_to_dt(dt).unwrap().into_owned();
            let mut model = InferenceModel::default();
            let source = model
                .add_source("x", InferenceFact::dt_shape(dt, [1usize, 2, 6]))
                .unwrap();
            let s = model.add_const("scale", cast(&scale)).unwrap();
            let b = model.add_const("bias", cast(&bias)).unwrap();
            let op = expand(InstanceNormalization { epsilon: 1e-5 });
            let y = model.wire_node("norm", op, &[source, s, b]).unwrap();
            model.select_output_outlets(&y).unwrap();
            let plan = model.into_optimized().unwrap().into_runnable().unwrap();
            let got = plan.run(tvec![cast(&x).into_tvalue()]).unwrap().remove(0);
            assert_eq!(got.datum_type(), dt);
            let got = got.cast_to::<f32>().unwrap().into_owned();
            let tol = if dt == DatumType::F16 { 4e-3 } else { 1e-6 };
            for (g, w) in f32s(&got).iter().zip(f32s(&want)) {
                assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{dt:?}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn wrong_parameters_are_errors() {
        let x = Tensor::zero::<f32>(&[1, 3, 4]).unwrap();
        let two = Tensor::zero::<f32>(&[2]).unwrap();
        let err = normed(&x, &two, &two).unwrap_err();
        assert!(format!("{err}").contains("3 channels"), "{err}");
        let scalar = tensor0(1f32);
        assert!(normed(&scalar, &scalar, &scalar).is_err());
    }
}
