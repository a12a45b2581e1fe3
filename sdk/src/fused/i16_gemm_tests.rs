//! The INT8 kernel against plain sums, the portable loop, split rows and the rescale.

use super::*;
use crate::fused::test_util::Rng;

/// Products of random `m × k` and `k × n` values within `±range`, against the plain sums; and
/// the AVX2 kernel against the portable one, tile by tile. Returns whether `y` was stored as
/// i8.
fn check(rng: &mut Rng, (m, k, n): (usize, usize, usize), range: usize) -> bool {
    let value = |rng: &mut Rng| (rng.below(2 * range + 1) as i32 - range as i32) as i16;
    let x: Vec<i16> = (0..m * k).map(|_| value(rng)).collect();
    let mut y: Vec<i16> = (0..k * n).map(|_| value(rng)).collect();
    // The extreme of the range once at least, so that it decides the storage.
    y[0] = range as i16;
    let (panels, rows) = (Panels::from_rows(&y, k, n), pair_rows(&x, k, |v| v));
    let mut got = vec![0i32; m * n];
    product(&panels, &rows, &mut got, &Sums);
    for i in 0..m {
        for j in 0..n {
            let want: i32 = (0..k)
                .map(|kk| i32::from(x[i * k + kk]) * i32::from(y[kk * n + j]))
                .sum();
            assert_eq!(got[i * n + j], want, "{m}x{k}x{n} [{i}][{j}]");
        }
    }
    let pairs = panels.pairs();
    for (block, panel) in panels.blocks().enumerate() {
        for (r0, chunk) in rows.chunks(ROWS * pairs).enumerate() {
            let count = chunk.len() / pairs;
            let (mut a, mut b) = ([[0; COLUMNS]; ROWS], [[0; COLUMNS]; ROWS]);
            kernel(chunk, packed(pairs), panel, &mut a[..count]);
            match panel {
                Panel::Wide(y) => portable(chunk, packed(pairs), y, &mut b[..count]),
                Panel::Narrow(y) => portable(chunk, packed(pairs), y, &mut b[..count]),
            }
            assert_eq!(a, b, "block {block} rows {r0}");
        }
    }
    panels.is_narrow()
}

#[test]
fn the_kernel_and_the_portable_sums_equal_the_plain_products() {
    let mut rng = Rng(9);
    for size in [
        (4usize, 37usize, 16usize),
        (7, 2, 33),
        (1, 1, 1),
        (9, 64, 5),
        (13, 40, 20),
    ] {
        // Differences of 8-bit values (up to ±255): i16 panels.
        assert!(!check(&mut rng, size, 255), "{size:?}");
        // Weights that fit in i8 (symmetric int8, or u8 around 128): i8 panels.
        assert!(check(&mut rng, size, 127), "{size:?}");
    }
}

#[test]
fn rescaled_products_are_the_sums_times_their_scales() {
    let mut rng = Rng(33);
    for (m, k, n) in [
        (1usize, 40usize, 16usize),
        (7, 9, 33),
        (13, 64, 5),
        (6, 2, 48),
    ] {
        let x: Vec<i16> = (0..m * k).map(|_| rng.below(511) as i16 - 255).collect();
        let y: Vec<i16> = (0..k * n).map(|_| rng.below(255) as i16 - 127).collect();
        let (panels, rows) = (Panels::from_rows(&y, k, n), pair_rows(&x, k, |v| v));
        let mut sums = vec![0i32; m * n];
        product(&panels, &rows, &mut sums, &Sums);
        let per_column: Vec<f32> = (0..n).map(|_| rng.unit() * 0.01).collect();
        for scales in [per_column.as_slice(), &[0.003_f32][..]] {
            let mut got = vec![0f32; m * n];
            product(&panels, &rows, &mut got, &Rescaled(scales));
            for (i, (&g, &s)) in got.iter().zip(&sums).enumerate() {
                let scale = if scales.len() == 1 {
                    scales[0]
                } else {
                    scales[i % n]
                };
                assert_eq!(
                    g.to_bits(),
                    (s as f32 * scale).to_bits(),
                    "{m}x{k}x{n} [{i}]"
                );
            }
        }
    }
}

#[test]
fn rows_split_between_threads_give_the_same_products() {
    use tract_linalg::multithread::{multithread_tract_scope, Executor};
    let mut rng = Rng(21);
    for m in [8usize, 9, 34] {
        let (k, n) = (64, 40);
        let x: Vec<i16> = (0..m * k).map(|_| rng.below(511) as i16 - 255).collect();
        let y: Vec<i16> = (0..k * n).map(|_| rng.below(511) as i16 - 255).collect();
        let (panels, rows) = (Panels::from_rows(&y, k, n), pair_rows(&x, k, |v| v));
        let mut one = vec![0i32; m * n];
        product(&panels, &rows, &mut one, &Sums);
        let mut three = vec![0i32; m * n];
        multithread_tract_scope(Executor::multithread(3), || {
            product(&panels, &rows, &mut three, &Sums)
        });
        assert_eq!(one, three, "{m} rows");
    }
}

/// `image_columns` against the sums written out from the walk's definition, for walks of
/// several taps, a plane-sized stride and a second half one row on, every row count of a tile
/// and narrower stores; and `Walk::within` at the exact fit and one value short.
#[test]
fn walks_over_an_image_read_what_they_say() {
    let mut rng = Rng(0x77);
    let taps = [0usize, 6, 40, 46];
    for (per_tap, stride, half) in [(3usize, 80usize, 16usize), (2, 96, 44), (1, 0, 16)] {
        let walk = Walk {
            taps: &taps,
            per_tap,
            stride,
            half,
        };
        let len = 46 + (per_tap - 1) * stride + half.max(COLUMNS) + COLUMNS;
        assert!(walk.within(len) && !walk.within(len - 1), "{walk:?}");
        let image: Vec<i16> = (0..len).map(|_| rng.below(511) as i16 - 255).collect();
        let pairs = walk.pairs();
        for m in 1..=7 {
            let x: Vec<i32> = (0..m * pairs)
                .map(|_| {
                    let (lo, hi) = (rng.below(511) as i32 - 255, rng.below(511) as i32 - 255);
                    (lo & 0xffff) | (hi << 16)
                })
                .collect();
            for width in [COLUMNS, 9] {
                let n = 21;
                let mut got = vec![-1i32; m * n];
                image_columns(&x, walk, &image, &mut got, (3, width, n));
                let starts: Vec<usize> = taps
                    .iter()
                    .flat_map(|&t| (0..per_tap).map(move |p| t + p * stride))
                    .collect();
                for r in 0..m {
                    for j in 0..n {
                        let want = if (3..3 + width).contains(&j) {
                            let col = j - 3;
                            let at = |s: usize| {
                                if col < 8 {
                                    s + 2 * col
                                } else {
                                    s + half + 2 * (col - 8)
                                }
                            };
                            (0..pairs)
                                .map(|q| {
                                    let v = x[r * pairs + q];
                                    let (lo, hi) = (i32::from(v as i16), v >> 16);
                                    let a = at(starts[q]);
                                    lo * i32::from(image[a]) + hi * i32::from(image[a + 1])
                                })
                                .sum()
                        } else {
                            -1
                        };
                        assert_eq!(
                            got[r * n + j],
                            want,
                            "{walk:?} m {m} width {width} [{r}][{j}]"
                        );
                    }
                }
            }
        }
    }
}
