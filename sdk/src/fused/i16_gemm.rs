//! Exact integer matrix products `c = x · y` of i16 values in i32, the arithmetic of the INT8
//! operators [`super::IntegerProduct`] and [`super::IntegerConv`]: `vpmaddwd` on AVX2 (two i16
//! products summed into an i32 lane, without saturation for the 9-bit differences `q − q₀`
//! these operators multiply), plain Rust elsewhere.
//!
//! The left operand is packed as rows of i16 pairs, one i32 per pair of reduced indices (what
//! one broadcast puts in every lane); the right one as [`Panels`] of [`COLUMNS`] columns, the two
//! values of each pair side by side — stored as i8 where every value fits (the constant weights
//! of the bundle's INT8 products: half the bytes to stream, which is what a decoded token's
//! products are bound by) and widened in registers — or, for convolutions, as an image whose
//! channels are paired the same way, read in place where a [`Walk`] says ([`image_columns`]).

use tract_onnx::prelude::Datum;

/// The name `inspect --kernels` and [`crate::graph::KernelSummary`] give this kernel.
pub const KERNEL_NAME: &str = "transfusion_avx2_maddwd_i32_6x16";

/// Output columns per panel: two AVX2 registers of eight i32 lanes.
pub const COLUMNS: usize = 16;
/// Left-operand rows per kernel call.
pub const ROWS: usize = 6;

/// The right operand `y [k, n]` in panels of [`COLUMNS`] columns: for each pair of reduced
/// indices `(2p, 2p + 1)`, the two values of each column side by side. Columns past `n` and the
/// index past an odd `k` are zeros.
#[derive(Debug, PartialEq, Eq)]
pub struct Panels {
    k: usize,
    n: usize,
    values: Values,
}

/// The panel values, as i16 or, when all fit, i8.
#[derive(Debug, PartialEq, Eq)]
enum Values {
    Wide(Vec<i16>),
    Narrow(Vec<i8>),
}

/// One panel: `pairs` runs of `2 × COLUMNS` values.
#[derive(Clone, Copy)]
enum Panel<'a> {
    Wide(&'a [i16]),
    Narrow(&'a [i8]),
}

/// Where the kernel finds the right operand's `2 × COLUMNS` values of each pair of reduced
/// indices, counted in values from the start of the operand: `taps.len()` runs of `per_tap`
/// pairs, run `t` from `taps[t]` on, its pairs `stride` apart; of each pair's values, the 16 of
/// the first 8 columns, then the 16 of the last 8 `half` values further on. A packed panel is one
/// run of all its pairs, `2 × COLUMNS` apart, its halves adjacent (`half` = `COLUMNS`); an image
/// read in place is one run per kernel tap, and its halves are two output rows where a row has
/// 8 positions.
#[derive(Clone, Copy, Debug)]
pub struct Walk<'a> {
    pub taps: &'a [usize],
    pub per_tap: usize,
    pub stride: usize,
    pub half: usize,
}

impl Walk<'_> {
    /// Pairs of reduced indices walked.
    pub fn pairs(&self) -> usize {
        self.taps.len() * self.per_tap
    }

    /// Whether every pair's `2 × COLUMNS` values lie within `len` values.
    fn within(&self, len: usize) -> bool {
        let last = self.per_tap.saturating_sub(1) * self.stride + self.half.max(COLUMNS) + COLUMNS;
        self.taps.iter().all(|&t| t + last <= len)
    }
}

/// The walk of a packed panel of `pairs` pairs.
const fn packed(pairs: usize) -> Walk<'static> {
    Walk {
        taps: &[0],
        per_tap: pairs,
        stride: 2 * COLUMNS,
        half: COLUMNS,
    }
}

impl Panels {
    /// All zeros (i16), to be filled with [`Panels::set_pair`].
    pub fn zeros(k: usize, n: usize) -> Panels {
        let len = n.div_ceil(COLUMNS) * k.div_ceil(2) * 2 * COLUMNS;
        Panels {
            k,
            n,
            values: Values::Wide(vec![0; len]),
        }
    }

    /// From `y` in row-major order (`k` rows of `n`), stored as i8 when every value fits.
    pub fn from_rows(y: &[i16], k: usize, n: usize) -> Panels {
        let mut panels = Panels::zeros(k, n);
        if n > 0 {
            // Two rows at a time, one pair run per panel: without an index computation per
            // value (the INT8 backbone's 56 weights are packed at every load).
            let zeros = vec![0; n];
            let mut rows = y.chunks_exact(n).take(k);
            for p in 0..k.div_ceil(2) {
                let even = rows.next().unwrap_or(&zeros);
                let odd = rows.next().unwrap_or(&zeros);
                panels.set_pair(p, even, odd);
            }
        }
        panels.narrowed()
    }

    /// The same panels as i8 when every value fits, else unchanged.
    fn narrowed(self) -> Panels {
        let Values::Wide(wide) = &self.values else {
            return self;
        };
        // A check, then a plain cast: collecting `Option`s does not vectorise, and this runs over
        // every INT8 weight at load.
        if !wide.iter().all(|&v| (-128..=127).contains(&v)) {
            return self;
        }
        #[allow(clippy::cast_possible_truncation)] // every value fits: checked above
        let narrow = wide.iter().map(|&v| v as i8).collect();
        Panels {
            values: Values::Narrow(narrow),
            ..self
        }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// Pairs of reduced indices.
    pub fn pairs(&self) -> usize {
        self.k.div_ceil(2)
    }

    /// Whether the values are stored as i8.
    #[cfg(test)]
    fn is_narrow(&self) -> bool {
        matches!(self.values, Values::Narrow(_))
    }

    /// Sets the reduced index pair `p`, rows `2p` and `2p + 1` of `y`, from two rows of `n`
    /// values (ignored past the end, and on narrowed panels).
    pub fn set_pair(&mut self, p: usize, even: &[i16], odd: &[i16]) {
        let run = self.pairs() * 2 * COLUMNS;
        let (n, at) = (self.n, p * 2 * COLUMNS);
        let Values::Wide(values) = &mut self.values else {
            return;
        };
        if p >= self.k.div_ceil(2) || even.len() < n || odd.len() < n {
            return;
        }
        let columns = even.chunks(COLUMNS).zip(odd.chunks(COLUMNS));
        for (panel, (even, odd)) in values.chunks_exact_mut(run.max(1)).zip(columns) {
            let Some(pairs) = panel.get_mut(at..at + 2 * COLUMNS) else {
                return;
            };
            for (pair, (&a, &b)) in pairs.chunks_exact_mut(2).zip(even.iter().zip(odd)) {
                if let [x, y] = pair {
                    (*x, *y) = (a, b);
                }
            }
        }
    }

    /// The panels in column order.
    fn blocks(&self) -> Box<dyn Iterator<Item = Panel<'_>> + '_> {
        let len = (self.pairs() * 2 * COLUMNS).max(1);
        match &self.values {
            Values::Wide(v) => Box::new(v.chunks_exact(len).map(Panel::Wide)),
            Values::Narrow(v) => Box::new(v.chunks_exact(len).map(Panel::Narrow)),
        }
    }
}

/// Rows of `k` values as the left operand, each mapped to i16 by `value`: one i32 per pair
/// `(x[2p], x[2p + 1])`, the first in the low half; a zero completes an odd `k`.
pub fn pair_rows<T: Copy>(x: &[T], k: usize, value: impl Fn(T) -> i16) -> Vec<i32> {
    let pairs = k.div_ceil(2);
    let rows = x.len().checked_div(k).unwrap_or(0);
    let mut out = vec![0i32; rows * pairs];
    if k > 0 {
        super::wide::avx2(
            #[inline(always)]
            || {
                for (row, o) in x.chunks_exact(k).zip(out.chunks_exact_mut(pairs)) {
                    for (pair, o) in row.chunks(2).zip(o.iter_mut()) {
                        let lo = pair.first().map_or(0, |&v| i32::from(value(v)));
                        let hi = pair.get(1).map_or(0, |&v| i32::from(value(v)));
                        *o = (lo & 0xffff) | (hi << 16);
                    }
                }
            },
        );
    }
    out
}

/// How the i32 sums of a tile row reach the output: as they are, or rescaled to f32.
pub trait Store: Sync {
    type Out: Datum + Copy + Send;
    /// Writes `sums`, the columns from `first` on, to `out`.
    fn store(&self, out: &mut [Self::Out], sums: &[i32], first: usize);

    /// Where this store is a rescale to f32: `out` as f32 and the scales, so that the AVX2
    /// kernel converts and multiplies its sums in registers and writes them in place (only
    /// the AVX2 kernel asks).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn rescaled<'s, 'c>(&'s self, _out: &'c mut [Self::Out]) -> Option<(&'c mut [f32], &'s [f32])> {
        None
    }
}

/// The sums as they are.
pub struct Sums;

impl Store for Sums {
    type Out = i32;
    #[inline]
    fn store(&self, out: &mut [i32], sums: &[i32], _first: usize) {
        out.copy_from_slice(sums);
    }
}

/// `sum as f32 × scale[j]` for column `j`, or `× scale[0]` for every column when `scale` has
/// one value: tract's `Cast` to f32 then `Mul`, value for value.
pub struct Rescaled<'a>(pub &'a [f32]);

impl Store for Rescaled<'_> {
    type Out = f32;

    fn rescaled<'s, 'c>(&'s self, out: &'c mut [f32]) -> Option<(&'c mut [f32], &'s [f32])> {
        Some((out, self.0))
    }

    #[inline]
    fn store(&self, out: &mut [f32], sums: &[i32], first: usize) {
        match self.0 {
            [s] => out
                .iter_mut()
                .zip(sums)
                .for_each(|(o, &v)| *o = v as f32 * s),
            scales => {
                let scales = scales.get(first..).unwrap_or_default();
                for ((o, &v), &s) in out.iter_mut().zip(sums).zip(scales) {
                    *o = v as f32 * s;
                }
            }
        }
    }
}

/// `c[i, :] = x[i, :] · y` for every row of `x` (from [`pair_rows`], `y.pairs()` per row) and of
/// `c` (`y.n()` per row), written by `store`. Rows are split between the calling graph's
/// matrix-product threads in whole kernel calls; a product of fewer than `2 × ROWS` rows (text
/// decoding's one row) stays on the calling thread.
pub fn product<S: Store>(y: &Panels, x: &[i32], c: &mut [S::Out], store: &S) {
    let (n, pairs) = (y.n(), y.pairs());
    let m = x.len().checked_div(pairs).unwrap_or(0);
    match super::rows_per_part(m, ROWS).filter(|_| n > 0) {
        Some(rows) => {
            let parts = x.chunks(rows * pairs).zip(c.chunks_mut(rows * n));
            // Every part succeeds: `rows_times_panels` skips what does not fit.
            let _ = super::each_on_pool(parts, true, |(x, c)| {
                rows_times_panels(y, x, c, store);
                Some(())
            });
        }
        None => rows_times_panels(y, x, c, store),
    }
}

fn rows_times_panels<S: Store>(y: &Panels, x: &[i32], c: &mut [S::Out], store: &S) {
    let (n, pairs) = (y.n(), y.pairs());
    if pairs == 0 {
        let zeros = vec![0i32; n];
        c.chunks_mut(n.max(1))
            .for_each(|row| store.store(row, &zeros, 0));
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        if let Some((c, scales)) = store.rescaled(c) {
            return rescaled_on_avx2(y, x, c, scales);
        }
    }
    let mut tile = [[0i32; COLUMNS]; ROWS];
    for (block, panel) in y.blocks().enumerate() {
        let first = block * COLUMNS;
        let width = COLUMNS.min(n.saturating_sub(first));
        for (r0, rows) in x.chunks(ROWS * pairs).enumerate() {
            let at = (r0 * ROWS, first, width, n);
            through_tile(rows, packed(pairs), panel, at, &mut tile, c, store);
        }
    }
}

/// The kernel on `rows` against `panel` read as `walk` says, its sums through `tile` and written
/// by `store` into `c`'s rows `row…` (each `n` long), columns `first..first + width`.
fn through_tile<S: Store>(
    rows: &[i32],
    walk: Walk<'_>,
    panel: Panel<'_>,
    (row, first, width, n): (usize, usize, usize, usize),
    tile: &mut [[i32; COLUMNS]; ROWS],
    c: &mut [S::Out],
    store: &S,
) {
    let Some(tile) = tile.get_mut(..rows.len() / walk.pairs().max(1)) else {
        return;
    };
    kernel(rows, walk, panel, tile);
    for (i, t) in tile.iter().enumerate() {
        let at = (row + i) * n + first;
        if let (Some(dst), Some(src)) = (c.get_mut(at..at + width), t.get(..width)) {
            store.store(dst, src, first);
        }
    }
}

/// [`rows_times_panels`] rescaled to f32 (`pairs > 0`) on AVX2: each full panel's sums are
/// converted, multiplied by their scales and stored in registers; a narrower last panel goes
/// through a tile and [`Rescaled::store`]. The same values: `sum as f32 × scale`, each rounded
/// once.
#[cfg(target_arch = "x86_64")]
fn rescaled_on_avx2(y: &Panels, x: &[i32], c: &mut [f32], scales: &[f32]) {
    let (n, pairs) = (y.n(), y.pairs());
    let store = Rescaled(scales);
    let mut tile = [[0i32; COLUMNS]; ROWS];
    for (block, panel) in y.blocks().enumerate() {
        let first = block * COLUMNS;
        let width = COLUMNS.min(n.saturating_sub(first));
        // The panel's 16 scales, or the one for all.
        let run = match scales {
            [s] => Some([*s; COLUMNS]),
            _ => scales
                .get(first..first + COLUMNS)
                .and_then(|s| <[f32; COLUMNS]>::try_from(s).ok()),
        };
        for (r0, rows) in x.chunks(ROWS * pairs).enumerate() {
            let count = rows.len() / pairs;
            let start = r0 * ROWS * n + first;
            // The last row's 16 outputs end within `c`.
            let fits = count > 0 && start + (count - 1) * n + COLUMNS <= c.len();
            if let (Some(run), true, true) = (run, width == COLUMNS, fits) {
                // SAFETY: AVX2 was detected by the caller; rows `0..count` of `c` from `start`,
                // `n` apart, each have 16 values (checked just above), and the kernel checks
                // the lengths it reads.
                unsafe {
                    let out = c.as_mut_ptr().add(start);
                    match panel {
                        Panel::Wide(p) => avx2::dispatch_rescaled::<2, _>(
                            rows,
                            packed(pairs),
                            p,
                            (out, n, count),
                            &run,
                        ),
                        Panel::Narrow(p) => avx2::dispatch_rescaled::<1, _>(
                            rows,
                            packed(pairs),
                            p,
                            (out, n, count),
                            &run,
                        ),
                    }
                }
                continue;
            }
            let at = (r0 * ROWS, first, width, n);
            through_tile(rows, packed(pairs), panel, at, &mut tile, c, &store);
        }
    }
}

/// `tile[r][j] = Σ_q ⟨rows[r·pairs + q], y_q[j]⟩` for each of `tile.len()` (≤ `ROWS`) rows, `y_q`
/// being pair `q`'s values in `panel` as `walk` says.
fn kernel(rows: &[i32], walk: Walk<'_>, panel: Panel<'_>, tile: &mut [[i32; COLUMNS]]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was just detected; the kernel checks the lengths it reads and writes.
        unsafe {
            match panel {
                Panel::Wide(y) => avx2::dispatch::<2, _>(rows, walk, y, tile),
                Panel::Narrow(y) => avx2::dispatch::<1, _>(rows, walk, y, tile),
            }
        }
        return;
    }
    match panel {
        Panel::Wide(y) => portable(rows, walk, y, tile),
        Panel::Narrow(y) => portable(rows, walk, y, tile),
    }
}

/// The same sums in plain Rust (CPUs without AVX2, which never load these operators, and tests),
/// from `y` as `walk` says (nothing where it reads past `y`).
fn portable<T: Copy + Into<i32>>(
    rows: &[i32],
    walk: Walk<'_>,
    y: &[T],
    tile: &mut [[i32; COLUMNS]],
) {
    let pairs = walk.pairs();
    tile.iter_mut().for_each(|t| *t = [0; COLUMNS]);
    if !walk.within(y.len()) {
        return;
    }
    let starts = walk
        .taps
        .iter()
        .flat_map(|&t| (0..walk.per_tap).map(move |p| t + p * walk.stride));
    for (t, row) in tile.iter_mut().zip(rows.chunks_exact(pairs.max(1))) {
        for (&x, start) in row.iter().zip(starts.clone()) {
            let (lo, hi) = (i32::from(x as i16), x >> 16);
            let first = y.get(start..start + COLUMNS).unwrap_or_default();
            let second = y.get(start + walk.half..start + walk.half + COLUMNS);
            let values = first
                .chunks_exact(2)
                .chain(second.unwrap_or_default().chunks_exact(2));
            for (v, y) in t.iter_mut().zip(values) {
                if let [a, b] = y {
                    *v += lo * (*a).into() + hi * (*b).into();
                }
            }
        }
    }
}

/// `c[r, at + j] = Σ_q ⟨x[r, q], y_q[j]⟩` for every row `r` of `x` (`walk.pairs()` pairs per row)
/// and column `j < width` (at most [`COLUMNS`]), `y_q` being the `2 × COLUMNS` values of pair `q`
/// in `image` as `walk` says — an image read in place, without a patch matrix. Rows of `c` are
/// `n` apart. Nothing is written where `walk` reads past `image`.
pub fn image_columns(
    x: &[i32],
    walk: Walk<'_>,
    image: &[i16],
    c: &mut [i32],
    (at, width, n): (usize, usize, usize),
) {
    let pairs = walk.pairs();
    debug_assert!(
        walk.within(image.len()),
        "{walk:?} reads past {} values",
        image.len()
    );
    if pairs == 0 || width > COLUMNS || !walk.within(image.len()) {
        return;
    }
    let mut tile = [[0i32; COLUMNS]; ROWS];
    for (r0, rows) in x.chunks(ROWS * pairs).enumerate() {
        #[cfg(target_arch = "x86_64")]
        {
            let (count, start) = (rows.len() / pairs, r0 * ROWS * n + at);
            // Full width, and the last row's 16 outputs end within `c`: stored from registers.
            let fits =
                width == COLUMNS && count > 0 && start + (count - 1) * n + COLUMNS <= c.len();
            if fits && std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 was just detected; rows `0..count` of `c` from `start`, `n`
                // apart, each have 16 values (checked just above), and the kernel checks what
                // it reads.
                unsafe {
                    let out = c.as_mut_ptr().add(start);
                    avx2::dispatch_rows::<2, i16>(rows, walk, image, (out, n, count));
                }
                continue;
            }
        }
        let position = (r0 * ROWS, at, width, n);
        through_tile(
            rows,
            walk,
            Panel::Wide(image),
            position,
            &mut tile,
            c,
            &Sums,
        );
    }
}

#[cfg(target_arch = "x86_64")]
#[path = "i16_gemm_avx2.rs"]
mod avx2;

#[cfg(test)]
#[path = "i16_gemm_tests.rs"]
mod tests;
