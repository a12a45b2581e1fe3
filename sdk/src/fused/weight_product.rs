//! f32 matrix products of activations and a constant weight, `[…, m, k] · [k, n] → […, m, n]`:
//! the FP32 backbone's projections and MLP layers, on x86 CPUs with AVX2 and FMA.
//!
//! There tract plans them on its `fma_mmm_f32_32x3` kernel, 32 weight rows by 3 positions a
//! tile, which at the 16 positions of a diffusion step takes 0.12–0.14 ms for a 256 × 704
//! product (`transfusion bench --profile`, docs/performance.md). [`WeightProduct`] packs the
//! weight once, at load, into panels of 16 columns — one run of 16 values per reduced index,
//! what [`super::f32_tile`]'s kernel reads — multiplies the activations' rows in place, and has
//! the CPU prefetch the next panel while it multiplies one: 0.08 ms for the same product (0.11
//! without the prefetch, the weights then arriving from memory after the arithmetic instead of
//! during it). The sums run in the order of the reduced index with fused multiply-adds, not in
//! tract's order, so values agree to rounding (the bundle tolerances of `verify`), not bit for
//! bit. Elsewhere — ARM, x86 without FMA — tract's kernels keep these products.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::einsum::EinSum;

use super::f32_tile::{tile, Bits, Left, Panel, COLUMNS, ONE_TAP, ROWS};
use super::{dense_f32, each_on_pool, rows_per_part, single_position};

/// The weight `w [k, n]` in panels of [`COLUMNS`] columns: panel `p` holds, for each reduced
/// index, the 16 values of columns `16p ..` (zeros past `n`).
#[derive(Debug, PartialEq, Eq)]
struct WeightPanels {
    k: usize,
    n: usize,
    values: Bits,
}

impl WeightPanels {
    /// From `w` in row-major order (`k` rows of `n`).
    fn from_rows(w: &[f32], k: usize, n: usize) -> WeightPanels {
        let mut values = vec![0f32; n.div_ceil(COLUMNS) * k * COLUMNS];
        if n > 0 {
            for (kk, row) in w.chunks_exact(n).enumerate().take(k) {
                for (p, columns) in row.chunks(COLUMNS).enumerate() {
                    let at = (p * k + kk) * COLUMNS;
                    if let Some(slot) = values.get_mut(at..at + columns.len()) {
                        slot.copy_from_slice(columns);
                    }
                }
            }
        }
        WeightPanels {
            k,
            n,
            values: Bits(values),
        }
    }
}

/// Where an output axis's length comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutAxis {
    /// The activation's axis at this position.
    Kept(usize),
    /// The weight's columns.
    Columns,
    /// An axis only the output has: length 1.
    Unit,
}

/// tract's f32 `EinSum` of an activation and a constant weight where the activation's last axes
/// are summed against the weight's first ones and the weight's last axis is the output's last:
/// `[…, m, k] · [k, n] → […, m, n]` as ONNX `MatMul` gives it, also with the reduced index split
/// over several axes (`[s, h, d] · [h, d, n]`, the attention output projection), with axes of
/// length 1 that only the activation or only the output has. In memory that is always rows of
/// `k` values times a `[k, n]` matrix. Computed on [`super::f32_tile`]'s kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightProduct {
    panels: Arc<WeightPanels>,
    /// The activation's rank and the lengths of its last axes, those summed over (the weight's
    /// first ones).
    rank: usize,
    reduced: TVec<usize>,
    /// The activation's axes of length 1 that the output does not have.
    units: TVec<usize>,
    out_axes: TVec<OutAxis>,
    /// The node this replaced: its output facts, and the fallback for inputs this operator does
    /// not take.
    original: EinSum,
}

impl WeightProduct {
    /// The replacement for an f32 `EinSum` of the form above whose second input is a constant
    /// weight, or `None`.
    pub fn replacing(op: &dyn TypedOp, facts: &[&TypedFact]) -> Option<WeightProduct> {
        let einsum = op.downcast_ref::<EinSum>()?;
        let [fa, fw] = facts else {
            return None;
        };
        if einsum.q_params.is_some()
            || einsum.operating_dt != DatumType::F32
            || fa.datum_type != DatumType::F32
            || fw.datum_type != DatumType::F32
            || fa.konst.is_some()
        {
            return None;
        }
        let w = fw.konst.as_ref()?;
        let (rank, rank_w) = (fa.rank(), w.rank());
        let mut out_axes = tvec![OutAxis::Unit; einsum.axes.rank(InOut::Out(0))];
        let (mut kept, mut reduced, mut units, mut columns) = (tvec![], tvec![], tvec![], None);
        for axis in einsum.axes.iter_all_axes() {
            match (
                single_position(&axis.inputs, 0)?,
                single_position(&axis.inputs, 1)?,
                single_position(&axis.outputs, 0)?,
            ) {
                (Some(a), None, Some(c)) => kept.push((a, c)),
                (Some(a), Some(w), None) => reduced.push((a, w)),
                (None, Some(w), Some(c)) if columns.is_none() => columns = Some((w, c)),
                (Some(a), None, None) if fa.shape.get(a)?.is_one() => units.push(a),
                (None, None, Some(_)) => {}
                _ => return None,
            }
        }
        // The weight: the reduced axes in the activation's order, then the columns.
        let (w_columns, c_columns) = columns?;
        reduced.sort();
        let k_first = rank.checked_sub(reduced.len())?;
        let leading = reduced
            .iter()
            .enumerate()
            .all(|(i, &(a, w))| a == k_first + i && w == i);
        if !leading || w_columns + 1 != rank_w || c_columns + 1 != out_axes.len() {
            return None;
        }
        // The kept axes in the same order in the output.
        kept.sort();
        if kept.windows(2).any(|p| matches!(p, [x, y] if x.1 >= y.1)) {
            return None;
        }
        for &(a, c) in &kept {
            *out_axes.get_mut(c)? = OutAxis::Kept(a);
        }
        *out_axes.get_mut(c_columns)? = OutAxis::Columns;
        let n = *w.shape().last()?;
        let reduced_dims: TVec<usize> = w.shape().get(..w_columns)?.into();
        let k: usize = reduced_dims.iter().product();
        // Each summed axis as long on both sides (tract would broadcast a 1 against the other).
        let same = reduced_dims
            .iter()
            .enumerate()
            .all(|(i, &d)| fa.shape.get(k_first + i) == Some(&d.into()));
        if k == 0 || n == 0 || !same {
            return None;
        }
        let plain = w.try_as_plain_ram().ok()?;
        let values = plain.as_slice::<f32>().ok()?;
        Some(WeightProduct {
            panels: Arc::new(WeightPanels::from_rows(values, k, n)),
            rank,
            reduced: reduced_dims,
            units,
            out_axes,
            original: einsum.clone(),
        })
    }

    /// The product, or `None` where the activation is not this operator's (the caller falls
    /// back).
    fn product(&self, a: &Tensor) -> Option<TractResult<Tensor>> {
        let n = self.panels.n;
        let sa = a.shape();
        let k_first = self.rank.checked_sub(self.reduced.len())?;
        if !dense_f32(a)
            || sa.len() != self.rank
            || sa.get(k_first..)? != self.reduced.as_slice()
            || self.units.iter().any(|&u| sa.get(u) != Some(&1))
        {
            return None;
        }
        let shape: Option<TVec<usize>> = self
            .out_axes
            .iter()
            .map(|axis| match axis {
                OutAxis::Kept(a) => sa.get(*a).copied(),
                OutAxis::Columns => Some(n),
                OutAxis::Unit => Some(1),
            })
            .collect();
        Some(self.run(a, &shape?))
    }

    fn run(&self, a: &Tensor, shape: &[usize]) -> TractResult<Tensor> {
        let mut out = Tensor::zero::<f32>(shape)?;
        let plain = a.try_as_plain_ram()?;
        let xs = plain.as_slice::<f32>()?;
        let mut view = out.try_as_plain_ram_mut()?;
        let cs = view.as_slice_mut::<f32>()?;
        let (k, n) = (self.panels.k, self.panels.n);
        let m = xs.len().checked_div(k).unwrap_or(0);
        let split = rows_per_part(m, ROWS);
        let rows = split.unwrap_or(m).max(1);
        let parts = xs.chunks(rows * k).zip(cs.chunks_mut(rows * n));
        each_on_pool(parts, split.is_some(), |(x, c)| self.rows(x, c))
            .ok_or_else(|| format_err!("WeightProduct: operand shorter than its shape"))?;
        Ok(out)
    }

    /// `c = x · w` for the rows of `x` (`k` values each) and `c` (`n` each), panel by panel so
    /// that each panel is read from memory once.
    fn rows(&self, xs: &[f32], cs: &mut [f32]) -> Option<()> {
        let (k, n) = (self.panels.k, self.panels.n);
        let m = xs.len().checked_div(k)?;
        let mut t = [[0f32; COLUMNS]; ROWS];
        let run = k * COLUMNS;
        let last = self
            .panels
            .values
            .0
            .len()
            .checked_div(run)?
            .checked_sub(1)?;
        for (p, values) in self.panels.values.0.chunks_exact(run).enumerate() {
            let j0 = p * COLUMNS;
            let width = COLUMNS.min(n.checked_sub(j0)?);
            let panel = Panel {
                values,
                offset: 0,
                stride: COLUMNS,
                // The next panel follows this one.
                ahead: if p < last { run } else { 0 },
            };
            for i0 in (0..m).step_by(ROWS) {
                let t = t.get_mut(..ROWS.min(m - i0))?;
                let left = Left {
                    values: xs,
                    offset: i0 * k,
                    row: k,
                    step: 1,
                    depth: k,
                    taps: ONE_TAP,
                };
                tile(left, panel, t)?;
                for (i, sums) in t.iter().enumerate() {
                    let at = (i0 + i) * n + j0;
                    cs.get_mut(at..at + width)?
                        .copy_from_slice(sums.get(..width)?);
                }
            }
        }
        Some(())
    }
}

impl Op for WeightProduct {
    fn name(&self) -> StaticName {
        "WeightProduct(transfusion)".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} ({}×{} f32 panels)",
            self.original.axes, self.panels.k, self.panels.n
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for WeightProduct {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        if let Some(a) = inputs.first() {
            if let Some(c) = self.product(a) {
                return Ok(tvec![c?.into_tvalue()]);
            }
        }
        self.original.eval(ctx, inputs)
    }
}

impl TypedOp for WeightProduct {
    facts_and_cost_of_original!();

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::test_util::{f32s, Rng};
    use tract_onnx::tract_core::axes::AxesMapping;

    /// Ours against tract's own `EinSum` on random inputs, to f32 rounding: the backbone's sizes
    /// and odd ones (a partial last panel, rows not a multiple of 6, batch axes).
    #[test]
    fn products_match_tract() {
        let mut rng = Rng(41);
        for (expr, a_shape, w_shape) in [
            ("amk,kn->amn", vec![1usize, 16, 256], vec![256usize, 704]),
            ("amk,kn->amn", vec![1, 1, 64], vec![64, 40]),
            ("mk,kn->mn", vec![7, 13], vec![13, 17]),
            ("bamk,kn->bamn", vec![2, 3, 5, 9], vec![9, 33]),
            ("mk,kn->mn", vec![34, 3], vec![3, 1]),
            // The forms tract's declutter leaves in the backbone: a unit axis summed away, the
            // reduced index over two axes (heads × head size) with a unit axis in the output,
            // and a vector times a matrix.
            ("amk,kn->mn", vec![1, 16, 256], vec![256, 704]),
            ("mbk,bkn->amn", vec![16, 4, 64], vec![4, 64, 256]),
            ("mbk,bkn->amn", vec![5, 3, 7], vec![3, 7, 20]),
            ("k,kn->man", vec![256], vec![256, 64]),
        ] {
            let einsum = EinSum::new(expr.parse::<AxesMapping>().unwrap(), DatumType::F32);
            let a = rng.tensor(&a_shape, |r| r.unit() * 2.0 - 1.0);
            let w = rng.tensor(&w_shape, |r| r.unit() * 2.0 - 1.0);
            let k: usize = w_shape[..w_shape.len() - 1].iter().product();
            let fa = TypedFact::shape_and_dt_of(&a);
            let fw = TypedFact::try_from(w.clone().into_arc_tensor()).unwrap();
            let ours = WeightProduct::replacing(&einsum, &[&fa, &fw])
                .unwrap_or_else(|| panic!("{expr} not taken"));
            let ctx = EvalContext::out_of_plan();
            let inputs = || tvec![a.clone().into_tvalue(), w.clone().into_tvalue()];
            let want = einsum.eval(&ctx, inputs()).unwrap().remove(0);
            let got = ours.eval(&ctx, inputs()).unwrap().remove(0);
            assert_eq!(got.shape(), want.shape(), "{expr}");
            for (i, (g, w)) in f32s(&got).iter().zip(f32s(&want)).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()) * (k as f32).sqrt(),
                    "{expr} [{i}]: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn rows_split_between_threads_give_the_same_products() {
        use tract_linalg::multithread::{multithread_tract_scope, Executor};
        let einsum = EinSum::new("mk,kn->mn".parse::<AxesMapping>().unwrap(), DatumType::F32);
        let mut rng = Rng(3);
        let a = rng.tensor(&[34, 40], |r| r.unit());
        let w = rng.tensor(&[40, 50], |r| r.unit());
        let fw = TypedFact::try_from(w.clone().into_arc_tensor()).unwrap();
        let ours =
            WeightProduct::replacing(&einsum, &[&TypedFact::shape_and_dt_of(&a), &fw]).unwrap();
        let ctx = EvalContext::out_of_plan();
        let run = || {
            ours.eval(
                &ctx,
                tvec![a.clone().into_tvalue(), w.clone().into_tvalue()],
            )
            .unwrap()
            .remove(0)
        };
        let one = run();
        let three = multithread_tract_scope(Executor::multithread(3), run);
        assert_eq!(one, three);
    }

    #[test]
    fn products_it_does_not_compute_stay_on_tract() {
        let einsum = |expr: &str| EinSum::new(expr.parse::<AxesMapping>().unwrap(), DatumType::F32);
        let a = f32::fact([4usize, 3]);
        let w =
            TypedFact::try_from(tensor2(&[[1f32, 2.0], [3.0, 4.0], [5.0, 6.0]]).into_arc_tensor())
                .unwrap();
        assert!(WeightProduct::replacing(&einsum("mk,kn->mn"), &[&a, &w]).is_some());
        // A weight that is not constant, a transposed weight, a weight first.
        assert!(
            WeightProduct::replacing(&einsum("mk,kn->mn"), &[&a, &f32::fact([3usize, 2])])
                .is_none()
        );
        assert!(WeightProduct::replacing(&einsum("mk,nk->mn"), &[&a, &w]).is_none());
        assert!(WeightProduct::replacing(&einsum("km,mn->kn"), &[&w, &a]).is_none());
        // The reduced axes not last in the activation, or not first in the weight.
        let a3 = f32::fact([2usize, 3, 4]);
        let w3 = TypedFact::try_from(Tensor::zero::<f32>(&[2, 4, 5]).unwrap().into_arc_tensor())
            .unwrap();
        assert!(WeightProduct::replacing(&einsum("bmk,bkn->mn"), &[&a3, &w3]).is_none());
        assert!(WeightProduct::replacing(&einsum("mbk,kbn->mn"), &[&a3, &w3]).is_none());
        // Summed axes of the same total length but not axis for axis (tract broadcasts a 1).
        let a16 = f32::fact([2usize, 1, 6]);
        let w61 = TypedFact::try_from(Tensor::zero::<f32>(&[6, 1, 5]).unwrap().into_arc_tensor())
            .unwrap();
        assert!(WeightProduct::replacing(&einsum("mab,abn->mn"), &[&a16, &w61]).is_none());
        // An activation axis of real length summed away on its own.
        let w4 =
            TypedFact::try_from(Tensor::zero::<f32>(&[4, 5]).unwrap().into_arc_tensor()).unwrap();
        assert!(WeightProduct::replacing(&einsum("amk,kn->amn"), &[&a3, &w4]).is_some());
        assert!(WeightProduct::replacing(&einsum("amk,kn->mn"), &[&a3, &w4]).is_none());
    }
}
