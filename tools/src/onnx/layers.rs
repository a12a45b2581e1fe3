//! The model's layers as ONNX subgraphs: linear/conv (float or integer kernels), norms, SiLU,
//! ResBlocks, nearest upsampling and the timestep embedding. Numerics follow `docs/checkpoint.md`.

use transfusion_sdk::config::{GROUP_NORM_EPS, NORM_GROUPS};
use transfusion_sdk::manifest::FloatDtype;

use super::builder::{Attr, GraphBuilder};
use super::quant::{quantize_per_channel, Int8Parts, QuantGroup};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};

/// A graph under construction with access to the checkpoint's weights.
pub struct Net<'a> {
    pub b: GraphBuilder,
    weights: &'a Checkpoint,
    int8: Option<Int8Parts>,
    /// Whether any integer kernel was emitted.
    pub used_int8: bool,
}

impl<'a> Net<'a> {
    /// A graph in `float`, quantizing the groups in `int8` (None: no quantization).
    pub fn new(weights: &'a Checkpoint, float: FloatDtype, int8: Option<Int8Parts>) -> Self {
        Net {
            b: GraphBuilder::new(float),
            weights,
            int8,
            used_int8: false,
        }
    }

    fn quantized(&self, group: QuantGroup) -> bool {
        self.int8.is_some_and(|parts| parts.contains(group))
    }

    /// The checkpoint tensor `name` with its expected shape (and its length) checked.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<&'a [f32]> {
        let t = self.weights.get(name)?;
        let path = || self.weights.dir.join("model.safetensors");
        if t.shape != shape {
            return Err(Error::TensorShape {
                path: path(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: t.shape.clone(),
            });
        }
        let len: usize = shape.iter().product();
        if t.data.len() != len {
            return Err(Error::Invalid(format!(
                "{}: tensor `{name}` holds {} values, its shape {shape:?} needs {len}",
                path().display(),
                t.data.len()
            )));
        }
        Ok(&t.data)
    }

    /// A checkpoint tensor stored as a constant of the graph's float type.
    pub fn weight(&mut self, name: &str, shape: &[usize]) -> Result<String> {
        let data = self.tensor(name, shape)?;
        Ok(self.b.const_float(name, shape, data))
    }

    /// Casts `x` to float32 (no-op in float32 graphs).
    pub fn to_f32(&mut self, x: &str) -> String {
        match self.b.float() {
            FloatDtype::Float32 => x.to_string(),
            FloatDtype::Float16 => self.b.op("Cast", &[x], vec![("to", Attr::Int(1))]),
        }
    }

    /// Casts a float32 value back to the graph's float type.
    pub fn from_f32(&mut self, x: &str) -> String {
        match self.b.float() {
            FloatDtype::Float32 => x.to_string(),
            FloatDtype::Float16 => self.b.op("Cast", &[x], vec![("to", Attr::Int(10))]),
        }
    }

    /// `x · σ(x)`.
    pub fn silu(&mut self, x: &str) -> String {
        let s = self.b.op("Sigmoid", &[x], vec![]);
        self.b.op("Mul", &[x, &s], vec![])
    }

    /// `Linear(x)` with `prefix.weight [out, in]` and optional `prefix.bias [out]`.
    pub fn linear(
        &mut self,
        x: &str,
        prefix: &str,
        (n_in, n_out): (usize, usize),
        bias: bool,
        group: QuantGroup,
    ) -> Result<String> {
        let w = self.tensor(&format!("{prefix}.weight"), &[n_out, n_in])?;
        let wt = transpose(w, n_out, n_in);
        let y = if self.quantized(group) {
            // Per-output-channel symmetric int8 weights, per-tensor dynamic u8 activations:
            // MatMulInteger runs on tract's (and onnxruntime's) integer kernels. The weights'
            // zero point (0) is written out: onnxruntime's `session.x64quantprecision`
            // rewrite, which avoids its u8×s8 saturation on x86 without VNNI, needs it.
            let (q, scales) = quantize_per_channel(&wt, n_out, |i| i % n_out)?;
            let wq = self
                .b
                .const_i8(&format!("{prefix}.weight_i8"), &[n_in, n_out], &q);
            let wz = self.b.const_i8(&format!("{prefix}.weight_zero"), &[], &[0]);
            let ws = self
                .b
                .const_f32(&format!("{prefix}.weight_scale"), &[n_out], &scales);
            self.integer_op("MatMulInteger", x, &wq, Some(&wz), &ws, vec![])
        } else {
            let wc = self
                .b
                .const_float(&format!("{prefix}.weight_t"), &[n_in, n_out], &wt);
            self.b.op("MatMul", &[x, &wc], vec![])
        };
        if bias {
            let bname = format!("{prefix}.bias");
            let bc = self.weight(&bname, &[n_out])?;
            Ok(self.b.op("Add", &[&y, &bc], vec![]))
        } else {
            Ok(y)
        }
    }

    /// Quantizes `x` dynamically, runs `op` (MatMulInteger/ConvInteger) on integer weights
    /// `wq`, and rescales the int32 result by `x_scale · w_scale` back to float32.
    fn integer_op(
        &mut self,
        op: &str,
        x: &str,
        wq: &str,
        w_zero: Option<&str>,
        w_scale: &str,
        attrs: Vec<(&str, Attr)>,
    ) -> String {
        self.used_int8 = true;
        let [xq, x_scale, x_zero] = self.b.node_n("DynamicQuantizeLinear", &[x], vec![]);
        let mut inputs = vec![xq.as_str(), wq, x_zero.as_str()];
        if let Some(z) = w_zero {
            inputs.push(z);
        }
        let acc = self.b.op(op, &inputs, attrs);
        let accf = self.b.op("Cast", &[&acc], vec![("to", Attr::Int(1))]);
        let scale = self.b.op("Mul", &[&x_scale, w_scale], vec![]);
        self.b.op("Mul", &[&accf, &scale], vec![])
    }

    /// 2-D convolution `prefix.weight [out, in, k, k]` + `prefix.bias`, padding `k / 2`.
    pub fn conv(
        &mut self,
        x: &str,
        prefix: &str,
        (c_in, c_out, k): (usize, usize, usize),
        stride: usize,
        group: QuantGroup,
    ) -> Result<String> {
        let shape = [c_out, c_in, k, k];
        let pad = (k / 2) as i64;
        let attrs = || {
            vec![
                ("kernel_shape", Attr::Ints(vec![k as i64, k as i64])),
                ("pads", Attr::Ints(vec![pad; 4])),
                ("strides", Attr::Ints(vec![stride as i64; 2])),
            ]
        };
        let bias_name = format!("{prefix}.bias");
        if self.quantized(group) {
            let w = self.tensor(&format!("{prefix}.weight"), &shape)?;
            let per = c_in * k * k;
            let (q, scales) = quantize_per_channel(w, c_out, |i| i / per)?;
            // onnxruntime's ConvInteger takes uint8 weights only: store the symmetric int8
            // values shifted by a zero point of 128 (same numbers, same integer kernels).
            let qu: Vec<u8> = q.iter().map(|&v| (i16::from(v) + 128) as u8).collect();
            let wq = self.b.const_u8(&format!("{prefix}.weight_u8"), &shape, &qu);
            let wz = self
                .b
                .const_u8(&format!("{prefix}.weight_zero"), &[], &[128]);
            let ws = self.b.const_f32(
                &format!("{prefix}.weight_scale"),
                &[1, c_out, 1, 1],
                &scales,
            );
            let y = self.integer_op("ConvInteger", x, &wq, Some(&wz), &ws, attrs());
            let bias = self.tensor(&bias_name, &[c_out])?;
            let bc = self.b.const_f32(&bias_name, &[1, c_out, 1, 1], bias);
            Ok(self.b.op("Add", &[&y, &bc], vec![]))
        } else {
            let wc = self.weight(&format!("{prefix}.weight"), &shape)?;
            let bc = self.weight(&bias_name, &[c_out])?;
            Ok(self.b.op("Conv", &[x, &wc, &bc], attrs()))
        }
    }

    /// RMSNorm over the last axis, computed in float32.
    pub fn rms_norm(&mut self, x: &str, weight: &str, dim: usize, eps: f32) -> Result<String> {
        let w = self.tensor(weight, &[dim])?;
        let wc = self.b.const_f32(weight, &[dim], w);
        let x32 = self.to_f32(x);
        let sq = self.b.op("Mul", &[&x32, &x32], vec![]);
        let ms = self.b.op(
            "ReduceMean",
            &[&sq],
            vec![("axes", Attr::Ints(vec![-1])), ("keepdims", Attr::Int(1))],
        );
        let e = self.b.const_f32("eps", &[], &[eps]);
        let ms = self.b.op("Add", &[&ms, &e], vec![]);
        let rms = self.b.op("Sqrt", &[&ms], vec![]);
        let y = self.b.op("Div", &[&x32, &rms], vec![]);
        let y = self.b.op("Mul", &[&y, &wc], vec![]);
        Ok(self.from_f32(&y))
    }

    /// GroupNorm (8 groups) with `prefix.weight`/`prefix.bias [c]`, computed in float32.
    ///
    /// Written as InstanceNormalization over `[B, groups, rest]`, which both tract and
    /// onnxruntime run as one fused kernel.
    pub fn group_norm(&mut self, x: &str, prefix: &str, c: usize) -> Result<String> {
        let gamma = self.tensor(&format!("{prefix}.weight"), &[c])?;
        let beta = self.tensor(&format!("{prefix}.bias"), &[c])?;
        let x32 = self.to_f32(x);
        let shape = self.b.op("Shape", &[&x32], vec![]);
        let grouped_shape = self.b.ints("group_shape", &[0, NORM_GROUPS as i64, -1]);
        let grouped = self.b.op("Reshape", &[&x32, &grouped_shape], vec![]);
        let ones = self
            .b
            .const_f32("ones", &[NORM_GROUPS], &[1.0; NORM_GROUPS]);
        let zeros = self
            .b
            .const_f32("zeros", &[NORM_GROUPS], &[0.0; NORM_GROUPS]);
        let normed = self.b.op(
            "InstanceNormalization",
            &[&grouped, &ones, &zeros],
            vec![("epsilon", Attr::Float(GROUP_NORM_EPS))],
        );
        let back = self.b.op("Reshape", &[&normed, &shape], vec![]);
        let g = self
            .b
            .const_f32(&format!("{prefix}.weight"), &[c, 1, 1], gamma);
        let bt = self
            .b
            .const_f32(&format!("{prefix}.bias"), &[c, 1, 1], beta);
        let y = self.b.op("Mul", &[&back, &g], vec![]);
        let y = self.b.op("Add", &[&y, &bt], vec![]);
        Ok(self.from_f32(&y))
    }

    /// Nearest-neighbour ×2 upsampling (PyTorch `interpolate(scale_factor=2, mode="nearest")`).
    pub fn upsample2(&mut self, x: &str) -> String {
        let scales = self.b.const_f32("scales", &[4], &[1.0, 1.0, 2.0, 2.0]);
        self.b.op(
            "Resize",
            &[x, "", &scales],
            vec![
                ("mode", Attr::Str("nearest")),
                ("coordinate_transformation_mode", Attr::Str("asymmetric")),
                ("nearest_mode", Attr::Str("floor")),
            ],
        )
    }

    /// ResBlock `prefix (c_in → c_out)`; `temb_act` is `SiLU(temb)` `[B, D]` when timed.
    pub fn resblock(
        &mut self,
        x: &str,
        prefix: &str,
        (c_in, c_out): (usize, usize),
        temb_act: Option<(&str, usize)>,
        group: QuantGroup,
    ) -> Result<String> {
        let h = self.group_norm(x, &format!("{prefix}.norm1"), c_in)?;
        let h = self.silu(&h);
        let mut h = self.conv(&h, &format!("{prefix}.conv1"), (c_in, c_out, 3), 1, group)?;
        if let Some((t, dim)) = temb_act {
            let proj = self.linear(t, &format!("{prefix}.temb_proj"), (dim, c_out), true, group)?;
            let axes = self.b.ints("axes", &[2, 3]);
            let proj = self.b.op("Unsqueeze", &[&proj, &axes], vec![]);
            h = self.b.op("Add", &[&h, &proj], vec![]);
        }
        let h = self.group_norm(&h, &format!("{prefix}.norm2"), c_out)?;
        let h = self.silu(&h);
        let h = self.conv(&h, &format!("{prefix}.conv2"), (c_out, c_out, 3), 1, group)?;
        let skip = if c_in != c_out {
            self.conv(x, &format!("{prefix}.skip"), (c_in, c_out, 1), 1, group)?
        } else {
            x.to_string()
        };
        Ok(self.b.op("Add", &[&skip, &h], vec![]))
    }

    /// Sinusoidal timestep features → MLP: `t [B]` (model time) → `temb [B, dim]`.
    pub fn timestep_embedding(
        &mut self,
        t: &str,
        freq_dim: usize,
        dim: usize,
        group: QuantGroup,
    ) -> Result<String> {
        let half = freq_dim / 2;
        let freqs: Vec<f32> = (0..half)
            .map(|k| (-(10000f64.ln()) * k as f64 / half as f64).exp() as f32)
            .collect();
        let t32 = self.to_f32(t);
        let axes = self.b.ints("axes", &[1]);
        let t2 = self.b.op("Unsqueeze", &[&t32, &axes], vec![]);
        let f = self.b.const_f32("timestep_freqs", &[1, half], &freqs);
        let args = self.b.op("Mul", &[&t2, &f], vec![]);
        let cos = self.b.op("Cos", &[&args], vec![]);
        let sin = self.b.op("Sin", &[&args], vec![]);
        let e = self
            .b
            .op("Concat", &[&cos, &sin], vec![("axis", Attr::Int(1))]);
        let e = self.from_f32(&e);
        let h = self.linear(&e, "timestep.linear1", (freq_dim, dim), true, group)?;
        let h = self.silu(&h);
        self.linear(&h, "timestep.linear2", (dim, dim), true, group)
    }
}

/// The `[cols, rows]` transpose of the row-major `[rows, cols]` matrix `w`.
fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; rows * cols];
    if rows == 0 || cols == 0 {
        return t;
    }
    for (r, row) in w.chunks_exact(cols).take(rows).enumerate() {
        // Column `r` of `t`: elements `r, r + rows, r + 2·rows, ...`.
        for (dst, &v) in t.iter_mut().skip(r).step_by(rows).zip(row) {
            *dst = v;
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::transpose;

    #[test]
    fn transpose_swaps_rows_and_columns() {
        let t = transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3);
        assert_eq!(t, vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }
}
