//! Resampling: area averaging when shrinking, bilinear when growing, and nearest-neighbour
//! integer upscaling for crisp previews.
//!
//! Resizing is separable: each axis gets a list of taps (source index, weight) per output
//! sample, the rows are filtered horizontally into a float buffer and then vertically. Weights
//! of every output sample sum to 1, so a constant image stays constant.

use super::{image_error, reserve, rgb_len, RgbImage};
use crate::error::Result;

/// The source samples that make one output sample along one axis: `(index, weight)` pairs.
type Taps = Vec<(usize, f32)>;

/// Taps for resampling `src` samples to `dst` along one axis (both ≥ 1).
fn axis_taps(src: usize, dst: usize) -> Vec<Taps> {
    if dst == src {
        (0..dst).map(|i| vec![(i, 1.0)]).collect()
    } else if dst < src {
        area_taps(src, dst)
    } else {
        bilinear_taps(src, dst)
    }
}

/// Box filter: output sample `i` averages the source interval `[i·s, (i+1)·s)`, `s = src/dst`,
/// weighting partially covered samples by their overlap, so no source pixel is skipped (no
/// aliasing of fine detail, unlike point sampling).
fn area_taps(src: usize, dst: usize) -> Vec<Taps> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|i| {
            let start = i as f64 * scale;
            let end = (i + 1) as f64 * scale;
            let first = start.floor() as usize;
            let last = (end.ceil() as usize).min(src);
            (first..last)
                .filter_map(|s| {
                    let overlap = end.min((s + 1) as f64) - start.max(s as f64);
                    (overlap > 1e-9).then_some((s, (overlap / scale) as f32))
                })
                .collect()
        })
        .collect()
}

/// Linear interpolation between the two nearest source samples, pixel centres aligned
/// (`x_src = (i + ½)·src/dst − ½`), edges clamped.
fn bilinear_taps(src: usize, dst: usize) -> Vec<Taps> {
    let scale = src as f64 / dst as f64;
    let last = src.saturating_sub(1);
    (0..dst)
        .map(|i| {
            let x = ((i as f64 + 0.5) * scale - 0.5).clamp(0.0, last as f64);
            let x0 = x.floor() as usize;
            let x1 = (x0 + 1).min(last);
            let t = (x - x0 as f64) as f32;
            if x1 == x0 || t <= 0.0 {
                vec![(x0, 1.0)]
            } else {
                vec![(x0, 1.0 - t), (x1, t)]
            }
        })
        .collect()
}

/// `u32` → `usize` for sizes already known to be addressable (checked by `rgb_len`).
fn to_usize(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl RgbImage {
    /// Resamples to `width × height`, each axis independently: area averaging where it shrinks
    /// (every source pixel contributes, so downscaled photos don't alias), bilinear where it
    /// grows. Used when an input image doesn't have the size the VAE expects.
    ///
    /// Errors ([`Error::Image`](crate::Error::Image)) when a target side is 0 or the result
    /// can't be allocated.
    pub fn resize(&self, width: u32, height: u32) -> Result<Self> {
        const ORIGIN: &str = "RgbImage::resize";
        if (width, height) == (self.width, self.height) {
            return Ok(self.clone());
        }
        let out_len = rgb_len(width, height)
            .filter(|_| width > 0 && height > 0)
            .ok_or_else(|| image_error(ORIGIN, format!("cannot resize to {width}×{height}")))?;
        let (src_w, src_h) = (to_usize(self.width), to_usize(self.height));
        let (dst_w, dst_h) = (to_usize(width), to_usize(height));
        let x_taps = axis_taps(src_w, dst_w);
        let y_taps = axis_taps(src_h, dst_h);

        // Horizontal pass: src_h rows of dst_w float pixels.
        let mid_len = src_h
            .checked_mul(dst_w)
            .and_then(|n| n.checked_mul(3))
            .ok_or_else(|| image_error(ORIGIN, format!("cannot resize to {width}×{height}")))?;
        let mut mid: Vec<f32> = reserve(mid_len, ORIGIN)?;
        for row in self.data.chunks_exact(src_w * 3) {
            for taps in &x_taps {
                let mut acc = [0.0f32; 3];
                for &(s, weight) in taps {
                    if let Some(px) = row.get(s * 3..s * 3 + 3) {
                        for (a, &v) in acc.iter_mut().zip(px) {
                            *a += weight * f32::from(v);
                        }
                    }
                }
                mid.extend_from_slice(&acc);
            }
        }

        // Vertical pass, rounded back to bytes.
        let row_len = dst_w * 3;
        let mut out: Vec<u8> = reserve(out_len, ORIGIN)?;
        let mut acc = vec![0.0f32; row_len];
        for taps in &y_taps {
            acc.fill(0.0);
            for &(s, weight) in taps {
                if let Some(row) = mid.get(s * row_len..(s + 1) * row_len) {
                    for (a, &v) in acc.iter_mut().zip(row) {
                        *a += weight * v;
                    }
                }
            }
            // Clamped to [0, 255] first, so the cast is exact.
            out.extend(acc.iter().map(|&v| v.round().clamp(0.0, 255.0) as u8));
        }
        Self::new(width, height, out)
    }

    /// Enlarges by an integer `factor` repeating each pixel as a `factor × factor` block: keeps
    /// a 16×16 latent preview crisp on a display instead of blurring it.
    ///
    /// Errors ([`Error::Image`](crate::Error::Image)) when `factor` is 0 or the result would be
    /// too large to address or allocate.
    pub fn upscale_nearest(&self, factor: u32) -> Result<Self> {
        const ORIGIN: &str = "RgbImage::upscale_nearest";
        let too_large = || {
            image_error(
                ORIGIN,
                format!("{}×{} × {factor} is too large", self.width, self.height),
            )
        };
        if factor == 0 {
            return Err(image_error(ORIGIN, "factor must be at least 1"));
        }
        if factor == 1 {
            return Ok(self.clone());
        }
        let width = self.width.checked_mul(factor).ok_or_else(too_large)?;
        let height = self.height.checked_mul(factor).ok_or_else(too_large)?;
        let out_len = rgb_len(width, height).ok_or_else(too_large)?;
        let factor = to_usize(factor);
        let mut out: Vec<u8> = reserve(out_len, ORIGIN)?;
        let mut wide_row = Vec::with_capacity(to_usize(width) * 3);
        for row in self.data.chunks_exact(to_usize(self.width) * 3) {
            wide_row.clear();
            for px in row.chunks_exact(3) {
                for _ in 0..factor {
                    wide_row.extend_from_slice(px);
                }
            }
            for _ in 0..factor {
                out.extend_from_slice(&wide_row);
            }
        }
        Self::new(width, height, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_weights_sum_to_one(taps: &[Taps], src: usize) {
        for (i, t) in taps.iter().enumerate() {
            let sum: f32 = t.iter().map(|&(_, w)| w).sum();
            assert!((sum - 1.0).abs() < 1e-5, "output {i}: weights sum to {sum}");
            assert!(t.iter().all(|&(s, w)| s < src && w > 0.0), "{t:?}");
        }
    }

    #[test]
    fn taps_are_normalised_and_in_range() {
        for (src, dst) in [(7, 3), (512, 16), (3, 7), (1, 5), (5, 1), (16, 512), (4, 4)] {
            assert_weights_sum_to_one(&axis_taps(src, dst), src);
        }
    }

    #[test]
    fn halving_averages_pairs() {
        assert_eq!(
            area_taps(4, 2),
            vec![vec![(0, 0.5), (1, 0.5)], vec![(2, 0.5), (3, 0.5)]]
        );
    }

    #[test]
    fn doubling_interpolates_between_neighbours() {
        // Centres of 2 → 4: sources at -0.25 (clamped), 0.25, 0.75, 1.25 (clamped).
        assert_eq!(
            bilinear_taps(2, 4),
            vec![
                vec![(0, 1.0)],
                vec![(0, 0.75), (1, 0.25)],
                vec![(0, 0.25), (1, 0.75)],
                vec![(1, 1.0)]
            ]
        );
    }

    #[test]
    fn shrink_averages_a_gradient() {
        let image = RgbImage::new(
            4,
            1,
            vec![0, 0, 0, 100, 100, 100, 200, 200, 200, 255, 255, 255],
        )
        .unwrap();
        let small = image.resize(2, 1).unwrap();
        assert_eq!(small.data(), &[50, 50, 50, 228, 228, 228]);
    }

    #[test]
    fn zero_targets_are_errors() {
        let image = RgbImage::filled(2, 2, [1, 2, 3]).unwrap();
        assert!(image.resize(0, 2).is_err());
        assert!(image.upscale_nearest(0).is_err());
        assert!(image.upscale_nearest(u32::MAX).is_err());
    }
}
