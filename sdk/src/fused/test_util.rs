//! What the operator tests of this module share: deterministic inputs and reading results.

use tract_onnx::prelude::*;

/// xorshift: deterministic inputs without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// An f32 tensor of `shape` with values from `value`.
    pub fn tensor(&mut self, shape: &[usize], value: impl Fn(&mut Rng) -> f32) -> Tensor {
        let n = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| value(self)).collect();
        Tensor::from_shape(shape, &data).unwrap()
    }
}

/// The values of an f32 tensor.
pub fn f32s(t: &Tensor) -> Vec<f32> {
    t.try_as_plain_ram()
        .unwrap()
        .as_slice::<f32>()
        .unwrap()
        .to_vec()
}

/// A u8 tensor of `shape`, uniform over 0..=255.
pub fn u8s(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<u8> = (0..n).map(|_| rng.below(256) as u8).collect();
    Tensor::from_shape(shape, &v).unwrap()
}

/// An i8 tensor of `shape`, uniform over −128..=127 (both extremes included: they are where a
/// saturating kernel would go wrong).
pub fn i8s(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<i8> = (0..n)
        .map(|_| (rng.below(256) as i32 - 128) as i8)
        .collect();
    Tensor::from_shape(shape, &v).unwrap()
}

/// The nine inputs of a quantized tract product or convolution as tract reads ONNX
/// `MatMulInteger`/`ConvInteger`: activations, weights, bias 0, activation zero point, scale 1,
/// weight zero point, scale 1, output zero point 0, scale 1.
pub fn quantized_inputs(x: Tensor, x0: Tensor, w: Tensor, w0: Tensor) -> TVec<TValue> {
    tvec![
        x.into_tvalue(),
        w.into_tvalue(),
        tensor0(0i32).into_tvalue(),
        x0.into_tvalue(),
        tensor0(1f32).into_tvalue(),
        w0.into_tvalue(),
        tensor0(1f32).into_tvalue(),
        tensor0(0i32).into_tvalue(),
        tensor0(1f32).into_tvalue(),
    ]
}

/// Facts of [`quantized_inputs`]: every input but the activations and their zero point constant.
pub fn quantized_facts(inputs: &[TValue]) -> Vec<TypedFact> {
    inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if i == 0 || i == 3 {
                TypedFact::shape_and_dt_of(t)
            } else {
                TypedFact::try_from(t.clone().into_arc_tensor()).unwrap()
            }
        })
        .collect()
}
