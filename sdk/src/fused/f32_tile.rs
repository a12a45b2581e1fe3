//! f32 tiles of a matrix product `c = a · b`, the arithmetic of [`super::ActivationProduct`],
//! [`super::WeightProduct`] and [`super::DirectConv`]: up to [`ROWS`] rows of `a`, read in place
//! at any strides (and, for a convolution, at several tap offsets), against a panel of
//! [`COLUMNS`] columns of `b` — one run of 16 values per reduced index: `b` itself where 16 of
//! its columns are adjacent, a copy made by [`pack`], or panels packed once at load.
//!
//! On x86 CPUs with AVX2 and FMA the tile's `2 × ROWS` accumulators stay in registers: per
//! reduced index, two loads of the panel, one broadcast per row and two fused multiply-adds.
//! Elsewhere the same sums run in plain Rust, which the compiler vectorises over the 16
//! columns. Each output is summed in the order of the reduced index in both.

/// Whether the tile runs on its AVX2 and FMA kernel on this CPU (elsewhere on plain Rust loops,
/// which are not faster than tract's own kernels).
pub fn avx2_fma_here() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Output columns per tile: two AVX2 registers of eight f32 lanes.
pub const COLUMNS: usize = 16;
/// Left-operand rows per tile: with two accumulators each, 12 of the 16 AVX2 registers.
pub const ROWS: usize = 6;

/// Rows of the left operand. The reduced index runs over `taps.len() × depth` values: for tap
/// `t` and index `d`, value `(i, t·depth + d)` is at `values[offset + taps[t] + i·row + d·step]`.
/// A matrix has one tap at 0 ([`ONE_TAP`]); a convolution has one per kernel position, the
/// offset of that position in its padded input, so that its patches are read in place.
#[derive(Clone, Copy, Debug)]
pub struct Left<'a> {
    pub values: &'a [f32],
    pub offset: usize,
    pub row: usize,
    pub step: usize,
    pub depth: usize,
    pub taps: &'a [usize],
}

/// The taps of a plain matrix.
pub const ONE_TAP: &[usize] = &[0];

/// Packed f32 values, equal when every value's bits are (tract compares operators to merge
/// nodes, and f32 has no `Eq`).
#[derive(Debug)]
pub struct Bits(pub Vec<f32>);

impl PartialEq for Bits {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|(a, b)| a.to_bits() == b.to_bits())
    }
}

impl Eq for Bits {}

/// The right operand's panel: for each reduced index `k`, [`COLUMNS`] values at
/// `values[offset + k·stride ..]`.
///
/// `ahead`, when not 0, is how far past each run the next panel's run lies: the kernel asks the
/// CPU to prefetch it while it multiplies this one, so that a product streaming its weights
/// from memory loads the next panel during the arithmetic on this one instead of after it.
#[derive(Clone, Copy, Debug)]
pub struct Panel<'a> {
    pub values: &'a [f32],
    pub offset: usize,
    pub stride: usize,
    /// A hint: only the AVX2 kernel prefetches, so elsewhere nothing reads it.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub ahead: usize,
}

impl<'a> Panel<'a> {
    /// A packed panel: runs of [`COLUMNS`] values one after the other from the start of
    /// `values`, nothing prefetched.
    pub fn packed(values: &'a [f32]) -> Panel<'a> {
        Panel {
            values,
            offset: 0,
            stride: COLUMNS,
            ahead: 0,
        }
    }
}

/// Copies `width` (≤ [`COLUMNS`]) columns of `b` — value `(k, j)` at
/// `values[offset + k·k_stride + j·j_stride]` — for `depth` reduced indices into `panel` as
/// runs of [`COLUMNS`], zeros past `width`. `None` when `b` is shorter than that.
pub fn pack(
    b: &[f32],
    offset: usize,
    (k_stride, j_stride): (usize, usize),
    depth: usize,
    width: usize,
    panel: &mut Vec<f32>,
) -> Option<()> {
    panel.clear();
    panel.resize(depth * COLUMNS, 0.0);
    for j in 0..width.min(COLUMNS) {
        let column = offset + j * j_stride;
        if k_stride == 1 {
            // A column of b is a contiguous run (Kᵀ's source rows).
            let run = b.get(column..column + depth)?;
            for (k, &v) in run.iter().enumerate() {
                if let Some(slot) = panel.get_mut(k * COLUMNS + j) {
                    *slot = v;
                }
            }
        } else {
            for (k, slot) in panel.get_mut(j..)?.iter_mut().step_by(COLUMNS).enumerate() {
                *slot = *b.get(column + k * k_stride)?;
            }
        }
    }
    Some(())
}

/// `tile[r][j] = Σ_k a(r, k) · panel(k, j)` for the `tile.len()` (≤ [`ROWS`]) first rows of `a`.
/// `None`, the tile untouched, when an operand is shorter than its geometry says.
pub fn tile(a: Left<'_>, panel: Panel<'_>, tile: &mut [[f32; COLUMNS]]) -> Option<()> {
    let rows = tile.len();
    if rows > ROWS {
        return None;
    }
    if rows == 0 {
        return Some(());
    }
    if a.depth == 0 || a.taps.is_empty() {
        tile.iter_mut().for_each(|t| *t = [0.0; COLUMNS]);
        return Some(());
    }
    // The last value each operand's loops read.
    // Checked, so that no geometry can wrap around into an index that passes: the AVX2 kernel
    // reads without bounds checks.
    let last_tap = a.taps.iter().copied().max()?;
    let last_a = a
        .offset
        .checked_add(last_tap)?
        .checked_add((rows - 1).checked_mul(a.row)?)?
        .checked_add((a.depth - 1).checked_mul(a.step)?)?;
    let end_panel = (a.taps.len().checked_mul(a.depth)? - 1)
        .checked_mul(panel.stride)?
        .checked_add(panel.offset)?
        .checked_add(COLUMNS)?;
    if last_a >= a.values.len() || end_panel > panel.values.len() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    if avx2_fma_here() {
        // SAFETY: AVX2 and FMA were just detected; every index the kernel reads was checked
        // above, and it writes `tile.len()` rows.
        unsafe { avx2::dispatch(a, panel, tile) };
        return Some(());
    }
    portable(a, panel, tile)
}

/// The same sums in plain Rust (CPUs without AVX2 and FMA, and tests).
fn portable(a: Left<'_>, panel: Panel<'_>, tile: &mut [[f32; COLUMNS]]) -> Option<()> {
    for (r, t) in tile.iter_mut().enumerate() {
        let mut sums = [0f32; COLUMNS];
        for (ti, &tap) in a.taps.iter().enumerate() {
            for d in 0..a.depth {
                let x = *a.values.get(a.offset + tap + r * a.row + d * a.step)?;
                let start = panel.offset + (ti * a.depth + d) * panel.stride;
                let y = panel.values.get(start..start + COLUMNS)?;
                sums.iter_mut().zip(y).for_each(|(s, &y)| *s += x * y);
            }
        }
        *t = sums;
    }
    Some(())
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Left, Panel, COLUMNS};
    use std::arch::x86_64::*;

    /// [`rows`] for `tile.len()` (1 to 6) rows.
    ///
    /// # Safety
    /// AVX2 and FMA are available, and every index [`super::tile`] checks is in bounds.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dispatch(a: Left<'_>, panel: Panel<'_>, tile: &mut [[f32; COLUMNS]]) {
        // SAFETY: forwarded as the caller gave them.
        unsafe {
            match tile.len() {
                6 => rows::<6>(a, panel, tile),
                5 => rows::<5>(a, panel, tile),
                4 => rows::<4>(a, panel, tile),
                3 => rows::<3>(a, panel, tile),
                2 => rows::<2>(a, panel, tile),
                _ => rows::<1>(a, panel, tile),
            }
        }
    }

    /// The tile of `R` rows, its `2R` accumulators in registers.
    ///
    /// The accumulators are indexed by the loop counter `r < R` over arrays of length `R`, which
    /// cannot panic; the compiler unrolls the loop and keeps them in registers.
    #[allow(clippy::indexing_slicing)]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows<const R: usize>(a: Left<'_>, panel: Panel<'_>, tile: &mut [[f32; COLUMNS]]) {
        if tile.len() < R {
            return;
        }
        // SAFETY: the caller checked that `a` holds `max(taps) + (R − 1)·row + (depth − 1)·step`
        // values past `a.offset` and the panel `(taps·depth − 1)·stride + COLUMNS` past its
        // offset: every pointer made with `add` and every read stays inside them.
        unsafe {
            let base = a.values.as_ptr().add(a.offset);
            let mut y = panel.values.as_ptr().add(panel.offset);
            // Each row's offset, computed once: the loop below then has no arithmetic that a
            // dev build's overflow checks would guard.
            let rows: [usize; R] = std::array::from_fn(|r| r * a.row);
            let mut acc0 = [_mm256_setzero_ps(); R];
            let mut acc1 = [_mm256_setzero_ps(); R];
            for &tap in a.taps {
                let mut x = base.add(tap);
                for _ in 0..a.depth {
                    if panel.ahead != 0 {
                        // A prefetch reads nothing and cannot fault: past the end it is a no-op.
                        _mm_prefetch::<_MM_HINT_T0>(y.wrapping_add(panel.ahead).cast());
                    }
                    let (y0, y1) = (_mm256_loadu_ps(y), _mm256_loadu_ps(y.add(8)));
                    for r in 0..R {
                        let b = _mm256_broadcast_ss(&*x.add(rows[r]));
                        acc0[r] = _mm256_fmadd_ps(b, y0, acc0[r]);
                        acc1[r] = _mm256_fmadd_ps(b, y1, acc1[r]);
                    }
                    // Past the last index these point beyond the operands, never read:
                    // `wrapping_add`, which (unlike `add`) allows that.
                    x = x.wrapping_add(a.step);
                    y = y.wrapping_add(panel.stride);
                }
            }
            for (r, t) in tile.iter_mut().enumerate().take(R) {
                _mm256_storeu_ps(t.as_mut_ptr(), acc0[r]);
                _mm256_storeu_ps(t.as_mut_ptr().add(8), acc1[r]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::test_util::Rng;

    /// Tiles of random operands at odd strides, packed and in place, against plain sums; the
    /// kernel against the portable sums.
    #[test]
    fn tiles_equal_plain_sums_at_any_strides() {
        let mut rng = Rng(5);
        for (rows, depth, width, row, step) in [
            (6usize, 64usize, 16usize, 64usize, 1usize),
            (4, 50, 2, 50, 1),
            (1, 1, 16, 1, 1),
            (5, 7, 9, 1, 5),
            (3, 33, 13, 40, 1),
        ] {
            let a: Vec<f32> = (0..rows * row.max(depth * step) + depth * step)
                .map(|_| rng.unit() * 2.0 - 1.0)
                .collect();
            // b as `width` columns of `depth` values each (the layout of Kᵀ's source).
            let b: Vec<f32> = (0..width * depth).map(|_| rng.unit() * 2.0 - 1.0).collect();
            let mut panel = Vec::new();
            pack(&b, 0, (1, depth), depth, width, &mut panel).unwrap();
            let left = Left {
                values: &a,
                offset: 0,
                row,
                step,
                depth,
                taps: ONE_TAP,
            };
            let at = Panel::packed(&panel);
            let mut got = vec![[0f32; COLUMNS]; rows];
            tile(left, at, &mut got).unwrap();
            let mut plain = vec![[0f32; COLUMNS]; rows];
            portable(left, at, &mut plain).unwrap();
            for i in 0..rows {
                for j in 0..COLUMNS {
                    let want: f32 = if j < width {
                        (0..depth)
                            .map(|k| a[i * row + k * step] * b[j * depth + k])
                            .sum()
                    } else {
                        0.0
                    };
                    let tol = 1e-5 * (1.0 + want.abs()) * depth as f32;
                    assert!((got[i][j] - want).abs() <= tol, "{rows}x{depth} [{i}][{j}]");
                    assert!(
                        (plain[i][j] - want).abs() <= tol,
                        "{rows}x{depth} [{i}][{j}]"
                    );
                }
            }
        }
    }

    #[test]
    fn short_operands_are_refused_not_read() {
        let a = vec![1f32; 10];
        let panel = vec![1f32; 16 * 4];
        let left = |depth| Left {
            values: &a,
            offset: 0,
            row: 4,
            step: 1,
            depth,
            taps: ONE_TAP,
        };
        let at = Panel::packed(&panel);
        let mut t = vec![[7f32; COLUMNS]; 3];
        // Row 2 would end at index 8 + 3 = 11 > 10.
        assert!(tile(left(4), at, &mut t).is_none());
        assert_eq!(t[0][0], 7.0);
        // A panel of 4 reduced indices does not hold 5.
        assert!(tile(left(5), at, &mut t[..1]).is_none());
        assert!(tile(left(4), at, &mut t[..2]).is_some());
        assert_eq!(t[1], [4.0; COLUMNS]);
        assert!(pack(&a, 0, (1, 4), 4, 3, &mut Vec::new()).is_none());
        assert!(tile(left(1), at, &mut vec![[0f32; COLUMNS]; ROWS + 1]).is_none());
    }
}
