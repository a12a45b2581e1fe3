//! The im2col of INT8 convolutions (`ConvInteger`).
//!
//! tract lowers every quantized convolution to an eager `Im2col` that writes its packed
//! operand one element at a time through a generic packing writer: 45–66 % of the INT8 patch
//! graphs (`transfusion bench --profile`, docs/performance.md). [`QuantIm2col`] gathers the same
//! patch matrix with row copies (a 3×3 stride-1 row is a shifted copy of an input row, with the
//! zero point at the borders) into a plain `[K, N]` buffer, then packs it with tract-linalg's own
//! packer for the kernel's layout: the same bytes tract's operator hands to the integer kernel.

use tract_linalg::mmm::{MMMInputFormat, PackedExoticFact, PackedMatrixStorage};
use tract_linalg::pack::PackedI8K4;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::conv::Im2Col;

use super::c_order;

/// Eager im2col of a single-group 2-D convolution of an 8-bit NCHW (or CHW) tensor into the
/// `PackedI8K4` layout of tract's integer kernels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuantIm2col {
    format: PackedI8K4,
    /// The node this replaced: its facts, its geometry, and the fallback for anything else.
    original: Im2Col,
}

impl QuantIm2col {
    /// The replacement for `op` when it is tract's `Im2col` of a single-group 2-D convolution
    /// whose output is packed as `PackedI8K4` (`output`: the node's output fact).
    pub fn replacing(op: &dyn TypedOp, output: &TypedFact) -> Option<QuantIm2col> {
        let im2col = op.downcast_ref::<Im2Col>()?;
        if im2col.group != 1 || im2col.pool_spec.kernel_shape.len() != 2 {
            return None;
        }
        let packed = output.exotic_fact()?.downcast_ref::<PackedExoticFact>()?;
        let format = packed.format.downcast_ref::<PackedI8K4>()?.clone();
        Some(QuantIm2col {
            format,
            original: im2col.clone(),
        })
    }

    /// The packed patches, or `None` for an input this operator does not take.
    fn patches(&self, input: &Tensor, pad: i8) -> Option<TractResult<Tensor>> {
        let spec = &self.original.pool_spec;
        if input.datum_type().size_of() != 1 || !c_order(input) {
            return None;
        }
        let (c, hw) = match (spec.data_format.has_n(), input.shape()) {
            (true, [1, c, h, w]) | (false, [c, h, w]) => (*c, [*h, *w]),
            _ => return None,
        };
        if spec.data_format.c_is_last() || c != spec.input_channels {
            return None;
        }
        let padding = spec.computed_padding(&hw);
        let [ph, pw] = [padding.first()?, padding.get(1)?];
        let (oh, ow) = (ph.convoluted, pw.convoluted);
        let (kh, kw) = (*spec.kernel_shape.first()?, *spec.kernel_shape.get(1)?);
        let strides = spec.strides();
        let dilations = spec.dilations();
        let geometry = Geometry {
            c,
            hw,
            out: [oh, ow],
            kernel: [kh, kw],
            stride: [*strides.first()?, *strides.get(1)?],
            dilation: [*dilations.first()?, *dilations.get(1)?],
            pad_before: [ph.pad_before, pw.pad_before],
        };
        let plain = input.try_as_plain_ram().ok()?;
        Some(self.pack(plain.as_bytes(), pad, &geometry, input.datum_type()))
    }

    fn pack(&self, bytes: &[u8], pad: i8, g: &Geometry, dt: DatumType) -> TractResult<Tensor> {
        let k = g.c * g.kernel[0] * g.kernel[1];
        let n = g.out[0] * g.out[1];
        let mut cols = vec![pad; k * n];
        gather(bytes, g, &mut cols)
            .ok_or_else(|| format_err!("im2col: input shorter than {:?}", g.hw))?;
        let plain = tract_ndarray::Array2::from_shape_vec((k, n), cols)?.into_tensor();
        let packed = self.format.prepare_one(&plain, 0, 1)?;
        Ok(PackedMatrixStorage::new_batched(&[1, 1], tvec![packed]).into_tensor(dt))
    }
}

/// A 2-D convolution's patch geometry for one image.
struct Geometry {
    c: usize,
    hw: [usize; 2],
    out: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    pad_before: [usize; 2],
}

/// Writes the `[K, N]` patch matrix (K = channel, kernel row, kernel column; N = output row,
/// output column) into `cols`, which holds the pad value already.
fn gather(bytes: &[u8], g: &Geometry, cols: &mut [i8]) -> Option<()> {
    let [h, w] = g.hw;
    let [oh, ow] = g.out;
    let n = oh * ow;
    let mut rows = cols.chunks_exact_mut(n);
    for ch in 0..g.c {
        for ky in 0..g.kernel[0] {
            for kx in 0..g.kernel[1] {
                let row = rows.next()?;
                for oy in 0..oh {
                    // Input row of this output row, if inside the image.
                    let Some(iy) =
                        (oy * g.stride[0] + ky * g.dilation[0]).checked_sub(g.pad_before[0])
                    else {
                        continue;
                    };
                    if iy >= h {
                        continue;
                    }
                    let src = bytes.get((ch * h + iy) * w..(ch * h + iy + 1) * w)?;
                    let dst = row.get_mut(oy * ow..(oy + 1) * ow)?;
                    let offset = kx * g.dilation[1];
                    if g.stride[1] == 1 {
                        // Output columns whose input column is inside the row: one copy.
                        let first = g.pad_before[1].saturating_sub(offset);
                        let last = (w + g.pad_before[1]).saturating_sub(offset).min(ow);
                        if first < last {
                            let from = first + offset - g.pad_before[1];
                            let span = dst.get_mut(first..last)?;
                            let input = src.get(from..from + (last - first))?;
                            span.iter_mut().zip(input).for_each(|(d, &s)| *d = s as i8);
                        }
                    } else {
                        for (ox, d) in dst.iter_mut().enumerate() {
                            let ix = (ox * g.stride[1] + offset).checked_sub(g.pad_before[1]);
                            if let Some(&s) = ix.and_then(|ix| src.get(ix)) {
                                *d = s as i8;
                            }
                        }
                    }
                }
            }
        }
    }
    Some(())
}

impl Op for QuantIm2col {
    fn name(&self) -> StaticName {
        "QuantIm2col(transfusion)".into()
    }

    op_as_typed_op!();
}

impl EvalOp for QuantIm2col {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        // The pad value is the input's zero point, an integer scalar (tract wires it as i32);
        // tract reads it as the input's 8-bit type, i.e. its low byte.
        let pad = match inputs.get(1) {
            None => Some(0i8),
            Some(p) if p.len() == 1 && p.datum_type().is_integer() => {
                p.cast_to_scalar::<i64>().ok().map(|v| v as i8)
            }
            Some(_) => None,
        };
        if let (Some(input), Some(pad)) = (inputs.first(), pad) {
            if let Some(packed) = self.patches(input, pad) {
                return Ok(tvec![packed?.into_tvalue()]);
            }
        }
        self.original.eval(ctx, inputs)
    }
}

impl TypedOp for QuantIm2col {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.original.output_facts(inputs)
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The patch matrix element by element, from the definition.
    fn naive(x: &[i8], g: &Geometry, pad: i8) -> Vec<i8> {
        let [h, w] = g.hw;
        let [oh, ow] = g.out;
        let mut cols = Vec::new();
        for ch in 0..g.c {
            for ky in 0..g.kernel[0] {
                for kx in 0..g.kernel[1] {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize
                                - g.pad_before[0] as isize;
                            let ix = (ox * g.stride[1] + kx * g.dilation[1]) as isize
                                - g.pad_before[1] as isize;
                            let inside =
                                (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix);
                            cols.push(if inside {
                                x[(ch * h + iy as usize) * w + ix as usize]
                            } else {
                                pad
                            });
                        }
                    }
                }
            }
        }
        cols
    }

    #[test]
    fn gather_matches_the_definition_for_strides_pads_and_dilations() {
        // (c, h, w, kernel, stride, dilation, pad before, pad after)
        let cases = [
            (4, 16, 16, [3, 3], [1, 1], [1, 1], [1, 1], [1, 1]),
            (3, 5, 7, [3, 3], [1, 1], [1, 1], [1, 1], [1, 1]),
            (2, 8, 8, [3, 3], [2, 2], [1, 1], [1, 1], [0, 0]),
            (2, 9, 6, [3, 2], [2, 1], [1, 2], [0, 1], [2, 0]),
            (1, 4, 4, [1, 1], [1, 1], [1, 1], [0, 0], [0, 0]),
            (5, 3, 3, [3, 3], [1, 1], [2, 2], [2, 2], [2, 2]),
        ];
        for (c, h, w, kernel, stride, dilation, before, after) in cases {
            let out = |i: usize| {
                (h_or_w(i, h, w) + before[i] + after[i] - dilation[i] * (kernel[i] - 1) - 1)
                    / stride[i]
                    + 1
            };
            fn h_or_w(i: usize, h: usize, w: usize) -> usize {
                if i == 0 {
                    h
                } else {
                    w
                }
            }
            let g = Geometry {
                c,
                hw: [h, w],
                out: [out(0), out(1)],
                kernel,
                stride,
                dilation,
                pad_before: before,
            };
            let x: Vec<i8> = (0..c * h * w).map(|i| (i * 37 % 251) as u8 as i8).collect();
            let bytes: Vec<u8> = x.iter().map(|&v| v as u8).collect();
            let pad = -7i8;
            let k = c * kernel[0] * kernel[1];
            let mut cols = vec![pad; k * g.out[0] * g.out[1]];
            gather(&bytes, &g, &mut cols).unwrap();
            assert_eq!(
                cols,
                naive(&x, &g, pad),
                "c {c} {h}x{w} k {kernel:?} s {stride:?} d {dilation:?} p {before:?}/{after:?}"
            );
        }
    }

    #[test]
    fn a_short_input_is_an_error_not_a_panic() {
        let g = Geometry {
            c: 2,
            hw: [4, 4],
            out: [4, 4],
            kernel: [3, 3],
            stride: [1, 1],
            dilation: [1, 1],
            pad_before: [1, 1],
        };
        let mut cols = vec![0i8; 18 * 16];
        assert!(gather(&[0u8; 20], &g, &mut cols).is_none());
    }
}
