//! The deterministic image checker: finds the objects of a shapes image.
//!
//! 1. **Palette segmentation**: every pixel takes the nearest colour among the object palette
//!    and the backgrounds (Euclidean RGB); pixels farther than [`COLOUR_TOLERANCE`] from all of
//!    them are unknown, background pixels are dropped.
//! 2. **Connected components** (8-connected) of each object colour; components smaller than
//!    [`MIN_AREA`] pixels or [`MIN_SIDE`] pixels across, or nearly without interior pixels
//!    ([`MIN_INTERIOR`]: blurred-edge halos), are noise.
//! 3. **Shape by template matching**: each component is compared with the renderer's own mask
//!    of every shape ([`crate::shapes::render::mask`]) at box sides `s..s+2` (`s` = the
//!    component's larger bounding-box side) and origins within ±1 px of the box centre; the
//!    shape with the best intersection-over-union wins, if that IoU reaches [`MIN_IOU`].
//!    The best side gives the size class. Descriptors (fill ratio of the box, aspect) are
//!    reported alongside for inspection.
//! 4. Centres are bounding-box centres, so positions and relations are measured the way the
//!    generator placed the objects.

use std::collections::HashMap;

use serde::Serialize;
use transfusion_sdk::RgbImage;

use crate::error::Result;
use crate::shapes::render::mask;
use crate::shapes::spec::{Colour, Shape, Size, BACKGROUNDS, IMAGE_SIZE};

/// Largest RGB distance from a palette colour for a pixel to take that colour (half the
/// smallest palette distance would make it unique; nearest-colour already is, so this only
/// rejects pixels far from everything, e.g. blended edges of a resized image).
pub const COLOUR_TOLERANCE: f32 = 60.0;

/// Smallest component, in pixels, counted as an object (a small star has ≈ 50).
pub const MIN_AREA: usize = 12;

/// Smallest bounding-box side, in pixels, of a component counted as an object: the smallest
/// objects are 11 px, and noise specks of a few pixels would otherwise match a template.
pub const MIN_SIDE: usize = 8;

/// Smallest fraction of interior pixels for a component to count as an object.
pub const MIN_INTERIOR: f32 = 0.1;

/// Smallest template IoU for a component to get a shape: exact renders reach 1.0, blurred ones
/// ≈ 0.85–0.95, while convex colour blotches (an untrained decoder's output) mostly stay below.
pub const MIN_IOU: f32 = 0.8;

/// Template sides held by the checker.
const SIDES: std::ops::RangeInclusive<u32> = 4..=48;

/// Label of a background pixel.
const BACKGROUND: u8 = 254;
/// Label of a pixel far from every palette colour.
const UNKNOWN: u8 = 255;

/// One object found in an image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    pub colour: Colour,
    /// `None` when no template fits (IoU below [`MIN_IOU`]).
    pub shape: Option<Shape>,
    pub size: Size,
    /// Box side of the best template.
    pub side: u32,
    /// `[x, y, width, height]` of the component's pixels.
    pub bbox: [u32; 4],
    /// Bounding-box centre, pixels.
    pub center: [f32; 2],
    pub area: usize,
    /// Area over bounding-box area.
    pub fill: f32,
    /// Width over height of the bounding box.
    pub aspect: f32,
    /// IoU of the best template.
    pub iou: f32,
}

impl Detection {
    /// The centre as a tuple.
    pub fn center(&self) -> (f32, f32) {
        (self.center[0], self.center[1])
    }
}

/// The checker with its template masks.
#[derive(Debug, Clone)]
pub struct Checker {
    templates: HashMap<(Shape, u32), (Vec<bool>, usize)>,
}

impl Default for Checker {
    fn default() -> Self {
        Self::new()
    }
}

fn distance2(a: [u8; 3], b: [u8; 3]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(&x, y)| (f32::from(x) - f32::from(y)).powi(2))
        .sum()
}

/// The palette label of one pixel: the nearest palette or background colour within
/// [`COLOUR_TOLERANCE`]; otherwise, for a blend of an object colour and a background (the
/// blurred edge of an object), the object colour when it covers at least half the pixel and
/// background when it covers less; otherwise unknown.
fn classify_pixel(rgb: [u8; 3]) -> u8 {
    let mut best = (UNKNOWN, f32::INFINITY);
    for (i, c) in Colour::ALL.iter().enumerate() {
        let d = distance2(rgb, c.rgb());
        if d < best.1 {
            best = (i as u8, d);
        }
    }
    for (_, bg) in BACKGROUNDS {
        let d = distance2(rgb, bg);
        if d < best.1 {
            best = (BACKGROUND, d);
        }
    }
    let tolerance2 = COLOUR_TOLERANCE * COLOUR_TOLERANCE;
    if best.1 <= tolerance2 {
        return best.0;
    }
    let mut blend = (UNKNOWN, tolerance2);
    let p = rgb.map(f32::from);
    for (i, c) in Colour::ALL.iter().enumerate() {
        for (_, bg) in BACKGROUNDS {
            let (b, c) = (bg.map(f32::from), c.rgb().map(f32::from));
            let dir = [c[0] - b[0], c[1] - b[1], c[2] - b[2]];
            let rel = [p[0] - b[0], p[1] - b[1], p[2] - b[2]];
            let norm2: f32 = dir.iter().map(|d| d * d).sum();
            let alpha = dir.iter().zip(rel).map(|(d, r)| d * r).sum::<f32>() / norm2.max(1.0);
            let alpha = alpha.clamp(0.0, 1.0);
            let residual: f32 = rel
                .iter()
                .zip(dir)
                .map(|(r, d)| (r - alpha * d).powi(2))
                .sum();
            if residual < blend.1 {
                blend = (if alpha >= 0.5 { i as u8 } else { BACKGROUND }, residual);
            }
        }
    }
    blend.0
}

/// Fraction of a component's pixels whose four neighbours all share its label: 0 for the
/// one-pixel halo a blurred white object leaves (its blend with black is gray), well above
/// [`MIN_INTERIOR`] for every real object.
fn interior_fraction(c: &Component, labels: &[u8], side: usize) -> f32 {
    let interior = c
        .pixels
        .iter()
        .filter(|&&p| {
            let (x, y) = (p % side, p / side);
            x > 0
                && y > 0
                && x + 1 < side
                && y + 1 < side
                && [p - 1, p + 1, p - side, p + side]
                    .iter()
                    .all(|&q| labels.get(q) == Some(&c.label))
        })
        .count();
    interior as f32 / c.pixels.len().max(1) as f32
}

/// A component: its pixel indices and bounding box.
struct Component {
    label: u8,
    pixels: Vec<usize>,
    min: (usize, usize),
    max: (usize, usize),
}

/// 8-connected components of equal object labels in a `side × side` label map; `ids` gets
/// each pixel's component index (`usize::MAX` for none).
fn components(labels: &[u8], side: usize, ids: &mut [usize]) -> Vec<Component> {
    let mut out: Vec<Component> = Vec::new();
    let mut stack = Vec::new();
    for start in 0..labels.len() {
        let label = labels.get(start).copied().unwrap_or(UNKNOWN);
        if label >= BACKGROUND || ids.get(start).copied() != Some(usize::MAX) {
            continue;
        }
        let id = out.len();
        let mut c = Component {
            label,
            pixels: Vec::new(),
            min: (usize::MAX, usize::MAX),
            max: (0, 0),
        };
        if let Some(slot) = ids.get_mut(start) {
            *slot = id;
        }
        stack.push(start);
        while let Some(p) = stack.pop() {
            let (x, y) = (p % side, p / side);
            c.pixels.push(p);
            c.min = (c.min.0.min(x), c.min.1.min(y));
            c.max = (c.max.0.max(x), c.max.1.max(y));
            for (dx, dy) in [
                (-1, -1),
                (0, -1),
                (1, -1),
                (-1, 0),
                (1, 0),
                (-1, 1),
                (0, 1),
                (1, 1),
            ] {
                let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                if nx < 0 || ny < 0 || nx >= side as i64 || ny >= side as i64 {
                    continue;
                }
                let q = ny as usize * side + nx as usize;
                if labels.get(q) == Some(&label) && ids.get(q) == Some(&usize::MAX) {
                    if let Some(slot) = ids.get_mut(q) {
                        *slot = id;
                    }
                    stack.push(q);
                }
            }
        }
        out.push(c);
    }
    out
}

impl Checker {
    /// Builds the template masks of every shape at every side in 4..=48 px.
    pub fn new() -> Self {
        let mut templates = HashMap::new();
        for shape in Shape::ALL {
            for side in SIDES {
                let m = mask(shape, side);
                let area = m.iter().filter(|&&b| b).count();
                templates.insert((shape, side), (m, area));
            }
        }
        Checker { templates }
    }

    /// The objects of `image`, largest first. An image that is not 64×64 is resized to it
    /// first (sizes and positions are defined on the 64-pixel canvas).
    pub fn detect(&self, image: &RgbImage) -> Result<Vec<Detection>> {
        let resized;
        let image = if image.width() != IMAGE_SIZE || image.height() != IMAGE_SIZE {
            resized = image.resize(IMAGE_SIZE, IMAGE_SIZE)?;
            &resized
        } else {
            image
        };
        let side = IMAGE_SIZE as usize;
        let labels: Vec<u8> = image
            .data()
            .chunks_exact(3)
            .map(|p| match p {
                &[r, g, b] => classify_pixel([r, g, b]),
                _ => UNKNOWN,
            })
            .collect();
        let mut ids = vec![usize::MAX; labels.len()];
        let comps = components(&labels, side, &mut ids);
        let mut out = Vec::new();
        for (id, c) in comps.iter().enumerate() {
            let extent = (c.max.0 + 1 - c.min.0).max(c.max.1 + 1 - c.min.1);
            if c.pixels.len() < MIN_AREA
                || extent < MIN_SIDE
                || interior_fraction(c, &labels, side) < MIN_INTERIOR
            {
                continue;
            }
            let Some(&colour) = Colour::ALL.get(c.label as usize) else {
                continue;
            };
            out.push(self.describe(c, id, colour, &ids, side));
        }
        out.sort_by_key(|d| std::cmp::Reverse(d.area));
        Ok(out)
    }

    /// Shape, size and descriptors of component `id`.
    fn describe(
        &self,
        c: &Component,
        id: usize,
        colour: Colour,
        ids: &[usize],
        side: usize,
    ) -> Detection {
        let w = c.max.0 + 1 - c.min.0;
        let h = c.max.1 + 1 - c.min.1;
        let area = c.pixels.len();
        let cx = (c.min.0 + c.max.0 + 1) as f32 / 2.0;
        let cy = (c.min.1 + c.max.1 + 1) as f32 / 2.0;
        let base = w.max(h) as u32;
        let mut best: (Option<Shape>, u32, f32) = (None, base, 0.0);
        for s in base..=base + 2 {
            for shape in Shape::ALL {
                let Some((m, t_area)) = self.templates.get(&(shape, s)) else {
                    continue;
                };
                let half = s as f32 / 2.0;
                let (bx, by) = ((cx - half).round() as i64, (cy - half).round() as i64);
                for oy in -1..=1 {
                    for ox in -1..=1 {
                        let inter = overlap(m, s, bx + ox, by + oy, ids, id, side);
                        let union = area + t_area - inter;
                        let iou = inter as f32 / union.max(1) as f32;
                        if iou > best.2 {
                            best = (Some(shape), s, iou);
                        }
                    }
                }
            }
        }
        let (shape, best_side, iou) = best;
        Detection {
            colour,
            shape: shape.filter(|_| iou >= MIN_IOU),
            size: Size::of_side(best_side),
            side: best_side,
            bbox: [c.min.0 as u32, c.min.1 as u32, w as u32, h as u32],
            center: [cx, cy],
            area,
            fill: area as f32 / (w * h) as f32,
            aspect: w as f32 / h as f32,
            iou,
        }
    }
}

/// Pixels of template `m` (side `s`, origin `(x0, y0)`) that belong to component `id`.
fn overlap(m: &[bool], s: u32, x0: i64, y0: i64, ids: &[usize], id: usize, side: usize) -> usize {
    let s = s as usize;
    let mut n = 0;
    for (i, _) in m.iter().enumerate().filter(|(_, &on)| on) {
        let (x, y) = (x0 + (i % s) as i64, y0 + (i / s) as i64);
        if x < 0 || y < 0 || x >= side as i64 || y >= side as i64 {
            continue;
        }
        if ids.get(y as usize * side + x as usize) == Some(&id) {
            n += 1;
        }
    }
    n
}
