//! INT8 convolutions (ONNX `ConvInteger`: u8 activations, constant 8-bit weights, i32 out) on
//! the CPUs where [`super::integer::wanted_here`] holds, for the same reason as
//! [`super::IntegerProduct`]: tract's AVX2 integer kernel is slow there.
//!
//! Per image, the patches `x − x₀` (zeros in the padding, where `x` would be `x₀`) are written
//! straight into the right-operand panels of [`super::i16_gemm`] — output positions as
//! columns — and multiplied by the weights `w − w₀`, packed once at load as the left operand,
//! one row per output channel, so the result comes out in NCHW order. Exact integer
//! arithmetic: tract's results, bit for bit.
//!
//! Stride-1 convolutions of outputs at least [`COLUMNS`] wide, or 8 wide (the VAE's and all but
//! the patch layers' innermost) skip the patch matrix: the image is written once with its
//! channels in pairs side by side ([`Geometry::pair_image`]), so that the output positions of a
//! panel — 16 of one output row, or 8 of each of two rows — are, for one kernel tap and one pair
//! of input channels, one or two runs of adjacent values the kernel reads in place
//! ([`image_columns`]); the weights are packed tap by tap to match.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::nn::DataFormat;

use super::c_order;
use super::i16_gemm::{image_columns, pair_rows, product, Panels, Sums, Walk, COLUMNS, ROWS};
use super::integer::{plain_integer, weights, zero_point};

/// The tract operator replaced: a quantized 2-D `Conv`, or the `EinSum` tract declutters a 1×1
/// one into (`NIHW,OI→NOHW`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Original {
    Conv(Box<Conv>),
    EinSum(Box<EinSum>),
}

/// A 2-D convolution of NCHW u8 activations by OIHW 8-bit weights, one group, no dilation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntegerConv {
    /// The weights as the left operand: one row of `c_in · kh · kw` per output channel.
    weights: Arc<Vec<i32>>,
    /// For stride-1 convolutions, the weights in the order [`Geometry::pair_image`] is read:
    /// per output channel, tap by tap, the input channels in pairs.
    tap_weights: Option<Arc<Vec<i32>>>,
    c_out: usize,
    c_in: usize,
    kernel: (usize, usize),
    stride: (usize, usize),
    original: Original,
}

impl IntegerConv {
    /// The replacement for a quantized convolution of the form above, or `None`.
    pub fn replacing(op: &dyn TypedOp, facts: &[&TypedFact]) -> Option<IntegerConv> {
        let [fx, fw, q @ ..] = facts else {
            return None;
        };
        if fx.datum_type != DatumType::U8 || fx.konst.is_some() || fx.rank() != 4 {
            return None;
        }
        if !plain_integer(q) {
            return None;
        }
        let (w, shape) = weights(fw, q.get(3)?)?;
        if let Some(conv) = op.downcast_ref::<Conv>() {
            let spec = &conv.pool_spec;
            let [c_out, c_in, kh, kw] = *shape.as_slice() else {
                return None;
            };
            let takes = conv.q_params == Some(DatumType::I32)
                && conv.group == 1
                && conv.kernel_fmt == KernelFormat::OIHW
                && spec.data_format == DataFormat::NCHW
                && spec.kernel_shape.as_slice() == [kh, kw]
                && spec.dilations().iter().all(|&d| d == 1)
                && spec.input_channels == c_in
                && spec.output_channels == c_out;
            let strides = spec.strides();
            let (Some(&sh), Some(&sw)) = (strides.first(), strides.get(1)) else {
                return None;
            };
            let weights = Arc::new(pair_rows(&w, c_in * kh * kw, |v| v));
            // One tap: the channel order is already the pair image's.
            let tap_weights = match (sh, sw, kh * kw) {
                (1, 1, 1) => Some(weights.clone()),
                (1, 1, taps) => Some(Arc::new(tap_rows(&w, c_in, taps))),
                _ => None,
            };
            return takes.then(|| IntegerConv {
                weights,
                tap_weights,
                c_out,
                c_in,
                kernel: (kh, kw),
                stride: (sh, sw),
                original: Original::Conv(Box::new(conv.clone())),
            });
        }
        let einsum = op.downcast_ref::<EinSum>()?;
        let [c_out, c_in] = *shape.as_slice() else {
            return None;
        };
        if einsum.q_params != Some(DatumType::I32)
            || einsum.axes.to_string() != "NIHW,OI,,,,,,,->NOHW"
        {
            return None;
        }
        // One tap: the channel order is already the pair image's.
        let weights = Arc::new(pair_rows(&w, c_in, |v| v));
        Some(IntegerConv {
            tap_weights: Some(weights.clone()),
            weights,
            c_out,
            c_in,
            kernel: (1, 1),
            stride: (1, 1),
            original: Original::EinSum(Box::new(einsum.clone())),
        })
    }

    /// `(before, after)` padding of each spatial axis for an `h × w` input.
    fn padding(&self, h: usize, w: usize) -> Option<[(usize, usize); 2]> {
        match &self.original {
            Original::EinSum(_) => Some([(0, 0); 2]),
            Original::Conv(conv) => {
                let dims = conv.pool_spec.computed_padding(&[h, w]);
                let (y, x) = (dims.first()?, dims.get(1)?);
                Some([(y.pad_before, y.pad_after), (x.pad_before, x.pad_after)])
            }
        }
    }

    /// The convolution, or `None` where the inputs are not this operator's (the caller falls
    /// back).
    fn convolve(&self, x: &Tensor, x0: &Tensor) -> Option<TractResult<Tensor>> {
        let &[n, c, h, w] = x.shape() else {
            return None;
        };
        if x.datum_type() != DatumType::U8 || !c_order(x) || c != self.c_in {
            return None;
        }
        let zero = zero_point(x0)?;
        let [(top, bottom), (left, right)] = self.padding(h, w)?;
        let ((kh, kw), (sh, sw)) = (self.kernel, self.stride);
        let oh = (h + top + bottom).checked_sub(kh)? / sh.max(1) + 1;
        let ow = (w + left + right).checked_sub(kw)? / sw.max(1) + 1;
        let geometry = Geometry {
            c,
            h,
            w,
            oh,
            ow,
            kh,
            kw,
            sh,
            sw,
            top,
            left,
        };
        Some(self.run(x, zero, n, &geometry))
    }

    fn run(&self, x: &Tensor, zero: i16, n: usize, g: &Geometry) -> TractResult<Tensor> {
        let plain = x.try_as_plain_ram()?;
        let xs = plain.as_slice::<u8>()?;
        let mut out = Tensor::zero::<i32>(&[n, self.c_out, g.oh, g.ow])?;
        let mut view = out.try_as_plain_ram_mut()?;
        let cs = view.as_slice_mut::<i32>()?;
        let per_image = (g.c * g.h * g.w).max(1);
        let per_output = (self.c_out * g.oh * g.ow).max(1);
        let in_place = self
            .tap_weights
            .as_deref()
            .filter(|_| self.stride == (1, 1) && (g.ow >= COLUMNS || g.ow == COLUMNS / 2));
        for (image, c) in xs.chunks(per_image).zip(cs.chunks_mut(per_output)) {
            match in_place {
                Some(weights) => g.in_place(image, zero, weights, c),
                None => product(&g.patches(image, zero), &self.weights, c, &Sums),
            }
        }
        Ok(out)
    }
}

/// `w` (`[c_out, c_in, taps]`, row-major) as left-operand rows for [`Geometry::in_place`]: per
/// output channel, tap by tap, the input channels in pairs, a zero completing an odd count.
fn tap_rows(w: &[i16], c_in: usize, taps: usize) -> Vec<i32> {
    let even = c_in.div_ceil(2) * 2;
    if taps * even == 0 {
        return Vec::new();
    }
    let per_out = c_in * taps;
    let mut ordered = vec![0i16; w.len() / per_out * taps * even];
    for (src, dst) in w
        .chunks_exact(per_out)
        .zip(ordered.chunks_exact_mut(taps * even))
    {
        for (ch, values) in src.chunks_exact(taps.max(1)).enumerate() {
            for (t, &v) in values.iter().enumerate() {
                if let Some(d) = dst.get_mut(t * even + ch) {
                    *d = v;
                }
            }
        }
    }
    pair_rows(&ordered, taps * even, |v| v)
}

/// One convolution's sizes: input channels and size, output size, kernel, strides, and the
/// padding before each spatial axis.
struct Geometry {
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    top: usize,
    left: usize,
}

impl Geometry {
    /// Rows and columns of the padded image: every position a kernel tap reads, from the first
    /// padding row and column on.
    fn padded_size(&self) -> (usize, usize) {
        (
            self.oh.saturating_sub(1) * self.sh + self.kh,
            self.ow.saturating_sub(1) * self.sw + self.kw,
        )
    }

    /// The image as `x − x₀` in i16, each channel plane inside its padding (zeros, i.e. the zero
    /// point), [`Geometry::padded_size`] per plane: a patch row is then a few copies, without a
    /// bounds decision or a conversion per value.
    #[inline(always)]
    fn padded(&self, image: &[u8], zero: i16) -> Vec<i16> {
        let (ph, pw) = self.padded_size();
        let mut padded = vec![0i16; self.c * ph * pw];
        let planes = image.chunks_exact((self.h * self.w).max(1));
        for (plane, out) in planes.zip(padded.chunks_exact_mut((ph * pw).max(1))) {
            let rows = plane.chunks_exact(self.w.max(1));
            // Input row `iy` is padded row `iy + top`; what lies past the padded size is never
            // read.
            for (input, out) in rows.zip(out.chunks_exact_mut(pw.max(1)).skip(self.top)) {
                let out = out.get_mut(self.left..).unwrap_or_default();
                for (o, &v) in out.iter_mut().zip(input) {
                    *o = i16::from(v) - zero;
                }
            }
        }
        padded
    }

    /// The image as `x − x₀` in i16 inside its padding (as [`Geometry::padded`]), with its
    /// channels in pairs side by side: plane `p` holds, for each padded position, channels `2p`
    /// and `2p + 1` (a zero for a missing odd one). Then a row and `2 × COLUMNS` zeros, which
    /// the last panel reads past its end (into columns it does not store).
    #[inline(always)]
    fn pair_image(&self, image: &[u8], zero: i16) -> Vec<i16> {
        let (ph, pw) = self.padded_size();
        let plane = 2 * ph * pw;
        let mut paired = vec![0i16; self.c.div_ceil(2) * plane + 2 * pw + 2 * COLUMNS];
        let mut channels = image.chunks_exact((self.h * self.w).max(1));
        let mut pairs = paired.chunks_exact_mut(plane.max(1));
        while let (Some(out), Some(a)) = (pairs.next(), channels.next()) {
            let b = channels.next();
            let rows = out.chunks_exact_mut((2 * pw).max(1)).skip(self.top);
            for (iy, out) in rows.enumerate().take(self.h) {
                let out = out.get_mut(2 * self.left..).unwrap_or_default();
                let a = a.get(iy * self.w..(iy + 1) * self.w).unwrap_or_default();
                match b.and_then(|b| b.get(iy * self.w..(iy + 1) * self.w)) {
                    Some(b) => {
                        for (o, (&a, &b)) in out.chunks_exact_mut(2).zip(a.iter().zip(b)) {
                            if let [x, y] = o {
                                (*x, *y) = (i16::from(a) - zero, i16::from(b) - zero);
                            }
                        }
                    }
                    None => {
                        for (o, &a) in out.chunks_exact_mut(2).zip(a) {
                            if let [x, _] = o {
                                *x = i16::from(a) - zero;
                            }
                        }
                    }
                }
            }
        }
        paired
    }

    /// The convolution of one image by `weights` (from [`tap_rows`]) into `c`
    /// (`[c_out, OH·OW]`), stride 1, read in place from [`Geometry::pair_image`]: panels of
    /// [`COLUMNS`] output positions, along an output row or, 8 wide, two rows at a time; each
    /// tap an offset into the pair planes. Output channels are split between the graph's
    /// matrix-product threads.
    fn in_place(&self, image: &[u8], zero: i16, weights: &[i32], c: &mut [i32]) {
        super::wide::avx2(
            #[inline(always)]
            || {
                let paired = self.pair_image(image, zero);
                let (ph, pw) = self.padded_size();
                let taps: Vec<usize> = (0..self.kh)
                    .flat_map(|dy| (0..self.kw).map(move |dx| 2 * (dy * pw + dx)))
                    .collect();
                debug_assert!(
                    self.ow >= COLUMNS || self.ow == COLUMNS / 2,
                    "{} wide",
                    self.ow
                );
                // Output rows per panel, and where a panel's second 8 columns start.
                let (panel_rows, half) = if self.ow >= COLUMNS {
                    (1, COLUMNS)
                } else {
                    (2, 2 * pw)
                };
                let walk = Walk {
                    taps: &taps,
                    per_tap: self.c.div_ceil(2),
                    stride: 2 * ph * pw,
                    half,
                };
                let (n, pairs) = (self.oh * self.ow, walk.pairs());
                let part = |(x, c): (&[i32], &mut [i32])| {
                    for oy in (0..self.oh).step_by(panel_rows) {
                        let span = panel_rows.min(self.oh - oy) * self.ow;
                        for ox in (0..span).step_by(COLUMNS) {
                            let width = COLUMNS.min(span - ox);
                            let at = (oy * self.ow + ox, width, n);
                            let from = paired.get(2 * (oy * pw + ox)..).unwrap_or_default();
                            image_columns(x, walk, from, c, at);
                        }
                    }
                    Some(())
                };
                let m = weights.len().checked_div(pairs).unwrap_or(0);
                match super::rows_per_part(m, ROWS).filter(|_| n > 0 && pairs > 0) {
                    Some(per_part) => {
                        let parts = weights
                            .chunks(per_part * pairs)
                            .zip(c.chunks_mut(per_part * n));
                        let _ = super::each_on_pool(parts, true, part);
                    }
                    None => {
                        let _ = part((weights, c));
                    }
                }
            },
        )
    }

    /// The patch matrix `[C·KH·KW, OH·OW]` of one image, `x − x₀`, in the kernel's panels: two
    /// rows at a time, each copied out of the padded image, then interleaved into the panels.
    fn patches(&self, image: &[u8], zero: i16) -> Panels {
        super::wide::avx2(
            #[inline(always)]
            || {
                let padded = self.padded(image, zero);
                let k = self.c * self.kh * self.kw;
                let n = self.oh * self.ow;
                let mut panels = Panels::zeros(k, n);
                let mut rows = vec![0i16; 2 * n];
                for p in 0..k.div_ceil(2) {
                    let (even, odd) = rows.split_at_mut(n);
                    self.patch_row(&padded, 2 * p, even);
                    self.patch_row(&padded, 2 * p + 1, odd);
                    panels.set_pair(p, even, odd);
                }
                panels
            },
        )
    }

    /// Row `kk` (channel, kernel row, kernel column) of the patch matrix into `row`, from the
    /// padded image; zeros past the last row.
    #[inline(always)]
    fn patch_row(&self, padded: &[i16], kk: usize, row: &mut [i16]) {
        let (ph, pw) = self.padded_size();
        let (ch, dy, dx) = (
            kk / (self.kh * self.kw),
            kk / self.kw % self.kh,
            kk % self.kw,
        );
        let Some(plane) = padded.get(ch * ph * pw..(ch + 1) * ph * pw) else {
            row.fill(0);
            return;
        };
        for (oy, out) in row.chunks_exact_mut(self.ow.max(1)).enumerate() {
            let input = plane
                .get((oy * self.sh + dy) * pw + dx..)
                .unwrap_or_default();
            if self.sw == 1 {
                copy_short(out, input);
            } else {
                for (o, &v) in out.iter_mut().zip(input.iter().step_by(self.sw)) {
                    *o = v;
                }
            }
        }
    }
}

/// `out.copy_from_slice(&input[..out.len()])` (nothing where `input` is shorter) for the
/// short runs of a patch row (one output row, 8–64 values), in copies of 16 values the
/// compiler writes as register moves: `copy_from_slice` of a length it does not know calls
/// `memcpy`, whose call costs as much as the copy at these sizes.
#[inline(always)]
fn copy_short(out: &mut [i16], input: &[i16]) {
    let Some(input) = input.get(..out.len()) else {
        return;
    };
    let mut outs = out.chunks_exact_mut(16);
    let mut ins = input.chunks_exact(16);
    for (o, i) in (&mut outs).zip(&mut ins) {
        if let (Ok(o), Ok(i)) = (<&mut [i16; 16]>::try_from(o), <&[i16; 16]>::try_from(i)) {
            *o = *i;
        }
    }
    for (o, &i) in outs.into_remainder().iter_mut().zip(ins.remainder()) {
        *o = i;
    }
}

impl Op for IntegerConv {
    fn name(&self) -> StaticName {
        "IntegerConv(transfusion)".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{}→{} channels, kernel {:?}, stride {:?}",
            self.c_in, self.c_out, self.kernel, self.stride
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Accurate
    }

    op_as_typed_op!();
}

impl EvalOp for IntegerConv {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        if let (Some(x), Some(x0)) = (inputs.first(), inputs.get(3)) {
            if let Some(y) = self.convolve(x, x0) {
                return Ok(tvec![y?.into_tvalue()]);
            }
        }
        match &self.original {
            Original::Conv(op) => op.eval(ctx, inputs),
            Original::EinSum(op) => op.eval(ctx, inputs),
        }
    }
}

impl TypedOp for IntegerConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        match &self.original {
            Original::Conv(op) => op.output_facts(inputs),
            Original::EinSum(op) => op.output_facts(inputs),
        }
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        match &self.original {
            Original::Conv(op) => op.cost(inputs),
            Original::EinSum(op) => op.cost(inputs),
        }
    }

    as_op!();
}

#[cfg(test)]
#[path = "integer_conv_tests.rs"]
mod tests;
