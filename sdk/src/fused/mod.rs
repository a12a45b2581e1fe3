//! Load-time replacements of slow tract operators by faster ones with the same results.
//!
//! The bundle's files stay standard ONNX (onnxruntime and `onnx.checker` read the very same
//! files); after tract has translated a graph, nodes whose tract implementation is slow at our
//! sizes are swapped for an operator of this module that computes the same values — bit for
//! bit, except the activation products, which agree to rounding. Each operator is tested
//! against tract's own on random inputs, and `transfusion verify` holds the whole graphs to
//! the bundle tolerances.
//!
//! - [`quantize`]: `DynamicQuantizeLinear`, swapped in before tract optimises the graph (its
//!   optimiser has nothing to do with it).
//! - [`elementwise`]: f32 add/sub/mul/div with broadcasting, swapped in after tract has
//!   optimised the graph — so its own fusions (RMSNorm, SiLU, bias into the matrix products)
//!   have run first — for the generic and per-channel binary operators it left.
//! - [`product`]: f32 matrix products of two activations (attention), swapped in after tract
//!   has decluttered the graph (transposes folded into the product) and before it plans its
//!   kernels; the one operator here that agrees to rounding rather than bit for bit.
//! - [`im2col`]: the patch matrix of INT8 convolutions, packed by tract-linalg's own packer,
//!   swapped in after optimisation.
//! - [`pad`]: f32 constant padding (the borders tract puts before its convolutions), swapped in
//!   after optimisation too.

mod elementwise;
mod im2col;
mod pad;
mod product;
mod quantize;
#[cfg(test)]
mod test_util;

use tract_onnx::prelude::*;

pub use elementwise::Elementwise;
pub use im2col::QuantIm2col;
pub use pad::ConstantPad;
pub use product::ActivationProduct;
pub use quantize::DynamicQuantizeU8;

/// Whether graphs load with this module's operators (and CPU runs clear the vector upper state
/// after each node, [`crate::graph::eval_node`]): yes unless the environment sets
/// `TRANSFUSION_FUSED=0`, which leaves every graph exactly as tract plans and runs it (to compare
/// speed, or to rule these operators out when chasing a numerical difference).
pub fn enabled() -> bool {
    std::env::var_os("TRANSFUSION_FUSED").is_none_or(|v| v != "0")
}

/// Name tract gives its `DynamicQuantizeLinear` (u8) operator.
const TRACT_DQL: &str = "DynamicQuantizeLinearU8";

/// Replaces, in a typed model tract has not optimised yet, every node this module has a faster
/// operator for at that stage; returns how many were replaced.
pub fn apply(model: &mut TypedModel) -> usize {
    let mut replaced = 0;
    for node in model.nodes_mut() {
        if node.op.name() == TRACT_DQL && node.inputs.len() == 1 && node.outputs.len() == 3 {
            node.op = Box::new(DynamicQuantizeU8);
            replaced += 1;
        }
    }
    replaced
}

/// Replaces, in a model tract has decluttered but not optimised, every product of two
/// non-constant f32 tensors [`ActivationProduct`] computes; returns how many were replaced.
pub fn apply_decluttered(model: &mut TypedModel) -> usize {
    let mut swaps = Vec::new();
    for node in model.nodes() {
        let Ok(facts) = model.node_input_facts(node.id) else {
            continue;
        };
        if facts.iter().any(|f| f.konst.is_some()) {
            continue;
        }
        if let Some(op) = ActivationProduct::replacing(node.op.as_ref(), &facts) {
            swaps.push((node.id, op));
        }
    }
    let replaced = swaps.len();
    for (id, op) in swaps {
        if let Some(node) = model.nodes_mut().get_mut(id) {
            node.op = Box::new(op);
        }
    }
    replaced
}

/// Replaces, in a model tract has optimised, every node [`Elementwise`], [`ConstantPad`] or
/// [`QuantIm2col`] computes the same way; returns how many were replaced.
pub fn apply_optimized(model: &mut TypedModel) -> usize {
    let mut swaps: Vec<(usize, Box<dyn TypedOp>)> = Vec::new();
    for node in model.nodes() {
        let Ok(facts) = model.node_input_facts(node.id) else {
            continue;
        };
        let types: Vec<DatumType> = facts.iter().map(|f| f.datum_type).collect();
        if let Some(op) = Elementwise::replacing(node.op.as_ref(), &types) {
            swaps.push((node.id, Box::new(op)));
        } else if let Some(op) = ConstantPad::replacing(node.op.as_ref(), &types) {
            swaps.push((node.id, Box::new(op)));
        } else if let Some(op) = node
            .outputs
            .first()
            .and_then(|o| QuantIm2col::replacing(node.op.as_ref(), &o.fact))
        {
            swaps.push((node.id, Box::new(op)));
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

/// C-order strides of `shape`, in elements (tract's natural strides).
fn c_strides(shape: &[usize]) -> TVec<usize> {
    Tensor::natural_strides(shape)
        .iter()
        .map(|&s| s.unsigned_abs())
        .collect()
}
