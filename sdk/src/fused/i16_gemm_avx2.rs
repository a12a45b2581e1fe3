//! The AVX2 side of [`super`]: the `vpmaddwd` kernel and where its row sums go.

use super::{Walk, COLUMNS};
use std::arch::x86_64::*;

/// Where a kernel call's row sums go: row `r`'s 16 i32 in two registers.
trait Sink {
    /// # Safety
    /// AVX2 is enabled; `r` is below the row count the sink was made for.
    unsafe fn put(&mut self, r: usize, acc0: __m256i, acc1: __m256i);
}

/// Into a tile of at least `R` rows (checked by the kernel).
struct Tile<'a>(&'a mut [[i32; COLUMNS]]);

impl Sink for Tile<'_> {
    #[inline(always)]
    unsafe fn put(&mut self, r: usize, acc0: __m256i, acc1: __m256i) {
        if let Some(t) = self.0.get_mut(r) {
            // SAFETY: `t` holds COLUMNS = 16 i32: two unaligned 256-bit stores.
            unsafe {
                _mm256_storeu_si256(t.as_mut_ptr().cast(), acc0);
                _mm256_storeu_si256(t.as_mut_ptr().add(COLUMNS / 2).cast(), acc1);
            }
        }
    }
}

/// Into i32 rows `n` apart from `out`.
struct Rows {
    out: *mut i32,
    n: usize,
}

impl Sink for Rows {
    #[inline(always)]
    unsafe fn put(&mut self, r: usize, acc0: __m256i, acc1: __m256i) {
        // SAFETY: the caller of `dispatch_rows` guarantees 16 values at each row.
        unsafe {
            let row = self.out.add(r * self.n);
            _mm256_storeu_si256(row.cast(), acc0);
            _mm256_storeu_si256(row.add(8).cast(), acc1);
        }
    }
}

/// Into f32 rows `n` apart from `out`, each sum converted and multiplied by its column's
/// scale (`s0`, `s1`).
struct Scaled {
    out: *mut f32,
    n: usize,
    s0: __m256,
    s1: __m256,
}

impl Sink for Scaled {
    #[inline(always)]
    unsafe fn put(&mut self, r: usize, acc0: __m256i, acc1: __m256i) {
        // SAFETY: the caller of `dispatch_rescaled` guarantees 16 values at each row.
        unsafe {
            let row = self.out.add(r * self.n);
            _mm256_storeu_ps(row, _mm256_mul_ps(_mm256_cvtepi32_ps(acc0), self.s0));
            _mm256_storeu_ps(row.add(8), _mm256_mul_ps(_mm256_cvtepi32_ps(acc1), self.s1));
        }
    }
}

/// [`rows`] for `tile.len()` rows, from `y` as `walk` says.
#[target_feature(enable = "avx2")]
pub unsafe fn dispatch<const WIDTH: usize, T>(
    x: &[i32],
    walk: Walk<'_>,
    y: &[T],
    tile: &mut [[i32; COLUMNS]],
) {
    let count = tile.len();
    let mut sink = Tile(tile);
    // SAFETY: forwarded as the caller gave them; the tile has `count` rows.
    unsafe { by_rows::<WIDTH, _, _>(x, walk, y, count, &mut sink) }
}

/// [`rows`] for `rows` rows, stored as i32 at `out`, rows `n` apart.
///
/// # Safety
/// AVX2 is available, and `out` has 16 writable i32 at each of its `rows` rows (1 to 6; none
/// is written for another count).
#[target_feature(enable = "avx2")]
pub unsafe fn dispatch_rows<const WIDTH: usize, T>(
    x: &[i32],
    walk: Walk<'_>,
    y: &[T],
    (out, n, rows): (*mut i32, usize, usize),
) {
    let mut sink = Rows { out, n };
    // SAFETY: forwarded as the caller gave them.
    unsafe { by_rows::<WIDTH, _, _>(x, walk, y, rows, &mut sink) }
}

/// [`rows`] for `rows` rows, stored as f32 × `scales` at `out`, rows `n` apart.
///
/// # Safety
/// AVX2 is available, and `out` has 16 writable f32 at each of its `rows` rows (1 to 6; none
/// is written for another count).
#[target_feature(enable = "avx2")]
pub unsafe fn dispatch_rescaled<const WIDTH: usize, T>(
    x: &[i32],
    walk: Walk<'_>,
    y: &[T],
    (out, n, rows): (*mut f32, usize, usize),
    scales: &[f32; COLUMNS],
) {
    // SAFETY: 16 f32 are read from the array in two unaligned loads; the rest is forwarded.
    unsafe {
        let mut sink = Scaled {
            out,
            n,
            s0: _mm256_loadu_ps(scales.as_ptr()),
            s1: _mm256_loadu_ps(scales.as_ptr().add(8)),
        };
        by_rows::<WIDTH, _, _>(x, walk, y, rows, &mut sink)
    }
}

#[target_feature(enable = "avx2")]
unsafe fn by_rows<const WIDTH: usize, T, S: Sink>(
    x: &[i32],
    walk: Walk<'_>,
    y: &[T],
    count: usize,
    sink: &mut S,
) {
    // SAFETY: forwarded as the caller gave them.
    unsafe {
        match count {
            6 => rows::<6, WIDTH, T, S>(x, walk, y, sink),
            5 => rows::<5, WIDTH, T, S>(x, walk, y, sink),
            4 => rows::<4, WIDTH, T, S>(x, walk, y, sink),
            3 => rows::<3, WIDTH, T, S>(x, walk, y, sink),
            2 => rows::<2, WIDTH, T, S>(x, walk, y, sink),
            1 => rows::<1, WIDTH, T, S>(x, walk, y, sink),
            _ => {}
        }
    }
}

/// [`super::kernel`] for `R` rows: per pair of reduced indices, the operand's two registers
/// (loaded as i16, or as i8 and sign-extended: `WIDTH` 2 or 1 bytes a value, the size of
/// `T`), one broadcast per row and two `vpmaddwd`; the `2R` accumulators stay in
/// registers. Nothing is stored unless every value `walk` reads lies within `y`.
///
/// The accumulators are indexed by the loop counter `r < R` over arrays of length `R`, which
/// cannot panic; written with iterators instead, the compiler keeps them on the stack and the
/// kernel runs 3× slower (`bench --profile`).
#[allow(clippy::indexing_slicing)]
#[target_feature(enable = "avx2")]
unsafe fn rows<const R: usize, const WIDTH: usize, T, S: Sink>(
    rows: &[i32],
    walk: Walk<'_>,
    y: &[T],
    sink: &mut S,
) {
    let pairs = walk.pairs();
    if std::mem::size_of::<T>() != WIDTH || rows.len() < R * pairs || !walk.within(y.len()) {
        return;
    }
    let (mut x, base) = (rows.as_ptr(), y.as_ptr().cast::<u8>());
    // Each row's offset, computed once: the loop below then has no arithmetic that a dev
    // build's overflow checks would guard.
    let offsets: [usize; R] = std::array::from_fn(|r| r * pairs);
    let (stride, half) = (walk.stride * WIDTH, walk.half * WIDTH);
    let mut acc0 = [_mm256_setzero_si256(); R];
    let mut acc1 = [_mm256_setzero_si256(); R];
    for &tap in walk.taps {
        // SAFETY: `walk.within(y.len())` checked that each run's pairs lie within `y`, and
        // row `r` of `x` has `pairs` values.
        unsafe {
            let mut y = base.add(tap * WIDTH);
            for _ in 0..walk.per_tap {
                let (y0, y1) = if WIDTH == 1 {
                    (
                        _mm256_cvtepi8_epi16(_mm_loadu_si128(y.cast())),
                        _mm256_cvtepi8_epi16(_mm_loadu_si128(y.add(half).cast())),
                    )
                } else {
                    (
                        _mm256_loadu_si256(y.cast()),
                        _mm256_loadu_si256(y.add(half).cast()),
                    )
                };
                for r in 0..R {
                    let b = _mm256_set1_epi32(*x.add(offsets[r]));
                    acc0[r] = _mm256_add_epi32(acc0[r], _mm256_madd_epi16(b, y0));
                    acc1[r] = _mm256_add_epi32(acc1[r], _mm256_madd_epi16(b, y1));
                }
                // Past a run's last pair this points beyond `y`, never read: a wrapping add,
                // which may leave the allocation.
                y = y.wrapping_add(stride);
                x = x.add(1);
            }
        }
    }
    for r in 0..R {
        // SAFETY: `r` is below the row count the sink was made for (`R`).
        unsafe { sink.put(r, acc0[r], acc1[r]) };
    }
}
