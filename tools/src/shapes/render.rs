//! Deterministic rasteriser: flat colours, no antialiasing.
//!
//! Every shape is a region of the unit box `[-1, 1]²` (x right, y down). An object of side `s`
//! at `(x0, y0)` maps the box onto pixels `x0..x0+s`, `y0..y0+s`; a pixel is painted when its
//! centre lies in the region. The evaluator's shape templates come from the same [`mask`], so
//! a ground-truth render matches its template pixel for pixel.

use std::sync::OnceLock;

use super::scene::{Object, Scene};
use super::spec::{Shape, CHANNELS, IMAGE_SIZE};

/// Inner radius of the star, relative to the outer: fat enough to read at 12 px.
const STAR_INNER: f32 = 0.45;

/// Half the arm width of the cross, in box units (arms are a third of the side).
const CROSS_ARM: f32 = 1.0 / 3.0;

/// The ten vertices of the five-pointed star (point up), stretched to fill the unit box.
fn star() -> &'static [(f32, f32); 10] {
    static STAR: OnceLock<[(f32, f32); 10]> = OnceLock::new();
    STAR.get_or_init(|| {
        let mut v = [(0.0, 0.0); 10];
        let x_extent = 18f32.to_radians().cos();
        let y_bottom = 36f32.to_radians().cos();
        for (k, p) in v.iter_mut().enumerate() {
            let angle = (-90.0 + 36.0 * k as f32).to_radians();
            let r = if k % 2 == 0 { 1.0 } else { STAR_INNER };
            let (x, y) = (r * angle.cos(), r * angle.sin());
            *p = (x / x_extent, (y + 1.0) / (1.0 + y_bottom) * 2.0 - 1.0);
        }
        v
    })
}

/// Even-odd point-in-polygon test.
fn in_polygon(vertices: &[(f32, f32)], u: f32, v: f32) -> bool {
    let mut inside = false;
    let mut j = vertices.len().wrapping_sub(1);
    for (i, &(xi, yi)) in vertices.iter().enumerate() {
        if let Some(&(xj, yj)) = vertices.get(j) {
            if (yi > v) != (yj > v) && u < (xj - xi) * (v - yi) / (yj - yi) + xi {
                inside = !inside;
            }
        }
        j = i;
    }
    inside
}

/// Whether the unit-box point `(u, v)` lies in `shape`.
pub fn inside(shape: Shape, u: f32, v: f32) -> bool {
    let (au, av) = (u.abs(), v.abs());
    if au > 1.0 || av > 1.0 {
        return false;
    }
    match shape {
        Shape::Circle => u * u + v * v <= 1.0,
        Shape::Square => true,
        Shape::Diamond => au + av <= 1.0,
        // Point up, base along the bottom edge.
        Shape::Triangle => au <= (v + 1.0) / 2.0,
        // Regular, flat top and bottom, corners at (±1, 0).
        Shape::Hexagon => {
            let h = 3f32.sqrt() / 2.0;
            av <= h && au <= 1.0 - av / 3f32.sqrt()
        }
        Shape::Cross => au <= CROSS_ARM || av <= CROSS_ARM,
        Shape::Star => in_polygon(star(), u, v),
        // Two lobes (circles of radius ½ at (±½, −½)) over a triangle pointing down.
        Shape::Heart => {
            let lobe = |cx: f32| (u - cx).powi(2) + (v + 0.5).powi(2) <= 0.25;
            lobe(-0.5) || lobe(0.5) || (v >= -0.5 && au <= (1.0 - v) / 1.5)
        }
    }
}

/// The `side × side` pixel mask of `shape` (row-major), pixel centres sampled.
pub fn mask(shape: Shape, side: u32) -> Vec<bool> {
    let s = side.max(1) as f32;
    let coord = |i: u32| (i as f32 + 0.5) / s * 2.0 - 1.0;
    (0..side)
        .flat_map(|y| (0..side).map(move |x| (x, y)))
        .map(|(x, y)| inside(shape, coord(x), coord(y)))
        .collect()
}

/// Paints `object` into a row-major RGB8 `width × width` buffer; pixels off the canvas are
/// skipped.
pub fn paint(object: &Object, data: &mut [u8], width: u32) {
    let rgb = object.colour.rgb();
    let m = mask(object.shape, object.side);
    for (i, _) in m.iter().enumerate().filter(|(_, &on)| on) {
        let x = object.x0 + (i as u32 % object.side) as i32;
        let y = object.y0 + (i as u32 / object.side) as i32;
        if x < 0 || y < 0 || x >= width as i32 || y >= width as i32 {
            continue;
        }
        let at = (y as usize * width as usize + x as usize) * CHANNELS as usize;
        if let Some(px) = data.get_mut(at..at + 3) {
            px.copy_from_slice(&rgb);
        }
    }
}

/// Renders `scene` to `IMAGE_SIZE × IMAGE_SIZE` row-major RGB8 bytes (height, width, channel).
pub fn render(scene: &Scene) -> Vec<u8> {
    let n = (IMAGE_SIZE * IMAGE_SIZE) as usize;
    let bg = scene.background_rgb();
    let mut data: Vec<u8> = bg.iter().copied().cycle().take(n * 3).collect();
    for object in &scene.objects {
        paint(object, &mut data, IMAGE_SIZE);
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_fill_their_box_and_differ() {
        for shape in Shape::ALL {
            let m = mask(shape, 22);
            let on = m.iter().filter(|&&b| b).count();
            assert!(on > 22 * 22 / 4, "{shape:?}: {on}");
            // Every shape touches the left and right columns or nearly (box-filling geometry).
            let cols: Vec<u32> = (0..22u32)
                .filter(|x| (0..22u32).any(|y| m[(y * 22 + x) as usize]))
                .collect();
            assert!(cols.len() >= 20, "{shape:?}: {cols:?}");
        }
        for (i, a) in Shape::ALL.iter().enumerate() {
            for b in &Shape::ALL[i + 1..] {
                let diff = mask(*a, 12)
                    .iter()
                    .zip(mask(*b, 12))
                    .filter(|(x, y)| **x != *y)
                    .count();
                assert!(diff >= 8, "{a:?} vs {b:?}: {diff}");
            }
        }
    }
}
