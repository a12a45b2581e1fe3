//! f32 2-D convolutions read in place: the 3×3 convolutions of the U-Net patch layers and the
//! VAE, on x86 CPUs with AVX2 and FMA.
//!
//! tract lowers each to a padding node, a patch matrix built panel by panel for its kernel
//! ([`super::PanelIm2col`]) and a matrix product with output channels as rows. At 16–64 output
//! channels the panels are built once per use, and their copies cost about as much as the
//! arithmetic (`transfusion bench --profile`, docs/performance.md). [`DirectConv`] reads the
//! patches where they lie instead: output positions are the rows of [`super::f32_tile`]'s tiles
//! (up to 6 neighbours on an output row, `stride` apart in the padded input), and the reduced
//! index runs over the kernel's taps, each an offset into the padded input, times the input
//! channels, one plane apart. The weights are packed once, at load, into panels of 16 output
//! channels, tap by tap. The sums run in another order than tract's, so values agree to rounding
//! (the bundle tolerances of `verify`), not bit for bit.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::nn::DataFormat;

use super::f32_tile::{tile, Bits, Left, Panel, COLUMNS, ROWS};
use super::pad::copy_rows;
use super::{dense_f32, each_on_pool};

/// tract's f32 `Conv` of NCHW activations by constant OIHW weights: one group, 2-D, no
/// dilation, a constant bias (one per output channel, or one for all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectConv {
    /// For each block of 16 output channels, each tap `(ky, kx)` and each input channel, the 16
    /// channels' weights (zeros past `c_out`).
    panels: Arc<Bits>,
    bias: Arc<Bits>,
    c_out: usize,
    c_in: usize,
    kernel: (usize, usize),
    stride: (usize, usize),
    /// The node this replaced: its padding, its output facts, and the fallback for inputs this
    /// operator does not take.
    original: Box<Conv>,
}

/// The f32 values of a constant fact.
fn constant(fact: &TypedFact) -> Option<(Vec<f32>, TVec<usize>)> {
    let t = fact.konst.as_ref()?;
    let plain = t.try_as_plain_ram().ok()?;
    let values = plain.as_slice::<f32>().ok()?.to_vec();
    Some((values, t.shape().into()))
}

impl DirectConv {
    /// The replacement for a convolution of the form above, or `None`.
    pub fn replacing(op: &dyn TypedOp, facts: &[&TypedFact]) -> Option<DirectConv> {
        let conv = op.downcast_ref::<Conv>()?;
        let [fx, fw, fb] = facts else {
            return None;
        };
        if fx.datum_type != DatumType::F32 || fx.konst.is_some() || fx.rank() != 4 {
            return None;
        }
        let (w, shape) = constant(fw)?;
        let (bias, _) = constant(fb)?;
        let [c_out, c_in, kh, kw] = *shape.as_slice() else {
            return None;
        };
        let spec = &conv.pool_spec;
        let strides = spec.strides();
        let (Some(&sh), Some(&sw)) = (strides.first(), strides.get(1)) else {
            return None;
        };
        let takes = conv.q_params.is_none()
            && conv.group == 1
            && conv.kernel_fmt == KernelFormat::OIHW
            && spec.data_format == DataFormat::NCHW
            && spec.kernel_shape.as_slice() == [kh, kw]
            && spec.dilations().iter().all(|&d| d == 1)
            && spec.input_channels == c_in
            && spec.output_channels == c_out
            && c_out > 0
            && c_in > 0
            && kh > 0
            && kw > 0
            && sh > 0
            && sw > 0
            && (bias.len() == 1 || bias.len() == c_out);
        if !takes {
            return None;
        }
        // Weights: OIHW → [block][tap][input channel][16 output channels].
        let taps = kh * kw;
        let mut panels = vec![0f32; c_out.div_ceil(COLUMNS) * taps * c_in * COLUMNS];
        for (o, filter) in w.chunks_exact(c_in * taps).enumerate() {
            let (block, j) = (o / COLUMNS, o % COLUMNS);
            for (i, plane) in filter.chunks_exact(taps).enumerate() {
                for (t, &v) in plane.iter().enumerate() {
                    let at = ((block * taps + t) * c_in + i) * COLUMNS + j;
                    *panels.get_mut(at)? = v;
                }
            }
        }
        let bias = match bias.as_slice() {
            [b] => vec![*b; c_out],
            all => all.to_vec(),
        };
        Some(DirectConv {
            panels: Arc::new(Bits(panels)),
            bias: Arc::new(Bits(bias)),
            c_out,
            c_in,
            kernel: (kh, kw),
            stride: (sh, sw),
            original: Box::new(conv.clone()),
        })
    }

    /// The convolution, or `None` where the input is not this operator's (the caller falls
    /// back).
    fn convolve(&self, x: &Tensor) -> Option<TractResult<Tensor>> {
        let &[n, c, h, w] = x.shape() else {
            return None;
        };
        if !dense_f32(x) || c != self.c_in || h == 0 || w == 0 {
            return None;
        }
        let dims = self.original.pool_spec.computed_padding(&[h, w]);
        let (y, xd) = (dims.first()?, dims.get(1)?);
        let ((kh, kw), (sh, sw)) = (self.kernel, self.stride);
        let (hp, wp) = (
            h + y.pad_before + y.pad_after,
            w + xd.pad_before + xd.pad_after,
        );
        let oh = hp.checked_sub(kh)? / sh + 1;
        let ow = wp.checked_sub(kw)? / sw + 1;
        // tract's output size (another for a ceil-mode pooling padding): the tiles cover ours.
        if (oh, ow) != (y.convoluted, xd.convoluted) {
            return None;
        }
        let g = Geometry {
            h,
            w,
            hp,
            wp,
            top: y.pad_before,
            left: xd.pad_before,
            oh,
            ow,
            taps: (0..kh)
                .flat_map(|ky| (0..kw).map(move |kx| ky * wp + kx))
                .collect(),
        };
        Some(self.run(x, n, &g))
    }

    fn run(&self, x: &Tensor, n: usize, g: &Geometry) -> TractResult<Tensor> {
        let plain = x.try_as_plain_ram()?;
        let xs = plain.as_slice::<f32>()?;
        let mut out = Tensor::zero::<f32>(&[n, self.c_out, g.oh, g.ow])?;
        let mut view = out.try_as_plain_ram_mut()?;
        let cs = view.as_slice_mut::<f32>()?;
        let per_image = self.c_in * g.h * g.w;
        let plane = g.oh * g.ow;
        let per_block = g.taps.len() * self.c_in * COLUMNS;
        let padded = g.hp > g.h || g.wp > g.w;
        let mut scratch = Vec::new();
        for (image, c) in xs
            .chunks_exact(per_image.max(1))
            .zip(cs.chunks_mut((self.c_out * plane).max(1)))
        {
            let input: &[f32] = if padded {
                g.pad(image, self.c_in, &mut scratch)
                    .ok_or_else(|| format_err!("DirectConv: input shorter than its shape"))?;
                &scratch
            } else {
                image
            };
            // One part per block of 16 output channels: its weights and its output planes.
            let blocks = self
                .panels
                .0
                .chunks_exact(per_block.max(1))
                .zip(c.chunks_mut((COLUMNS * plane).max(1)))
                .enumerate();
            each_on_pool(blocks, self.c_out > COLUMNS, |(b, (panel, out))| {
                self.block(input, g, b, panel, out)
            })
            .ok_or_else(|| format_err!("DirectConv: operand shorter than its shape"))?;
        }
        Ok(out)
    }

    /// Output channels `16·b ..` (`out`: their planes) of one image from its padded `input`.
    fn block(
        &self,
        input: &[f32],
        g: &Geometry,
        b: usize,
        values: &[f32],
        out: &mut [f32],
    ) -> Option<()> {
        let plane = g.oh * g.ow;
        let first = b * COLUMNS;
        let width = COLUMNS.min(self.c_out.checked_sub(first)?);
        let bias = self.bias.0.get(first..first + width)?;
        let (sh, sw) = self.stride;
        let panel = Panel::packed(values);
        let mut t = [[0f32; COLUMNS]; ROWS];
        for oy in 0..g.oh {
            for ox in (0..g.ow).step_by(ROWS) {
                let t = t.get_mut(..ROWS.min(g.ow - ox))?;
                let left = Left {
                    values: input,
                    offset: oy * sh * g.wp + ox * sw,
                    row: sw,
                    step: g.hp * g.wp,
                    depth: self.c_in,
                    taps: &g.taps,
                };
                tile(left, panel, t)?;
                let at = oy * g.ow + ox;
                for (j, &bj) in bias.iter().enumerate() {
                    let row = out.get_mut(j * plane + at..j * plane + at + t.len())?;
                    for (o, sums) in row.iter_mut().zip(t.iter()) {
                        *o = sums.get(j)? + bj;
                    }
                }
            }
        }
        Some(())
    }
}

/// One image's sizes: input, padded input, padding before, output, and each tap's offset in the
/// padded input.
struct Geometry {
    h: usize,
    w: usize,
    hp: usize,
    wp: usize,
    top: usize,
    left: usize,
    oh: usize,
    ow: usize,
    taps: Vec<usize>,
}

impl Geometry {
    /// `image` (`channels` planes of `h × w`) with its zero padding, into `padded`; `None`
    /// when `image` is not that size.
    fn pad(&self, image: &[f32], channels: usize, padded: &mut Vec<f32>) -> Option<()> {
        padded.clear();
        padded.resize(channels * self.hp * self.wp, 0.0);
        let pads = [
            (0, 0),
            (self.top, self.hp.checked_sub(self.h + self.top)?),
            (self.left, self.wp.checked_sub(self.w + self.left)?),
        ];
        let shape = [channels, self.h, self.w];
        copy_rows(image, &shape, &pads, &[channels, self.hp, self.wp], padded)
    }
}

impl Op for DirectConv {
    fn name(&self) -> StaticName {
        "DirectConv(transfusion)".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{}→{} channels, kernel {:?}, stride {:?}",
            self.c_in, self.c_out, self.kernel, self.stride
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for DirectConv {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        if let Some(x) = inputs.first() {
            if let Some(y) = self.convolve(x) {
                return Ok(tvec![y?.into_tvalue()]);
            }
        }
        self.original.eval(ctx, inputs)
    }
}

impl TypedOp for DirectConv {
    facts_and_cost_of_original!();

    as_op!();
}

#[cfg(test)]
#[path = "direct_conv_tests.rs"]
mod tests;
