//! `DynamicQuantizeLinear` (every INT8 matrix product's activation quantization).
//!
//! tract 0.23.9 folds the range with a branchy generic `ndarray` fold and rounds each element
//! through a library call, which made it a quarter of the INT8 backbone's time (`transfusion
//! bench --profile`, docs/performance.md). [`DynamicQuantizeU8`] does the same arithmetic —
//! range extended to include 0, `scale = (max − min)/255`, zero point and values rounded half
//! to even, `x / scale` by division — in loops the compiler vectorises.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// ONNX `DynamicQuantizeLinear` to u8: `(y, y_scale, y_zero_point)` of a float32 tensor.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct DynamicQuantizeU8;

/// Lanes of the vectorised loops (one AVX-512 register of f32).
const LANES: usize = 16;

/// `(min(0, xs), max(0, xs))`, NaNs ignored (as tract's fold ignores them).
///
/// Written as compare-and-select, `if v < lo { v } else { lo }`, which is one `minps` (and
/// `maxps`) on x86 and skips a NaN `v` as tract's fold does; `f32::min`, which returns the other
/// operand of a NaN on either side, compiles to a scalar compare and blend per value instead.
#[inline(always)]
fn range(xs: &[f32]) -> (f32, f32) {
    let min = |lo: f32, v: f32| if v < lo { v } else { lo };
    let max = |hi: f32, v: f32| if v > hi { v } else { hi };
    let mut lo = [0f32; LANES];
    let mut hi = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for ((l, h), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(chunk) {
            *l = min(*l, v);
            *h = max(*h, v);
        }
    }
    let lo = lo.into_iter().chain(tail.iter().copied()).fold(0.0, min);
    let hi = hi.into_iter().chain(tail.iter().copied()).fold(0.0, max);
    (lo, hi)
}

/// `scale` and `zero_point` of the range (ONNX: the range includes 0).
fn scale_and_zero_point(lo: f32, hi: f32) -> (f32, u8) {
    let scale = (hi - lo) / 255.0;
    let zero_point = (-lo / scale).round_ties_even().clamp(0.0, 255.0);
    // A NaN zero point (all-zero input: 0 / 0) saturates to 0, as in tract.
    (scale, zero_point as u8)
}

/// Rounds half to even for `|v| <= 2^22` by the float trick `(|v| + 2^23) − 2^23` (exact in
/// round-to-nearest-even arithmetic), so the loop needs no per-element library call.
#[inline(always)]
fn round_half_even(v: f32) -> f32 {
    const M: f32 = 8_388_608.0; // 2^23
    ((v.abs() + M) - M).copysign(v)
}

#[inline(always)]
fn quantize(xs: &[f32], scale: f32, zero_point: u8, ys: &mut [u8]) {
    let zp = f32::from(zero_point);
    for (y, &x) in ys.iter_mut().zip(xs) {
        let q = x / scale;
        // NaN lands on the zero point (tract: `NaN as i32` is 0); past ±2^22 the value
        // saturates to 0 or 255 whatever its rounding, so the clamp keeps the trick exact.
        let q = if q.is_nan() {
            0.0
        } else {
            q.clamp(-4_194_304.0, 4_194_304.0)
        };
        // Integers below 2^24 add exactly: the same value as tract's `i32` sum, clamped.
        let v = (round_half_even(q) + zp).clamp(0.0, 255.0);
        // SAFETY: `v` is an integer in 0..=255 (`q` is not NaN and is clamped), which `i32`
        // holds; unlike `as u8`, whose saturation the compiler keeps per element, the unchecked
        // conversion vectorises.
        *y = unsafe { v.to_int_unchecked::<i32>() } as u8;
    }
}

/// Quantizes `xs` into `ys`; returns the scale and the zero point.
#[inline(always)]
pub(super) fn quantize_all(xs: &[f32], ys: &mut [u8]) -> (f32, u8) {
    let (lo, hi) = range(xs);
    let (scale, zero_point) = scale_and_zero_point(lo, hi);
    quantize(xs, scale, zero_point, ys);
    (scale, zero_point)
}

impl Op for DynamicQuantizeU8 {
    fn name(&self) -> StaticName {
        "DynamicQuantizeU8(transfusion)".into()
    }

    fn validation(&self) -> Validation {
        Validation::Accurate
    }

    op_as_typed_op!();
}

impl EvalOp for DynamicQuantizeU8 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let input = input.cast_to::<f32>()?;
        let plain = input.try_as_plain_ram()?;
        let xs = plain.as_slice::<f32>()?;
        let mut ys = vec![0u8; xs.len()];
        let (scale, zero_point) = super::wide::avx2(
            #[inline(always)]
            || quantize_all(xs, &mut ys),
        );
        // The buffer becomes the tensor's storage: no second copy per call.
        let y = tract_ndarray::ArrayD::from_shape_vec(input.shape(), ys)?.into_tensor();
        Ok(tvec!(
            y.into_tvalue(),
            tensor0(scale).into_tvalue(),
            tensor0(zero_point).into_tvalue()
        ))
    }
}

impl TypedOp for DynamicQuantizeU8 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let input = inputs
            .first()
            .ok_or_else(|| format_err!("DynamicQuantizeU8 takes one input"))?;
        let mut y = (*input).clone();
        y.datum_type = u8::datum_type();
        Ok(tvec!(y, f32::fact([0usize; 0]), u8::fact([0usize; 0])))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tract 0.23.9's arithmetic, written out (tract-onnx `ops/quant.rs`), as the reference.
    fn reference(xs: &[f32]) -> (Vec<u8>, f32, u8) {
        let (min, max) = xs.iter().fold((0f32, 0f32), |(lo, hi), &v| {
            if v < lo {
                (v, hi)
            } else if v > hi {
                (lo, v)
            } else {
                (lo, hi)
            }
        });
        let scale = (max - min) / 255.0;
        // `max` then `min`, as tract writes it (unlike `clamp`, they map NaN to 0).
        #[allow(clippy::manual_clamp)]
        let zp = (-min / scale).round_ties_even().max(0.0).min(255.0) as u8;
        let ys = xs
            .iter()
            .map(|&x| (((x / scale).round_ties_even() as i32) + zp as i32).clamp(0, 255) as u8)
            .collect();
        (ys, scale, zp)
    }

    fn run(xs: &[f32]) -> (Vec<u8>, f32, u8) {
        let input = Tensor::from_shape(&[xs.len()], xs).unwrap();
        let out = DynamicQuantizeU8
            .eval(&EvalContext::out_of_plan(), tvec![input.into_tvalue()])
            .unwrap();
        let ys = out[0]
            .try_as_plain_ram()
            .unwrap()
            .as_slice::<u8>()
            .unwrap()
            .to_vec();
        let scale = *out[1]
            .try_as_plain_ram()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let zp = *out[2]
            .try_as_plain_ram()
            .unwrap()
            .to_scalar::<u8>()
            .unwrap();
        (ys, scale, zp)
    }

    #[test]
    fn onnx_reference_examples() {
        let (ys, scale, zp) = run(&[0., 2., -3., -2.5, 1.34, 0.5]);
        assert_eq!(ys, [153, 255, 0, 26, 221, 179]);
        assert!((scale - 0.019_607_844).abs() < 1e-8);
        assert_eq!(zp, 153);
        assert_eq!(
            run(&[-1., -2.1, -1.3, -2.5, -3.34, -4.]).0,
            [191, 121, 172, 96, 42, 0]
        );
    }

    #[test]
    fn equals_tract_bit_for_bit_on_random_inputs_and_odd_lengths() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32
        };
        for len in [1usize, 7, 15, 16, 17, 33, 255, 256, 1000, 4096 + 3] {
            for spread in [1e-3f32, 1.0, 37.5, 1e4] {
                let xs: Vec<f32> = (0..len).map(|_| (next() * 2.0 - 0.7) * spread).collect();
                let (ys, scale, zp) = run(&xs);
                let (want, want_scale, want_zp) = reference(&xs);
                assert_eq!(
                    scale.to_bits(),
                    want_scale.to_bits(),
                    "len {len} spread {spread}"
                );
                assert_eq!(zp, want_zp, "len {len} spread {spread}");
                assert_eq!(ys, want, "len {len} spread {spread}");
            }
        }
    }

    #[test]
    fn ties_round_to_even_and_edge_values_match() {
        // x / scale lands on .5 exactly: scale = 1 for a range of 255.
        let mut xs: Vec<f32> = vec![-127.5, 127.5, 0.5, 1.5, 2.5, -0.5, -1.5, 0.0, -0.0];
        xs.extend([f32::NAN, 3.25]);
        assert_eq!(run(&xs), reference(&xs));
        let zeros = vec![0.0f32; 20];
        let (ys, _, zp) = run(&zeros);
        let (want, _, want_zp) = reference(&zeros);
        assert_eq!((ys, zp), (want, want_zp));
        let positive: Vec<f32> = (1..40).map(|i| i as f32 * 0.3).collect();
        assert_eq!(run(&positive), reference(&positive));
    }
}
