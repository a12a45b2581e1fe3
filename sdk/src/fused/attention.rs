//! One layer's attention core as one operator: the heads of Q, K and V split out of the
//! projections, the rotary embedding of Q and K, the KV cache extended by the new positions,
//! the scaled scores with the additive mask, their softmax, the weighted sum of V, and the
//! heads merged back.
//!
//! The converter writes it as 18 ONNX nodes a layer (with the rotary embeddings already one
//! [`super::rope`] node each): three `Reshape`/`Transpose` pairs, two `Concat`s onto the cache,
//! a `Transpose` of K, two `MatMul`s, the scale's `Mul`, the mask's `Add`, `Softmax`, and a
//! `Transpose` and `Reshape` back. Per decoded token each is a node call of its own, and
//! together they took a third of the INT8 backbone's time outside its products
//! (`transfusion bench --profile`, docs/performance.md). [`fuse_attention`] finds them in a
//! decoded graph after [`super::rope::fuse_rope`] and writes one `TransfusionAttention` node of the
//! SDK's operator set ([`super::onnx_graph::DOMAIN`]) in their place; [`attention`] is its parser.
//! The cache outputs (`present_*`) are the node's second and third outputs, bit for bit the
//! concatenations; the attention output agrees with tract's to rounding (the dot products sum in
//! another order).

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::{GraphProto, NodeProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_hir::internal::{
    check_input_arity, check_output_arity, expand, Expansion, InferenceOp, InferenceResult, Solver,
    TensorProxy,
};

use super::dense_f32;
use super::onnx_graph::{float_attribute, fuse, int_attribute, is, operands, Uses, DOMAIN};

/// The operator type of the fused node: a name no ONNX operator has (tract-onnx finds a
/// node's parser by its type alone, whatever its domain).
pub const OP_TYPE: &str = "TransfusionAttention";

/// Whether `node` is the SDK's rotary embedding.
fn is_rope(node: &NodeProto) -> bool {
    node.op_type == super::rope::OP_TYPE && node.domain == DOMAIN
}

/// The 18 nodes of one layer's attention ending at the heads' merging `Reshape` node `merge`,
/// and the node that replaces them.
fn matched(uses: &Uses, merge: usize) -> Option<(Vec<usize>, NodeProto)> {
    let node = uses.graph.node.get(merge)?;
    let ([merged, merge_shape], [o]) = (node.input.as_slice(), node.output.as_slice()) else {
        return None;
    };
    let &[0, 0, width] = uses.int64s(merge_shape)?.as_slice() else {
        return None;
    };
    // `Reshape`'s `allowzero` (0 by default) makes the zeros above copy the input's sizes.
    let plain_reshape = |n: &NodeProto| Uses::int_attr(n, "allowzero").unwrap_or(0) == 0;
    if !is(node, "Reshape") || !plain_reshape(node) {
        return None;
    }
    let step = |value: &String, op: &str, reader: usize| uses.only_step(value, op, reader);
    let perm = |n: &NodeProto, p: &[i64]| Uses::ints_attr(n, "perm") == Some(p);
    let (it, unheads) = step(merged, "Transpose", merge)?;
    let (iav, av) = step(unheads.input.first()?, "MatMul", it)?;
    let [probs, v_all] = av.input.as_slice() else {
        return None;
    };
    let (ism, softmax) = step(probs, "Softmax", iav)?;
    let (iadd, add) = step(softmax.input.first()?, "Add", ism)?;
    if !perm(unheads, &[0, 2, 1, 3]) || !matches!(Uses::int_attr(softmax, "axis"), Some(-1 | 3)) {
        return None;
    }
    let (scaled, mask) = operands(add, |v| step(v, "Mul", iadd).is_some())?;
    let (imul, mul) = step(scaled, "Mul", iadd)?;
    let (scores, scale) = operands(mul, |v| step(v, "MatMul", imul).is_some())?;
    let scale = uses.f32_scalar(scale)?;
    let (iqk, qk) = step(scores, "MatMul", imul)?;
    let [q_r, kt] = qk.input.as_slice() else {
        return None;
    };
    let (ikt, k_t) = step(kt, "Transpose", iqk)?;
    let k_all = k_t.input.first()?;
    let concat = |v: &String| {
        uses.writer(v)
            .filter(|(_, n)| is(n, "Concat") && n.output.len() == 1)
    };
    let (ik, k_cat) = concat(k_all)?;
    let (iv, v_cat) = concat(v_all)?;
    let cache_axis = |n: &NodeProto| matches!(Uses::int_attr(n, "axis"), Some(2 | -2));
    if !perm(k_t, &[0, 1, 3, 2]) || !cache_axis(k_cat) || !cache_axis(v_cat) {
        return None;
    }
    let ([past_k, k_r], [past_v, vh]) = (k_cat.input.as_slice(), v_cat.input.as_slice()) else {
        return None;
    };
    let rope_of = |v: &String, reader: usize| {
        uses.writer(v)
            .filter(|(_, n)| is_rope(n) && n.output.len() == 1 && uses.read_only_by(v, reader))
    };
    let (iqr, q_rope) = rope_of(q_r, iqk)?;
    let (ikr, k_rope) = rope_of(k_r, ik)?;
    let ([qh, cos, sin], [kh, cos_k, sin_k]) = (q_rope.input.as_slice(), k_rope.input.as_slice())
    else {
        return None;
    };
    let half = Uses::int_attr(q_rope, "half")?;
    if cos != cos_k || sin != sin_k || Uses::int_attr(k_rope, "half") != Some(half) {
        return None;
    }
    // Each of Q, K and V: `[1, S, H·hd]` → `Reshape [0, 0, H, hd]` → `Transpose (0, 2, 1, 3)`.
    let heads_of = |xh: &String, reader: usize| -> Option<(String, i64, [usize; 2])> {
        let (itr, tr) = step(xh, "Transpose", reader)?;
        let (irs, rs) = step(tr.input.first()?, "Reshape", itr)?;
        let [x, shape] = rs.input.as_slice() else {
            return None;
        };
        let &[0, 0, heads, head_dim] = uses.int64s(shape)?.as_slice() else {
            return None;
        };
        let fits = perm(tr, &[0, 2, 1, 3])
            && plain_reshape(rs)
            && Some(head_dim) == half.checked_mul(2)
            && heads.checked_mul(head_dim) == Some(width);
        fits.then(|| (x.clone(), heads, [itr, irs]))
    };
    let (q, heads, q_nodes) = heads_of(qh, iqr)?;
    let (k, _, k_nodes) = heads_of(kh, ikr)?;
    let (v, _, v_nodes) = heads_of(vh, iv)?;
    let node = NodeProto {
        input: vec![
            q,
            k,
            v,
            cos.clone(),
            sin.clone(),
            past_k.clone(),
            past_v.clone(),
            mask.clone(),
        ],
        output: vec![o.clone(), k_all.clone(), v_all.clone()],
        name: format!("{}.attention", node.name),
        op_type: OP_TYPE.to_string(),
        domain: DOMAIN.to_string(),
        attribute: vec![
            int_attribute("heads", heads),
            int_attribute("head_dim", 2 * half),
            float_attribute("scale", scale),
        ],
        ..NodeProto::default()
    };
    let mut nodes = vec![merge, it, iav, ism, iadd, imul, iqk, ikt, ik, iv, iqr, ikr];
    nodes.extend(q_nodes.into_iter().chain(k_nodes).chain(v_nodes));
    Some((nodes, node))
}

/// Replaces every attention core of the form above in `graph` by one `TransfusionAttention` node;
/// returns how many.
pub fn fuse_attention(graph: &mut GraphProto) -> usize {
    fuse(graph, matched)
}

/// Parser of the SDK's `TransfusionAttention` nodes for tract-onnx's operator register.
pub fn attention(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let positive = |name: &str| {
        Uses::int_attr(node, name)
            .and_then(|v| usize::try_from(v).ok())
            .filter(|&v| v > 0)
            .ok_or_else(|| format_err!("{}: Attention without a positive `{name}`", node.name))
    };
    let (heads, head_dim) = (positive("heads")?, positive("head_dim")?);
    ensure!(
        head_dim % 2 == 0 && heads.checked_mul(head_dim).is_some(),
        "{}: {heads} heads of {head_dim}: the sizes of a head must be even and their product a size",
        node.name
    );
    let scale = Uses::float_attr(node, "scale")
        .ok_or_else(|| format_err!("{}: Attention without `scale`", node.name))?;
    Ok((
        expand(AttentionOnnx(Attention {
            heads,
            head_dim,
            scale,
        })),
        vec![],
    ))
}

/// The node while tract infers types: `o` is `q`'s shape; the caches are `past`'s with the
/// new positions added on axis 2.
#[derive(Clone, Debug)]
struct AttentionOnnx(Attention);

impl Expansion for AttentionOnnx {
    fn name(&self) -> StaticName {
        "Attention".into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(3)
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 8)?;
        check_output_arity(outputs, 3)?;
        let ([q, _, _, _, _, past_k, _, _], [o, k_all, v_all]) = (inputs, outputs) else {
            bail!("Attention: arity checked above");
        };
        for t in inputs.iter().chain(outputs) {
            s.equals(&t.datum_type, f32::datum_type())?;
        }
        s.equals(&o.shape, &q.shape)?;
        for cache in [k_all, v_all] {
            s.equals(&cache.rank, 4)?;
            s.given_2(&past_k.shape, &q.shape, move |s, past, q| {
                let mut shape = past;
                if let (Some(p), Some(new)) = (shape.get_mut(2), q.get(1)) {
                    *p = p.clone() + new;
                }
                s.equals(&cache.shape, shape)
            })?;
        }
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.0.clone(), inputs)
    }
}

/// The attention core for `heads` heads of `head_dim` values: inputs `q`, `k`, `v`
/// `[1, S, H·hd]`, `cos`, `sin` `[S, hd]`, the caches `[1, H, P, hd]` and the additive mask
/// `[S, P + S]`; outputs the merged heads `[1, S, H·hd]` and the caches `[1, H, P + S, hd]`.
#[derive(Clone, Debug)]
pub struct Attention {
    heads: usize,
    head_dim: usize,
    scale: f32,
}

/// Equal when the sizes are and the scales are the same bits (tract compares operators to
/// merge nodes).
impl PartialEq for Attention {
    fn eq(&self, other: &Self) -> bool {
        (self.heads, self.head_dim, self.scale.to_bits())
            == (other.heads, other.head_dim, other.scale.to_bits())
    }
}

impl Eq for Attention {}

impl Op for Attention {
    fn name(&self) -> StaticName {
        "Attention(transfusion)".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} heads of {}, scale {}",
            self.heads, self.head_dim, self.scale
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for Attention {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let [q, k, v, cos, sin, past_k, past_v, mask] = inputs.as_slice() else {
            bail!("Attention takes 8 inputs, got {}", inputs.len());
        };
        let (h, hd) = (self.heads, self.head_dim);
        let s = q.shape().get(1).copied().unwrap_or(0);
        let p = past_k.shape().get(2).copied().unwrap_or(0);
        let shaped = |t: &TValue, shape: &[usize]| dense_f32(t) && t.shape() == shape;
        ensure!(
            shaped(q, &[1, s, h * hd])
                && shaped(k, &[1, s, h * hd])
                && shaped(v, &[1, s, h * hd])
                && shaped(cos, &[s, hd])
                && shaped(sin, &[s, hd])
                && shaped(past_k, &[1, h, p, hd])
                && shaped(past_v, &[1, h, p, hd])
                && shaped(mask, &[s, p + s]),
            "Attention ({h} heads of {hd}): inputs of shapes {:?}, expected f32 q, k, v [1, S, {}], \
             cos, sin [S, {hd}], caches [1, {h}, P, {hd}], mask [S, P + S]",
            inputs.iter().map(|t| t.shape().to_vec()).collect::<Vec<_>>(),
            h * hd
        );
        let (qv, kv, vv) = (
            q.try_as_plain_ram()?,
            k.try_as_plain_ram()?,
            v.try_as_plain_ram()?,
        );
        let (cv, sv) = (cos.try_as_plain_ram()?, sin.try_as_plain_ram()?);
        let (pkv, pvv, mv) = (
            past_k.try_as_plain_ram()?,
            past_v.try_as_plain_ram()?,
            mask.try_as_plain_ram()?,
        );
        let values = Values {
            q: qv.as_slice::<f32>()?,
            k: kv.as_slice::<f32>()?,
            v: vv.as_slice::<f32>()?,
            cos: cv.as_slice::<f32>()?,
            sin: sv.as_slice::<f32>()?,
            past_k: pkv.as_slice::<f32>()?,
            past_v: pvv.as_slice::<f32>()?,
            mask: mv.as_slice::<f32>()?,
        };
        let mut o = Tensor::zero::<f32>(&[1, s, h * hd])?;
        let mut k_all = Tensor::zero::<f32>(&[1, h, p + s, hd])?;
        let mut v_all = Tensor::zero::<f32>(&[1, h, p + s, hd])?;
        {
            let (mut ov, mut kav, mut vav) = (
                o.try_as_plain_ram_mut()?,
                k_all.try_as_plain_ram_mut()?,
                v_all.try_as_plain_ram_mut()?,
            );
            let outs = (
                ov.as_slice_mut::<f32>()?,
                kav.as_slice_mut::<f32>()?,
                vav.as_slice_mut::<f32>()?,
            );
            super::wide::avx2(
                #[inline(always)]
                || self.run(&values, outs, s, p),
            )
            .ok_or_else(|| format_err!("Attention: an input shorter than its shape"))?;
        }
        Ok(tvec![
            o.into_tvalue(),
            k_all.into_tvalue(),
            v_all.into_tvalue()
        ])
    }
}

/// The inputs' values, in the shapes [`Attention`] checked.
struct Values<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    cos: &'a [f32],
    sin: &'a [f32],
    past_k: &'a [f32],
    past_v: &'a [f32],
    mask: &'a [f32],
}

impl Attention {
    /// Fills the output and the two caches for `s` new positions after `p` cached ones. `None`
    /// when an operand is shorter than its shape (checked before).
    #[inline(always)]
    fn run(
        &self,
        x: &Values,
        (o, k_all, v_all): (&mut [f32], &mut [f32], &mut [f32]),
        s: usize,
        p: usize,
    ) -> Option<()> {
        use super::product::matmul;
        let (h, hd) = (self.heads, self.head_dim);
        let t = p + s;
        let mut rotated = vec![0f32; s * hd];
        let mut heads = vec![0f32; s * hd];
        let mut scores = vec![0f32; s * t];
        let mut scratch = Vec::new();
        let rows = |xs: &[f32], head: usize, out: &mut [f32]| {
            for (row, out) in xs.chunks_exact(h * hd).zip(out.chunks_exact_mut(hd)) {
                if let Some(r) = row.get(head * hd..(head + 1) * hd) {
                    out.copy_from_slice(r);
                }
            }
        };
        let per_head = (t * hd).max(1);
        let caches = k_all
            .chunks_exact_mut(per_head)
            .zip(v_all.chunks_exact_mut(per_head));
        for (head, (kc, vc)) in caches.enumerate().take(h) {
            // The caches: the past rows, then the new ones (K rotated).
            let past = head * p * hd..(head + 1) * p * hd;
            let (k_past, k_new) = kc.split_at_mut(p * hd);
            let (v_past, v_new) = vc.split_at_mut(p * hd);
            k_past.copy_from_slice(x.past_k.get(past.clone())?);
            v_past.copy_from_slice(x.past_v.get(past)?);
            rows(x.k, head, &mut heads);
            super::rope::rotate(&heads, x.cos, x.sin, k_new, hd / 2);
            rows(x.v, head, v_new);
            rows(x.q, head, &mut heads);
            super::rope::rotate(&heads, x.cos, x.sin, &mut rotated, hd / 2);
            // Scores `q · kᵀ`, then `· scale + mask` as the graph's `Mul` and `Add` do, their
            // softmax, and the weighted sum of V into this head's columns of `o`.
            let q = (rotated.as_slice(), 0, (hd, 1));
            matmul(
                q,
                (&*kc, 0, (1, hd)),
                (&mut scores, 0, (t, 1)),
                (s, t, hd),
                &mut scratch,
            )?;
            for (row, m) in scores
                .chunks_exact_mut(t.max(1))
                .zip(x.mask.chunks_exact(t.max(1)))
            {
                for (score, &m) in row.iter_mut().zip(m) {
                    *score = *score * self.scale + m;
                }
            }
            super::softmax::rows_here(&mut scores, t);
            let weights = (scores.as_slice(), 0, (t, 1));
            let out = (&mut *o, head * hd, (h * hd, 1));
            matmul(weights, (&*vc, 0, (hd, 1)), out, (s, hd, t), &mut scratch)?;
        }
        Some(())
    }
}

impl TypedOp for Attention {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (Some(q), Some(past)) = (inputs.first(), inputs.get(5)) else {
            bail!("Attention takes 8 inputs");
        };
        let mut cache: TVec<TDim> = past.shape.to_tvec();
        if let (Some(p), Some(s)) = (cache.get_mut(2), q.shape.get(1)) {
            *p = p.clone() + s;
        }
        Ok(tvec![
            f32::fact(q.shape.clone()),
            f32::fact(cache.clone()),
            f32::fact(cache)
        ])
    }

    /// The two products' multiply-adds: `H · S · (P + S) · hd` each.
    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let (Some(q), Some(past)) = (inputs.first(), inputs.get(5)) else {
            bail!("Attention takes 8 inputs");
        };
        let (Some(s), Some(p)) = (q.shape.get(1), past.shape.get(2)) else {
            bail!(
                "Attention: q of rank {}, caches of rank {}",
                q.rank(),
                past.rank()
            );
        };
        let macs = s.clone() * (p.clone() + s) * (2 * self.heads * self.head_dim);
        Ok(tvec!((Cost::FMA(DatumType::F32), macs)))
    }

    as_op!();
}

#[cfg(test)]
#[path = "attention_tests.rs"]
mod tests;
