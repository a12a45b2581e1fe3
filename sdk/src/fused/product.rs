//! f32 matrix products of two activations: the backbone's attention scores `Q·Kᵀ` and its
//! weighted sum `A·V`.
//!
//! tract plans every product for its packed matrix kernels. With a weight that pays: the weight
//! is packed once at load. With two activations both operands are packed on every call, for a
//! product of 64 × (P + S) per head — at one decoded token, 13 000 multiply-adds behind two
//! packing passes and a kernel dispatch, 27–60 µs a node, 16 such nodes a token
//! (`transfusion bench --profile`). [`ActivationProduct`] computes them with little set-up:
//! tiles of up to 6 rows × 16 columns ([`f32_tile`]) against panels of the second operand, read
//! in place where 16 of its columns are adjacent (`V` of `A·V`) and copied otherwise — for
//! scores `Q·Kᵀ` as `(K·Qᵀ)ᵀ` when that copies fewer panels (one of `Qᵀ` for the 16 positions of
//! a step, instead of four of `Kᵀ`); and for one to three rows of scores, where a copy costs
//! more than it saves, a dot product per output. The summation order differs from tract's
//! kernel, so values agree to rounding (the bundle tolerances of `verify`), not bit for bit.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::einsum::EinSum;

use super::f32_tile::{self, pack, Left, Panel, COLUMNS, ONE_TAP, ROWS};
use super::{c_strides, dense_f32, single_position};

/// Below this many rows, scores whose operands both run along the reduced axis are dot products
/// rather than tiles.
const DOT_ROWS: usize = 4;

/// `c[batch…, m, n] = Σ_k a[batch…, m, k] · b[batch…, k, n]`, each axis at its own position in
/// each tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActivationProduct {
    /// Positions of each batch axis in (a, b, c).
    batch: TVec<(usize, usize, usize)>,
    /// Positions of the row axis in (a, c), the column axis in (b, c), the reduced axis in (a, b).
    m: (usize, usize),
    n: (usize, usize),
    k: (usize, usize),
    /// The node this replaced: its output facts, and the fallback for inputs this operator does
    /// not take (strided views, broadcast batch axes).
    original: EinSum,
}

impl ActivationProduct {
    /// The replacement for an f32 `EinSum` of two inputs (`facts`) whose axes are batch axes
    /// and one row, one column and one reduced axis, each at most once per tensor. Reduced axes
    /// of length 1 (the batch `B` of the SDK's plans, which tract's declutter sums over) take
    /// no part.
    pub fn replacing(op: &dyn TypedOp, facts: &[&TypedFact]) -> Option<ActivationProduct> {
        let einsum = op.downcast_ref::<EinSum>()?;
        let [fa, fb] = facts else {
            return None;
        };
        if einsum.q_params.is_some()
            || einsum.operating_dt != DatumType::F32
            || fa.datum_type != DatumType::F32
            || fb.datum_type != DatumType::F32
        {
            return None;
        }
        let unit = |fact: &TypedFact, p: Option<usize>| {
            p.is_none_or(|p| fact.shape.get(p).is_some_and(|d| d.is_one()))
        };
        // Candidates per role, with whether the axis has length 1.
        let (mut batch, mut ms, mut ns, mut ks) = (tvec![], tvec![], tvec![], tvec![]);
        for axis in einsum.axes.iter_all_axes() {
            let a = single_position(&axis.inputs, 0)?;
            let b = single_position(&axis.inputs, 1)?;
            let c = single_position(&axis.outputs, 0)?;
            let ones = unit(fa, a) && unit(fb, b);
            match (a, b, c) {
                (Some(a), Some(b), Some(c)) => batch.push((a, b, c)),
                (Some(a), None, Some(c)) => ms.push(((a, c), ones)),
                (None, Some(b), Some(c)) => ns.push(((b, c), ones)),
                (Some(a), Some(b), None) => ks.push(((a, b), ones)),
                // Only the output has it (a 1 there), or a length-1 axis one side sums over.
                (None, None, Some(_)) => {}
                _ if ones => {}
                _ => return None,
            }
        }
        // One role each: the axis of real length, or any when all have length 1 (a 1 in the
        // output, or a sum of one term).
        let pick = |candidates: &[((usize, usize), bool)]| {
            let real: TVec<_> = candidates.iter().filter(|(_, ones)| !ones).collect();
            match real.as_slice() {
                [] => candidates.first().map(|(p, _)| *p),
                [(p, _)] => Some(*p),
                _ => None,
            }
        };
        let (m, n, k) = (pick(&ms)?, pick(&ns)?, pick(&ks)?);
        Some(ActivationProduct {
            batch,
            m,
            n,
            k,
            original: einsum.clone(),
        })
    }

    /// The product, or `None` where the shapes are not this operator's (the caller falls back).
    fn product(&self, a: &Tensor, b: &Tensor) -> Option<TractResult<Tensor>> {
        let (sa, sb) = (a.shape(), b.shape());
        let (rows, depth) = (*sa.get(self.m.0)?, *sa.get(self.k.0)?);
        let cols = *sb.get(self.n.0)?;
        if *sb.get(self.k.1)? != depth {
            return None;
        }
        // Axes of length 1 keep their place in the output.
        let mut shape: TVec<usize> = tvec![1; self.original.axes.rank(InOut::Out(0))];
        *shape.get_mut(self.m.1)? = rows;
        *shape.get_mut(self.n.1)? = cols;
        let mut batch = tvec![];
        for &(pa, pb, pc) in &self.batch {
            let n = *sa.get(pa)?;
            // A broadcast batch axis goes back to tract.
            if *sb.get(pb)? != n {
                return None;
            }
            *shape.get_mut(pc)? = n;
            batch.push(n);
        }
        if depth == 0 || shape.contains(&0) {
            // A sum of no terms (a weighted sum over an empty past) is zeros, and an empty
            // output has nothing to compute.
            return Some(Tensor::zero::<f32>(&shape));
        }
        let (ta, tb, tc) = (c_strides(sa), c_strides(sb), c_strides(&shape));
        let stride = |s: &TVec<usize>, p: usize| s.get(p).copied();
        let geometry = Geometry {
            rows,
            cols,
            depth,
            a: (stride(&ta, self.m.0)?, stride(&ta, self.k.0)?),
            b: (stride(&tb, self.k.1)?, stride(&tb, self.n.0)?),
            c: (stride(&tc, self.m.1)?, stride(&tc, self.n.1)?),
        };
        let batch_strides: Option<TVec<(usize, usize, usize)>> = self
            .batch
            .iter()
            .map(|&(pa, pb, pc)| Some((stride(&ta, pa)?, stride(&tb, pb)?, stride(&tc, pc)?)))
            .collect();
        let batch_strides = batch_strides?;
        Some(run(a, b, &shape, &batch, &batch_strides, &geometry))
    }
}

/// One product's sizes and (row, reduced) / (reduced, column) / (row, column) strides.
#[derive(Clone, Copy)]
struct Geometry {
    rows: usize,
    cols: usize,
    depth: usize,
    a: (usize, usize),
    b: (usize, usize),
    c: (usize, usize),
}

impl Geometry {
    /// The same product as `cᵀ = bᵀ · aᵀ`: `b` becomes the left operand.
    fn transposed(&self) -> Geometry {
        Geometry {
            rows: self.cols,
            cols: self.rows,
            depth: self.depth,
            a: (self.b.1, self.b.0),
            b: (self.a.1, self.a.0),
            c: (self.c.1, self.c.0),
        }
    }

    /// How many panels of the right operand must be copied: none where its columns are
    /// adjacent (but for a last, narrower one), else one per [`COLUMNS`] columns.
    fn copies(&self) -> usize {
        if self.b.1 == 1 {
            usize::from(!self.cols.is_multiple_of(COLUMNS))
        } else {
            self.cols.div_ceil(COLUMNS)
        }
    }
}

fn run(
    a: &Tensor,
    b: &Tensor,
    shape: &[usize],
    batch: &[usize],
    batch_strides: &[(usize, usize, usize)],
    g: &Geometry,
) -> TractResult<Tensor> {
    let mut out = Tensor::zero::<f32>(shape)?;
    let (xs, ys) = (a.try_as_plain_ram()?, b.try_as_plain_ram()?);
    let (xs, ys) = (xs.as_slice::<f32>()?, ys.as_slice::<f32>()?);
    let mut view = out.try_as_plain_ram_mut()?;
    let cs = view.as_slice_mut::<f32>()?;
    let mut index: TVec<usize> = tvec![0; batch.len()];
    let (mut ao, mut bo, mut co) = (0usize, 0usize, 0usize);
    let mut scratch = Vec::new();
    loop {
        one(xs, ys, cs, (ao, bo, co), g, &mut scratch)
            .ok_or_else(|| format_err!("matrix product operand shorter than its shape"))?;
        let mut wrapped = true;
        for (ix, (&n, &(sa, sb, sc))) in index.iter_mut().zip(batch.iter().zip(batch_strides)).rev()
        {
            *ix += 1;
            ao += sa;
            bo += sb;
            co += sc;
            if *ix < n {
                wrapped = false;
                break;
            }
            *ix = 0;
            ao -= sa * n;
            bo -= sb * n;
            co -= sc * n;
        }
        if wrapped {
            return Ok(out);
        }
    }
}

/// `c = a · b` for one `rows × depth` by `depth × cols` product: value `(i, k)` of `a` at
/// `xs[ao + i·a.0 + k·a.1]`, `(k, j)` of `b` at `ys[bo + k·b.0 + j·b.1]`, `(i, j)` of `c`
/// written to `cs[co + i·c.0 + j·c.1]` — the products of [`super::Attention`] on the kernel of
/// [`ActivationProduct`]. `None` when an operand is shorter than that.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    (xs, ao, a): (&[f32], usize, (usize, usize)),
    (ys, bo, b): (&[f32], usize, (usize, usize)),
    (cs, co, c): (&mut [f32], usize, (usize, usize)),
    (rows, cols, depth): (usize, usize, usize),
    scratch: &mut Vec<f32>,
) -> Option<()> {
    let g = Geometry {
        rows,
        cols,
        depth,
        a,
        b,
        c,
    };
    one(xs, ys, cs, (ao, bo, co), &g, scratch)
}

/// One product of the batch, its operands and output starting at `ao`, `bo` and `co`. `None`
/// when an operand is shorter than the geometry says.
fn one(
    xs: &[f32],
    ys: &[f32],
    cs: &mut [f32],
    (ao, bo, co): (usize, usize, usize),
    g: &Geometry,
    scratch: &mut Vec<f32>,
) -> Option<()> {
    if g.rows < DOT_ROWS && g.a.1 == 1 && g.b.0 == 1 {
        // A row or two of scores (a decoded token): a dot product per output costs less than
        // packing the columns into panels for so few rows.
        for i in 0..g.rows {
            let a_row = ao + i * g.a.0;
            let x = xs.get(a_row..a_row + g.depth)?;
            for j in 0..g.cols {
                let start = bo + j * g.b.1;
                *cs.get_mut(co + i * g.c.0 + j * g.c.1)? = dot(x, ys.get(start..start + g.depth)?);
            }
        }
        return Some(());
    }
    // Of `c = a·b` and `cᵀ = bᵀ·aᵀ`, the one with fewer panels to copy: for scores `Q·Kᵀ` of
    // 16 positions against 50, one copy of `Qᵀ` instead of four of `Kᵀ`.
    let flipped = g.transposed();
    if flipped.copies() < g.copies() {
        tiles(ys, bo, xs, ao, cs, co, &flipped, scratch)
    } else {
        tiles(xs, ao, ys, bo, cs, co, g, scratch)
    }
}

/// `c = a · b` by tiles, `a`'s rows read in place and `b`'s columns by panels.
#[allow(clippy::too_many_arguments)]
fn tiles(
    xs: &[f32],
    ao: usize,
    ys: &[f32],
    bo: usize,
    cs: &mut [f32],
    co: usize,
    g: &Geometry,
    scratch: &mut Vec<f32>,
) -> Option<()> {
    let mut tile = [[0f32; COLUMNS]; ROWS];
    for j0 in (0..g.cols).step_by(COLUMNS) {
        let width = COLUMNS.min(g.cols - j0);
        let panel = if g.b.1 == 1 && width == COLUMNS {
            // Sixteen adjacent columns: the panel is the operand itself.
            Panel {
                values: ys,
                offset: bo + j0,
                stride: g.b.0,
                ahead: 0,
            }
        } else {
            pack(ys, bo + j0 * g.b.1, g.b, g.depth, width, scratch)?;
            Panel::packed(scratch)
        };
        for i0 in (0..g.rows).step_by(ROWS) {
            let t = tile.get_mut(..ROWS.min(g.rows - i0))?;
            let left = Left {
                values: xs,
                offset: ao + i0 * g.a.0,
                row: g.a.0,
                step: g.a.1,
                depth: g.depth,
                taps: ONE_TAP,
            };
            f32_tile::tile(left, panel, t)?;
            for (i, sums) in t.iter().enumerate() {
                let c_row = co + (i0 + i) * g.c.0 + j0 * g.c.1;
                let sums = sums.get(..width)?;
                if g.c.1 == 1 {
                    cs.get_mut(c_row..c_row + width)?.copy_from_slice(sums);
                } else {
                    for (j, &v) in sums.iter().enumerate() {
                        *cs.get_mut(c_row + j * g.c.1)? = v;
                    }
                }
            }
        }
    }
    Some(())
}

/// Σ x·y with eight partial sums, so the loop vectorises.
fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (xs, ys) in xc.zip(yc) {
        for ((s, &a), &b) in acc.iter_mut().zip(xs).zip(ys) {
            *s += a * b;
        }
    }
    acc.iter().sum::<f32>() + tail
}

impl Op for ActivationProduct {
    fn name(&self) -> StaticName {
        "ActivationProduct(transfusion)".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{}", self.original.axes)])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for ActivationProduct {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        if let [a, b] = inputs.as_slice() {
            if dense_f32(a) && dense_f32(b) {
                if let Some(c) = self.product(a, b) {
                    return Ok(tvec![c?.into_tvalue()]);
                }
            }
        }
        self.original.eval(ctx, inputs)
    }
}

impl TypedOp for ActivationProduct {
    facts_and_cost_of_original!();

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::test_util::{f32s, Rng};
    use tract_onnx::tract_core::axes::AxesMapping;

    fn tensor(shape: &[usize], seed: u64) -> Tensor {
        Rng(seed | 1).tensor(shape, |r| r.unit() * 2.0 - 1.0)
    }

    /// Ours against tract's own `EinSum` on the same inputs, to f32 rounding.
    fn check(expr: &str, a: &[usize], b: &[usize]) {
        let einsum = EinSum::new(expr.parse::<AxesMapping>().unwrap(), DatumType::F32);
        let (ta, tb) = (tensor(a, 3), tensor(b, 11));
        let (fa, fb) = (
            TypedFact::shape_and_dt_of(&ta),
            TypedFact::shape_and_dt_of(&tb),
        );
        let ours = ActivationProduct::replacing(&einsum, &[&fa, &fb])
            .unwrap_or_else(|| panic!("{expr} {a:?} {b:?} not taken"));
        let ctx = EvalContext::out_of_plan();
        let inputs = || tvec![ta.clone().into_tvalue(), tb.clone().into_tvalue()];
        let want = einsum.eval(&ctx, inputs()).unwrap().remove(0);
        let got = ours.eval(&ctx, inputs()).unwrap().remove(0);
        assert_eq!(got.shape(), want.shape(), "{expr} {a:?} {b:?}");
        for (i, (g, w)) in f32s(&got).iter().zip(f32s(&want)).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "{expr} {a:?} {b:?} [{i}]: {g} vs {w}"
            );
        }
    }

    #[test]
    fn attention_products_match_tract_at_the_sdk_sizes_and_odd_ones() {
        for (s, p) in [
            (1usize, 0usize),
            (1, 51),
            (16, 34),
            (17, 5),
            (34, 0),
            (3, 70),
        ] {
            let t = s + p;
            // Scores: Q·Kᵀ, both along the reduced axis (the form tract declutters to).
            check("abmk,abnk->bmn", &[1, 4, s, 64], &[1, 4, t, 64]);
            // Weighted sum: A·V, V along the output's columns.
            check("bmk,abkn->mbn", &[4, s, t], &[1, 4, t, 64]);
        }
        // A weighted sum into `[S, H, hd]` (the heads' transpose folded in), also over an empty
        // past (no reduced values) and for no positions.
        for (s, t) in [(34usize, 34usize), (34, 0), (0, 5), (16, 50)] {
            check("amk,akn->man", &[4, s, t], &[4, t, 64]);
        }
        // Odd depths and widths, no batch, and a layout neither fast path takes.
        check("mk,kn->mn", &[5, 13], &[13, 7]);
        check("mk,nk->mn", &[3, 9], &[11, 9]);
        check("km,nk->nm", &[9, 3], &[4, 9]);
        check("bkm,bkn->bmn", &[2, 7, 3], &[2, 7, 5]);
        // More rows than columns (no flip), a partial last panel, and tiles of every height.
        check("mk,nk->mn", &[20, 9], &[5, 9]);
        check("mk,kn->mn", &[7, 70], &[70, 33]);
        check("bmk,bnk->bnm", &[3, 13, 17], &[3, 40, 17]);
    }

    #[test]
    fn products_it_does_not_compute_stay_on_tract() {
        let einsum = |expr: &str| EinSum::new(expr.parse::<AxesMapping>().unwrap(), DatumType::F32);
        let f = |shape: &[usize]| f32::fact(shape);
        // Two reduced axes of real length, and an axis only one side has.
        let (a, b) = (f(&[2, 3, 4]), f(&[2, 3, 5]));
        assert!(ActivationProduct::replacing(&einsum("kjm,kjn->mn"), &[&a, &b]).is_none());
        assert!(ActivationProduct::replacing(&einsum("xmk,kn->mn"), &[&a, &f(&[4, 5])]).is_none());
        // Not f32.
        let h = f16::fact([3usize, 4]);
        assert!(
            ActivationProduct::replacing(&einsum("mk,kn->mn"), &[&h, &f16::fact([4usize, 5])])
                .is_none()
        );
    }

    #[test]
    fn a_broadcast_batch_falls_back_to_tract() {
        let einsum = EinSum::new(
            "bmk,bkn->bmn".parse::<AxesMapping>().unwrap(),
            DatumType::F32,
        );
        let (ta, tb) = (tensor(&[3, 2, 4], 5), tensor(&[1, 4, 6], 9));
        let facts = [f32::fact([3usize, 2, 4]), f32::fact([3usize, 4, 6])];
        let ours = ActivationProduct::replacing(&einsum, &[&facts[0], &facts[1]]).unwrap();
        let ctx = EvalContext::out_of_plan();
        let inputs = || tvec![ta.clone().into_tvalue(), tb.clone().into_tvalue()];
        let want = einsum.eval(&ctx, inputs()).unwrap().remove(0);
        let got = ours.eval(&ctx, inputs()).unwrap().remove(0);
        assert_eq!(got, want);
    }
}
