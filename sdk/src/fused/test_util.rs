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
