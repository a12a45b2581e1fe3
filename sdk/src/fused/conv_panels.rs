//! The patch matrix of f32 convolutions, packed one panel at a time with row copies.
//!
//! tract lowers the VAE's and the patch graphs' 3×3 f32 convolutions to a lazy im2col: the
//! matrix kernel asks for one packed panel of the patch matrix at a time (`r` output positions
//! × every channel and kernel tap) and tract's `LazyIm2col` gathers it element by element
//! through two offset tables. That gather, not the arithmetic, is what those graphs' products
//! spent most on: the VAE decoder's took 11.7 ms with it, 7.7 ms on eagerly packed operands
//! (`transfusion bench --profile` and tract's eager-im2col knobs, docs/performance.md).
//!
//! [`PanelIm2col`] hands the kernel the same panels, byte for byte, built differently: the `r`
//! positions of a panel sit side by side in the padded input whenever they lie on one output
//! row of a stride-1 convolution, so each kernel tap's `r` values are one slice copy. Panels
//! that wrap a row, and strided convolutions, are gathered as tract does. The kernel, its
//! blocking and its fused bias are tract's; only the panel writer is the SDK's, so the results
//! are tract's bit for bit.
//!
//! tract does not export its `LazyIm2col` operator, and renames nodes as it optimises, so the
//! convolutions' geometries are read from the decluttered graph ([`conv_shapes`]) and each lazy
//! im2col node takes the one that gives its input and its packed matrix their sizes.

use std::fmt;
use std::sync::Arc;

use tract_linalg::mmm::{EagerPackedInput, MMMInputFormat, MMMInputValue, PackedMatrixStorage};
use tract_linalg::pack::PackedFormat;
use tract_linalg::WeightType;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::conv::Conv;
use tract_onnx::tract_core::ops::matmul::pack::DynPackedExoticFact;
use tract_onnx::tract_core::ops::nn::DataFormat;

use super::c_order;

/// The patch geometry of a single-group 2-D f32 convolution over channels-first data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvShape {
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
}

/// The distinct geometries of the convolutions of a decluttered graph that tract may lower to a
/// lazy im2col: what [`apply_optimized`](super::apply_optimized) needs to replace them.
pub fn conv_shapes(model: &TypedModel) -> Vec<ConvShape> {
    let mut shapes: Vec<ConvShape> = model
        .nodes()
        .iter()
        .filter_map(|node| {
            let conv = node.op.downcast_ref::<Conv>()?;
            let spec = &conv.pool_spec;
            let channels_first = matches!(spec.data_format, DataFormat::NCHW | DataFormat::CHW);
            let input = model.outlet_fact(*node.inputs.first()?).ok()?;
            if conv.q_params.is_some()
                || conv.group != 1
                || !channels_first
                || input.datum_type != DatumType::F32
            {
                return None;
            }
            let pair = |v: &[usize]| -> Option<[usize; 2]> { v.try_into().ok() };
            let shape = ConvShape {
                kernel: pair(&spec.kernel_shape)?,
                stride: pair(&spec.strides())?,
                dilation: pair(&spec.dilations())?,
            };
            Some(shape)
        })
        .collect();
    shapes.sort_by_key(|s| (s.kernel, s.stride, s.dilation));
    shapes.dedup();
    shapes
}

/// What the panels of one convolution are made of: tract's packing for its kernel, and where
/// each entry of the patch matrix lies in the padded input (in elements): row `k` (channel,
/// kernel row, kernel column) at `k_offsets[k]`, column `n` (output position) at `n_offsets[n]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Im2colPanels {
    packer: PackedFormat,
    k_offsets: Vec<usize>,
    n_offsets: Vec<usize>,
    /// Elements the padded input must hold: one past the last entry the panels read.
    input_len: usize,
}

impl Im2colPanels {
    /// The panels of a convolution of `shape` over a padded input of `input` (`[1, C, H, W]` or
    /// `[C, H, W]`), packed as `packer`; `None` if the output would be empty.
    fn new(shape: &ConvShape, input: &[usize], packer: PackedFormat) -> Option<Im2colPanels> {
        let [c, h, w] = match input {
            [1, c, h, w] | [c, h, w] => [*c, *h, *w],
            _ => return None,
        };
        let out = |len: usize, kernel: usize, stride: usize, dilation: usize| -> Option<usize> {
            let reach = dilation * kernel.checked_sub(1)? + 1;
            Some(len.checked_sub(reach)? / stride.max(1) + 1)
        };
        let ([kh, kw], [sh, sw], [dh, dw]) = (shape.kernel, shape.stride, shape.dilation);
        let (oh, ow) = (out(h, kh, sh, dh)?, out(w, kw, sw, dw)?);
        let k_offsets: Vec<usize> = (0..c)
            .flat_map(|ch| {
                (0..kh).flat_map(move |ky| (0..kw).map(move |kx| (ch * h + ky * dh) * w + kx * dw))
            })
            .collect();
        let n_offsets: Vec<usize> = (0..oh)
            .flat_map(|oy| (0..ow).map(move |ox| oy * sh * w + ox * sw))
            .collect();
        let input_len = k_offsets.last()? + n_offsets.last()? + 1;
        Some(Im2colPanels {
            packer,
            k_offsets,
            n_offsets,
            input_len,
        })
    }

    /// Writes panel `i` (output positions `i·r ..`) into `out`, one record of `r` values per
    /// row of the patch matrix; positions past the last one are zeros.
    fn write_panel(&self, x: &[f32], i: usize, out: &mut [f32]) -> TractResult<()> {
        let r = self.packer.r;
        let start = i * r;
        let cols = self
            .n_offsets
            .get(start..(start + r).min(self.n_offsets.len()))
            .filter(|c| !c.is_empty())
            .ok_or_else(|| format_err!("im2col panel {i} past {} positions", self.mn()))?;
        let out = out
            .get_mut(..self.k_offsets.len() * r)
            .ok_or_else(|| format_err!("im2col panel buffer shorter than {} records", self.k()))?;
        let first = cols.first().copied().unwrap_or(0);
        let adjacent = cols.len() == r && cols.iter().zip(first..).all(|(&n, want)| n == want);
        let done = adjacent
            && match r {
                4 => copy_records::<4>(x, &self.k_offsets, first, out),
                6 => copy_records::<6>(x, &self.k_offsets, first, out),
                8 => copy_records::<8>(x, &self.k_offsets, first, out),
                16 => copy_records::<16>(x, &self.k_offsets, first, out),
                _ => None,
            }
            .is_some();
        if !done {
            gather_records(x, &self.k_offsets, cols, r, out)
                .ok_or_else(|| format_err!("im2col panel {i} reads past the input"))?;
        }
        Ok(())
    }

    fn k(&self) -> usize {
        self.k_offsets.len()
    }

    fn mn(&self) -> usize {
        self.n_offsets.len()
    }
}

/// A panel whose `R` positions are adjacent in the input: each record is one slice copy.
fn copy_records<const R: usize>(
    x: &[f32],
    k_offsets: &[usize],
    first: usize,
    out: &mut [f32],
) -> Option<()> {
    for (record, &k) in out.chunks_exact_mut(R).zip(k_offsets) {
        let from = k + first;
        record.copy_from_slice(x.get(from..from + R)?);
    }
    Some(())
}

/// Any other panel: one element at a time, zeros past the last position.
fn gather_records(
    x: &[f32],
    k_offsets: &[usize],
    cols: &[usize],
    r: usize,
    out: &mut [f32],
) -> Option<()> {
    for (record, &k) in out.chunks_exact_mut(r).zip(k_offsets) {
        for (j, v) in record.iter_mut().enumerate() {
            *v = match cols.get(j) {
                Some(&n) => *x.get(k + n)?,
                None => 0.0,
            };
        }
    }
    Some(())
}

impl fmt::Display for Im2colPanels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Im2colPanels({})", self.packer)
    }
}

impl MMMInputFormat for Im2colPanels {
    fn prepare_tensor(&self, _t: &Tensor, _k_axis: usize, _mn_axis: usize) -> TractResult<Tensor> {
        bail!("Im2colPanels packs a convolution's input, not a matrix")
    }

    fn prepare_one_view(
        &self,
        _t: &TensorView,
        _k_axis: usize,
        _mn_axis: usize,
    ) -> TractResult<Box<dyn MMMInputValue>> {
        bail!("Im2colPanels packs a convolution's input, not a matrix")
    }

    fn precursor(&self) -> WeightType {
        self.packer.precursor()
    }

    fn r(&self) -> usize {
        self.packer.r
    }

    fn k_alignment(&self) -> usize {
        1
    }

    fn mem_size(&self, k: TDim, mn: TDim) -> TDim {
        k * mn * self.packer.dt.size_of()
    }

    fn extract_at_mn_f16(
        &self,
        _data: &EagerPackedInput,
        _mn: usize,
        _slice: &mut [f16],
    ) -> TractResult<()> {
        bail!("Im2colPanels has no eagerly packed data")
    }

    fn extract_at_mn_f32(
        &self,
        _data: &EagerPackedInput,
        _mn: usize,
        _slice: &mut [f32],
    ) -> TractResult<()> {
        bail!("Im2colPanels has no eagerly packed data")
    }
}

impl ExoticFact for Im2colPanels {
    fn buffer_sizes(&self) -> TVec<TDim> {
        tvec!(MMMInputFormat::mem_size(
            self,
            self.k().to_dim(),
            self.mn().to_dim()
        ))
    }
}

/// One call's input: the padded tensor and its panels' geometry.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PanelInput {
    tensor: TValue,
    panels: Arc<Im2colPanels>,
}

impl std::hash::Hash for PanelInput {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.panels.hash(state);
        if let Ok(plain) = self.tensor.try_as_plain_ram() {
            plain.as_bytes().hash(state);
        }
    }
}

impl fmt::Display for PanelInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} over {:?}", self.panels, self.tensor.shape())
    }
}

impl PanelInput {
    fn values(&self) -> TractResult<&[f32]> {
        self.tensor.try_as_plain_ram()?.as_slice::<f32>()
    }
}

impl MMMInputValue for PanelInput {
    fn format(&self) -> &dyn MMMInputFormat {
        &*self.panels
    }

    fn scratch_panel_buffer_layout(&self) -> Option<std::alloc::Layout> {
        Some(
            self.panels
                .packer
                .single_panel_layout(self.k(), f32::datum_type().size_of()),
        )
    }

    fn panel_bytes(&self, i: usize, buffer: Option<*mut u8>) -> TractResult<*const u8> {
        let buffer = buffer.ok_or_else(|| format_err!("im2col panel {i}: no scratch buffer"))?;
        let len = self.panels.packer.single_panel_len(self.k());
        // tract allocates `buffer` with `scratch_panel_buffer_layout` (f32-aligned, `len`
        // elements) for this thread's tile, and reads it only after this call returns.
        let out = unsafe { std::slice::from_raw_parts_mut(buffer as *mut f32, len) };
        self.panels.write_panel(self.values()?, i, out)?;
        Ok(buffer)
    }

    fn mn(&self) -> usize {
        self.panels.mn()
    }

    fn k(&self) -> usize {
        self.panels.k()
    }

    fn exotic_fact(&self) -> &dyn ExoticFact {
        &*self.panels
    }

    fn extract_at_mn_f16(&self, mn: usize, slice: &mut [f16]) -> TractResult<()> {
        let mut values = vec![0f32; slice.len()];
        self.extract_at_mn_f32(mn, &mut values)?;
        slice
            .iter_mut()
            .zip(values)
            .for_each(|(s, v)| *s = f16::from_f32(v));
        Ok(())
    }

    fn extract_at_mn_f32(&self, mn: usize, slice: &mut [f32]) -> TractResult<()> {
        let x = self.values()?;
        let n = *self
            .panels
            .n_offsets
            .get(mn)
            .ok_or_else(|| format_err!("im2col: position {mn} past {}", self.mn()))?;
        for (v, &k) in slice.iter_mut().zip(&self.panels.k_offsets) {
            *v = *x
                .get(k + n)
                .ok_or_else(|| format_err!("im2col: position {mn} reads past the input"))?;
        }
        Ok(())
    }
}

/// tract's lazy im2col of a single-group 2-D f32 convolution, with its panels packed by
/// [`Im2colPanels`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PanelIm2col {
    panels: Arc<Im2colPanels>,
    /// The node this replaced: its output fact, and the fallback for an input this operator
    /// does not take.
    original: Box<dyn TypedOp>,
}

impl PanelIm2col {
    /// The replacement for `op` when it is tract's lazy im2col of a convolution of one of
    /// `shapes`, whose (padded) `input` and packed `output` facts are concrete: the geometries
    /// that give this input the output's `k` and `mn` must all read the same offsets.
    pub fn replacing(
        op: &dyn TypedOp,
        input: &TypedFact,
        output: &TypedFact,
        shapes: &[ConvShape],
    ) -> Option<PanelIm2col> {
        if op.name() != "LazyIm2col" || input.datum_type != DatumType::F32 {
            return None;
        }
        let packed = output
            .exotic_fact()?
            .downcast_ref::<DynPackedExoticFact>()?;
        let [packer] = packed.packers.as_slice() else {
            return None;
        };
        let packer = packer.downcast_ref::<PackedFormat>()?.clone();
        if packer.dt != DatumType::F32 || packer.r == 0 {
            return None;
        }
        let dims = input.shape.as_concrete()?;
        let mut fitting = shapes.iter().filter_map(|shape| {
            Im2colPanels::new(shape, dims, packer.clone())
                .filter(|p| packed.k == p.k().to_dim() && packed.mn == p.mn().to_dim())
        });
        let panels = fitting.next()?;
        if fitting.any(|other| other != panels) {
            return None;
        }
        Some(PanelIm2col {
            panels: Arc::new(panels),
            original: tract_onnx::tract_core::dyn_clone::clone_box(op),
        })
    }
}

impl Op for PanelIm2col {
    fn name(&self) -> StaticName {
        "PanelIm2col(transfusion)".into()
    }

    op_as_typed_op!();
}

impl EvalOp for PanelIm2col {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        if let [input] = inputs.as_slice() {
            if input.datum_type() == DatumType::F32
                && c_order(input)
                && input.len() >= self.panels.input_len
            {
                let value = PanelInput {
                    tensor: input.clone(),
                    panels: self.panels.clone(),
                };
                let packed = PackedMatrixStorage::new_batched(
                    &[1, 1],
                    tvec![Box::new(value) as Box<dyn MMMInputValue>],
                );
                return Ok(tvec![packed.into_tensor(DatumType::F32).into_tvalue()]);
            }
        }
        self.original.eval(ctx, inputs)
    }
}

impl TypedOp for PanelIm2col {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.original.output_facts(inputs)
    }

    as_op!();
}

#[cfg(test)]
#[path = "conv_panels_tests.rs"]
mod tests;
