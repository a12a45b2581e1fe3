//! Load-time replacements of slow tract operators by faster ones with the same results.
//!
//! The bundle's files stay standard ONNX (onnxruntime and `onnx.checker` read the very same
//! files); at load, nodes whose tract implementation is slow at our sizes, or that are many
//! nodes for one step of the model, are replaced by an operator of this module that computes
//! the same values: bit for bit where the arithmetic is exact or in tract's order (the integer
//! operators, the element-wise ones, padding, the patch matrices, the rotary embedding), to
//! rounding where the sums run in another order or the exponential is another one (the f32
//! products and convolutions, softmax, the norms). Each operator is tested against tract's own
//! on random inputs, and `transfusion verify` holds the whole graphs to the bundle tolerances.
//!
//! Before tract reads a graph, [`onnx_graph`] rewrites the decoded file in memory: groups of
//! standard nodes the converter writes become one node of the SDK's own operator set each, so
//! tract has fewer nodes to type, declutter, optimise and run:
//!
//! - [`linear_onnx`] and [`linear`]: the INT8 linear layers (quantization, `MatMulInteger`,
//!   rescale), one node per group of layers reading the same activation, where the SDK's INT8
//!   kernel is the faster one;
//! - [`rope`]: the rotary embedding's seven nodes;
//! - [`rms_norm`]: RMSNorm's six nodes with its gain;
//! - [`attention`]: the rest of a layer's attention (heads, cache, scores, softmax, weighted
//!   sum) around the rotary embeddings.
//!
//! After tract has translated a graph:
//!
//! - [`quantize`]: `DynamicQuantizeLinear`, swapped in before tract optimises the graph (its
//!   optimiser has nothing to do with it).
//! - [`norm`]: ONNX `InstanceNormalization` (the GroupNorm of the patch layers and the VAE) as
//!   one operator, parsed so from the ONNX file on tract's CPU runtime.
//! - [`elementwise`]: f32 add/sub/mul/div with broadcasting, swapped in after tract has
//!   optimised the graph — so its own fusions (RMSNorm, SiLU, bias into the matrix products)
//!   have run first — for the generic and per-channel binary operators it left.
//! - [`product`]: f32 matrix products of two activations (attention), swapped in after tract
//!   has decluttered the graph (transposes folded into the product) and before it plans its
//!   kernels.
//! - [`weight_product`] and [`direct_conv`]: f32 matrix products of activations and a constant
//!   weight (the FP32 backbone's layers) and f32 2-D convolutions (the patch layers' and the
//!   VAE's), swapped in at the same stage on x86 CPUs with AVX2 and FMA.
//! - [`f32_tile`]: the f32 kernel of these three.
//! - [`integer`] and [`integer_conv`]: INT8 matrix products and convolutions of u8 activations
//!   and constant weights, swapped in at the same stage on x86 CPUs with AVX2 and no VNNI, where
//!   tract's kernel for them is slow; exact integer arithmetic ([`i16_gemm`]).
//! - [`im2col`]: the patch matrix of INT8 convolutions, packed by tract-linalg's own packer,
//!   swapped in after optimisation.
//! - [`conv_panels`]: the patch matrix of f32 convolutions, one panel at a time for tract's
//!   kernel, with row copies, for the convolutions [`direct_conv`] leaves to tract; swapped in
//!   after optimisation too.
//! - [`softmax`]: f32 softmax over the last axis (attention weights), swapped in after
//!   optimisation.
//! - [`pad`]: f32 constant padding (the borders tract puts before its convolutions), swapped in
//!   after optimisation too.
//!
//! [`wide`] compiles the plain loops of these operators for AVX2 where the CPU has it.

/// `output_facts` and `cost` of a typed operator that computes what its `original` field, the
/// tract operator it replaced, computes: the same facts and the same cost.
macro_rules! facts_and_cost_of_original {
    () => {
        fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
            self.original.output_facts(inputs)
        }

        fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
            self.original.cost(inputs)
        }
    };
}

mod attention;
mod conv_panels;
mod direct_conv;
mod elementwise;
mod f32_tile;
mod i16_gemm;
mod im2col;
mod integer;
mod integer_conv;
mod linear;
mod linear_onnx;
mod norm;
mod onnx_graph;
mod pad;
mod product;
mod quantize;
mod rms_norm;
mod rope;
mod softmax;
#[cfg(test)]
mod test_util;
mod weight_product;
mod wide;

use tract_onnx::prelude::*;

pub use conv_panels::{conv_shapes, ConvShape, PanelIm2col};
pub use direct_conv::DirectConv;
pub use elementwise::Elementwise;
pub use i16_gemm::KERNEL_NAME as INTEGER_KERNEL;
pub use im2col::QuantIm2col;
pub use integer::{int8_products_fast_here, IntegerProduct};
pub use integer_conv::IntegerConv;
pub use linear::IntegerLinears;
pub use norm::instance_normalization;
pub use onnx_graph::{rewrite as rewrite_onnx, Rewritten};
pub use pad::ConstantPad;
pub use product::ActivationProduct;
pub use quantize::DynamicQuantizeU8;
pub use softmax::RowSoftmax;
pub use weight_product::WeightProduct;

/// Which parts of this module graphs load with: all of them, unless the environment's
/// `TRANSFUSION_FUSED` says otherwise — `0` for none (every graph exactly as tract plans and
/// runs it), or a comma-separated list of parts to leave out, each with a leading `-`:
/// `quantize`, `elementwise`, `pad`, `im2col`, `conv`, `products`, `weights`, `integer` (the
/// INT8 products, convolutions and linear-layer groups), `softmax`, `norm`, `rope`, `rms-norm`,
/// `attention` (which starts from the `rope` rewrite's nodes: `-rope` turns it off too),
/// `vector-state` (the upper-state clearing of [`crate::graph::eval_node`]).
/// For the speed A/Bs of docs/performance.md, and to rule a part out when chasing a numerical
/// difference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rewrites {
    pub quantize: bool,
    pub elementwise: bool,
    pub pad: bool,
    pub im2col: bool,
    pub conv: bool,
    pub products: bool,
    pub weights: bool,
    pub integer: bool,
    pub softmax: bool,
    pub norm: bool,
    pub rope: bool,
    pub rms_norm: bool,
    pub attention: bool,
    pub vector_state: bool,
}

impl Rewrites {
    /// Every part on.
    pub const ALL: Rewrites = Rewrites {
        quantize: true,
        elementwise: true,
        pad: true,
        im2col: true,
        conv: true,
        products: true,
        weights: true,
        integer: true,
        softmax: true,
        norm: true,
        rope: true,
        rms_norm: true,
        attention: true,
        vector_state: true,
    };

    /// Whether the SDK's INT8 operators replace tract's here: the `integer` part is on and this
    /// CPU wants them ([`integer::wanted_here`]).
    pub fn sdk_integer(self) -> bool {
        self.integer && integer::wanted_here()
    }

    /// What `TRANSFUSION_FUSED` asks for.
    pub fn from_env() -> Rewrites {
        Rewrites::parse(std::env::var("TRANSFUSION_FUSED").ok().as_deref())
    }

    fn parse(value: Option<&str>) -> Rewrites {
        let Some(value) = value else {
            return Rewrites::ALL;
        };
        if value.trim() == "0" {
            return Rewrites {
                quantize: false,
                elementwise: false,
                pad: false,
                im2col: false,
                conv: false,
                products: false,
                weights: false,
                integer: false,
                softmax: false,
                norm: false,
                rope: false,
                rms_norm: false,
                attention: false,
                vector_state: false,
            };
        }
        let mut r = Rewrites::ALL;
        for word in value.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let flag = match word.strip_prefix('-') {
                Some("quantize") => &mut r.quantize,
                Some("elementwise") => &mut r.elementwise,
                Some("pad") => &mut r.pad,
                Some("im2col") => &mut r.im2col,
                Some("conv") => &mut r.conv,
                Some("products") => &mut r.products,
                Some("weights") => &mut r.weights,
                Some("integer") => &mut r.integer,
                Some("softmax") => &mut r.softmax,
                Some("norm") => &mut r.norm,
                Some("rope") => &mut r.rope,
                Some("rms-norm") => &mut r.rms_norm,
                Some("attention") => &mut r.attention,
                Some("vector-state") => &mut r.vector_state,
                _ => {
                    log::warn!(
                        "TRANSFUSION_FUSED: `{word}` is not `0` nor one of -quantize, \
                         -elementwise, -pad, -im2col, -conv, -products, -weights, -integer, \
                         -softmax, -norm, -rope, -rms-norm, -attention, -vector-state; ignored"
                    );
                    continue;
                }
            };
            *flag = false;
        }
        r
    }
}

/// Name tract gives its `DynamicQuantizeLinear` (u8) operator.
const TRACT_DQL: &str = "DynamicQuantizeLinearU8";

/// Replaces, in a typed model tract has not optimised yet, every node this module has a faster
/// operator for at that stage; returns how many were replaced.
pub fn apply(model: &mut TypedModel, rewrites: Rewrites) -> usize {
    if !rewrites.quantize {
        return 0;
    }
    let mut replaced = 0;
    for node in model.nodes_mut() {
        if node.op.name() == TRACT_DQL && node.inputs.len() == 1 && node.outputs.len() == 3 {
            node.op = Box::new(DynamicQuantizeU8);
            replaced += 1;
        }
    }
    replaced
}

/// Replaces, in a model tract has decluttered but not optimised:
/// - every product of two non-constant f32 tensors that [`ActivationProduct`] computes;
/// - where this CPU runs the tile kernel fast ([`f32_tile::avx2_fma_here`]), every f32 product
///   with a constant weight that [`WeightProduct`] computes and every f32 convolution that
///   [`DirectConv`] computes;
/// - where this CPU wants them ([`integer::wanted_here`]), every INT8 product and convolution
///   that [`IntegerProduct`] and [`IntegerConv`] compute, the first with the `Cast` and `Mul`
///   that rescale it to f32 folded in ([`integer::rescale_products`]).
///
/// Returns how many were replaced or folded.
pub fn apply_decluttered(model: &mut TypedModel, rewrites: Rewrites) -> TractResult<usize> {
    let mut swaps: Vec<(usize, Box<dyn TypedOp>)> = Vec::new();
    let integer = rewrites.sdk_integer();
    let tiles = f32_tile::avx2_fma_here();
    let (weights, convs) = (rewrites.weights && tiles, rewrites.conv && tiles);
    for node in model.nodes() {
        let Ok(facts) = model.node_input_facts(node.id) else {
            continue;
        };
        let op = node.op.as_ref();
        let products = rewrites.products && facts.iter().all(|f| f.konst.is_none());
        let swap = offer(integer, || IntegerProduct::replacing(op, &facts))
            .or_else(|| offer(integer, || IntegerConv::replacing(op, &facts)))
            .or_else(|| offer(weights, || WeightProduct::replacing(op, &facts)))
            .or_else(|| offer(convs, || DirectConv::replacing(op, &facts)))
            .or_else(|| offer(products, || ActivationProduct::replacing(op, &facts)));
        if let Some(swap) = swap {
            swaps.push((node.id, swap));
        }
    }
    let replaced = swaps.len();
    for (id, op) in swaps {
        if let Some(node) = model.nodes_mut().get_mut(id) {
            node.op = op;
        }
    }
    let rescaled = if integer {
        integer::rescale_products(model)?
    } else {
        0
    };
    Ok(replaced + rescaled)
}

/// The operator `replacing` gives, boxed, when the rewrite is `on`.
fn offer<O: TypedOp>(on: bool, replacing: impl FnOnce() -> Option<O>) -> Option<Box<dyn TypedOp>> {
    on.then(replacing).flatten().map(|o| Box::new(o) as _)
}

/// Replaces, in a model tract has optimised, every node [`Elementwise`], [`ConstantPad`],
/// [`QuantIm2col`] or [`PanelIm2col`] computes the same way; returns how many were replaced.
/// `convs`: the geometry of the graph's f32 convolutions, read by [`conv_shapes`] before tract
/// optimised it.
pub fn apply_optimized(model: &mut TypedModel, rewrites: Rewrites, convs: &[ConvShape]) -> usize {
    let mut swaps: Vec<(usize, Box<dyn TypedOp>)> = Vec::new();
    for node in model.nodes() {
        let Ok(facts) = model.node_input_facts(node.id) else {
            continue;
        };
        let types: Vec<DatumType> = facts.iter().map(|f| f.datum_type).collect();
        let op = node.op.as_ref();
        if let Some(op) = Elementwise::replacing(op, &types).filter(|_| rewrites.elementwise) {
            swaps.push((node.id, Box::new(op)));
        } else if let Some(op) = ConstantPad::replacing(op, &types).filter(|_| rewrites.pad) {
            swaps.push((node.id, Box::new(op)));
        } else if let Some(op) = facts
            .first()
            .and_then(|input| RowSoftmax::replacing(op, input))
            .filter(|_| rewrites.softmax)
        {
            swaps.push((node.id, Box::new(op)));
        } else if let Some(output) = node.outputs.first().filter(|_| rewrites.im2col) {
            if let Some(op) = QuantIm2col::replacing(op, &output.fact) {
                swaps.push((node.id, Box::new(op)));
            } else if let Some(op) = facts
                .first()
                .and_then(|input| PanelIm2col::replacing(op, input, &output.fact, convs))
            {
                swaps.push((node.id, Box::new(op)));
            }
        }
    }
    let replaced = swaps.len();
    for (id, op) in swaps {
        if let Some(node) = model.nodes_mut().get_mut(id) {
            node.op = op;
        }
    }
    replaced
}

/// Whether `t` is f32 laid out in C order, each element at the offset its index gives. The
/// stride of an axis of length 1 does not matter (tract leaves arbitrary ones there when it
/// inserts axes into a constant).
fn dense_f32(t: &Tensor) -> bool {
    t.datum_type() == DatumType::F32 && c_order(t)
}

/// Whether `t`'s elements sit in C order (axes of length 1 excepted, as for [`dense_f32`]).
fn c_order(t: &Tensor) -> bool {
    let shape = t.shape();
    let mut expected = 1isize;
    let ordered = shape.iter().zip(t.strides()).rev().all(|(&n, &stride)| {
        let ok = n == 1 || stride == expected;
        expected *= n as isize;
        ok
    });
    t.len() == shape.iter().product::<usize>() && ordered
}

/// The one position an axis has in input or output `i` of an `EinSum` (`positions` being the
/// axis's `inputs` or `outputs`): `Some(None)` where it has none, `None` where it repeats.
fn single_position(positions: &TVec<TVec<usize>>, i: usize) -> Option<Option<usize>> {
    match positions.get(i).map(|p| p.as_slice()) {
        Some([]) | None => Some(None),
        Some([p]) => Some(Some(*p)),
        _ => None,
    }
}

/// How many matrix-product threads the calling graph's runs use.
fn pool_threads() -> usize {
    match tract_linalg::multithread::current_tract_executor() {
        tract_linalg::multithread::Executor::MultiThread(pool) => pool.current_num_threads(),
        _ => 1,
    }
}

/// Rows per part when `m` rows of a product are spread over the calling graph's
/// matrix-product threads in whole tiles of `tile` rows, or `None` to keep them on this thread:
/// one thread, or fewer than two tiles' rows (a decoded token's one).
fn rows_per_part(m: usize, tile: usize) -> Option<usize> {
    let threads = pool_threads();
    (threads > 1 && tile > 0 && m >= 2 * tile)
        .then(|| m.div_ceil(threads.min(m / tile)).next_multiple_of(tile))
}

/// Calls `work` on each of `parts` (disjoint pieces of one operator's output): spread over the
/// calling graph's matrix-product threads when `spread` and it has a pool, in turn on this
/// thread otherwise. `None` when any call returned `None`.
fn each_on_pool<T: Send>(
    parts: impl Iterator<Item = T> + Send,
    spread: bool,
    work: impl Fn(T) -> Option<()> + Sync,
) -> Option<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    match tract_linalg::multithread::current_tract_executor() {
        tract_linalg::multithread::Executor::MultiThread(pool) if spread => {
            let failed = AtomicBool::new(false);
            pool.scope(|s| {
                for part in parts {
                    let (failed, work) = (&failed, &work);
                    s.spawn(move |_| {
                        if work(part).is_none() {
                            failed.store(true, Ordering::Relaxed);
                        }
                    });
                }
            });
            (!failed.into_inner()).then_some(())
        }
        _ => parts.map(work).collect(),
    }
}

/// C-order strides of `shape`, in elements (tract's natural strides).
fn c_strides(shape: &[usize]) -> TVec<usize> {
    Tensor::natural_strides(shape)
        .iter()
        .map(|&s| s.unsigned_abs())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::Rewrites;

    #[test]
    fn the_environment_turns_all_or_single_parts_off() {
        assert_eq!(Rewrites::parse(None), Rewrites::ALL);
        assert!(!Rewrites::parse(Some("0")).elementwise);
        assert!(!Rewrites::parse(Some("0")).vector_state);
        let r = Rewrites::parse(Some("-products, -vector-state,-nonsense"));
        assert!(!r.products && !r.vector_state);
        assert!(r.quantize && r.elementwise && r.pad && r.im2col && r.integer && r.softmax);
        assert!(!Rewrites::parse(Some("-softmax")).softmax);
        assert!(!Rewrites::parse(Some("-norm")).norm);
        assert!(!Rewrites::parse(Some("-weights")).weights);
        assert!(!Rewrites::parse(Some("-conv")).conv);
        assert!(!Rewrites::parse(Some("0")).norm);
        assert!(!Rewrites::parse(Some("-integer")).integer);
        let r = Rewrites::parse(Some("-rope,-rms-norm,-attention"));
        assert!(!r.rope && !r.rms_norm && !r.attention && r.integer);
        let off = Rewrites::parse(Some("0"));
        assert!(!off.rope && !off.rms_norm && !off.attention);
    }
}
