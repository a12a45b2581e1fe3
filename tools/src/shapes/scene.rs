//! Scenes: what a dataset sample shows (objects with shape, colour, size and place; a relation
//! or a position when the caption names one), drawn deterministically from a seed, a split and
//! the sample's index.
//!
//! Sample `i` has its own ChaCha8 stream (`set_stream(i)`), so it does not depend on how many
//! samples come before it: the first K samples of a 100-sample file equal those of a 20k file.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::caption;
use super::spec::{
    is_held_out, Colour, Position, Relation, Shape, Size, BACKGROUNDS, HELD_OUT, IMAGE_SIZE,
    OBJECT_GAP,
};

/// Which colour–shape pairs a file may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// No object has a held-out pair ([`super::spec::HELD_OUT`]).
    Train,
    /// At least one object has a held-out pair.
    #[serde(rename = "heldout")]
    HeldOut,
    /// Any pair; each sample's label says which split it belongs to.
    All,
}

impl Split {
    /// The name on the command line and in labels.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::HeldOut => "heldout",
            Split::All => "all",
        }
    }

    /// A distinct byte per split, mixed into the RNG seed.
    fn code(self) -> u8 {
        match self {
            Split::Train => 1,
            Split::HeldOut => 2,
            Split::All => 3,
        }
    }
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "heldout" | "held-out" | "held_out" => Ok(Split::HeldOut),
            "all" => Ok(Split::All),
            other => Err(format!(
                "unknown split `{other}` (expected train, heldout or all)"
            )),
        }
    }
}

/// The kind of scene, which decides its caption form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SceneKind {
    /// One object, sometimes at a named position.
    Single,
    /// Two different objects joined by "and" / "with" / "next to".
    Pair,
    /// Two different objects and a relation between them ("A above B").
    Relation,
    /// Two to four identical objects ("three green squares").
    Count,
    /// Three or four different objects in a list.
    Multi,
}

/// One object on the canvas: its square bounding box is `side` pixels from `(x0, y0)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Object {
    pub shape: Shape,
    pub colour: Colour,
    pub size: Size,
    pub side: u32,
    pub x0: i32,
    pub y0: i32,
}

impl Object {
    /// Centre of the bounding box, in pixels (x right, y down).
    pub fn center(&self) -> (f32, f32) {
        let half = self.side as f32 / 2.0;
        (self.x0 as f32 + half, self.y0 as f32 + half)
    }

    /// The canvas region of the centre, if any.
    pub fn position(&self) -> Option<Position> {
        let (x, y) = self.center();
        Position::of(x, y, IMAGE_SIZE as f32)
    }

    /// Whether the two boxes are closer than [`OBJECT_GAP`] on both axes.
    pub fn too_close(&self, other: &Object) -> bool {
        let gap =
            |a0: i32, a: u32, b0: i32, b: u32| a0.max(b0) - (a0 + a as i32).min(b0 + b as i32);
        gap(self.x0, self.side, other.x0, other.side) < OBJECT_GAP
            && gap(self.y0, self.side, other.y0, other.side) < OBJECT_GAP
    }
}

/// A scene and what its caption mentions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scene {
    pub kind: SceneKind,
    pub objects: Vec<Object>,
    /// `objects[0] relation objects[1]`, for [`SceneKind::Relation`].
    pub relation: Option<Relation>,
    /// The named position of `objects[0]`, for some [`SceneKind::Single`] scenes.
    pub position: Option<Position>,
    /// Whether the caption names object sizes.
    pub mention_size: bool,
    /// Index into [`BACKGROUNDS`].
    pub background: usize,
}

impl Scene {
    /// Whether any object has a held-out colour–shape pair.
    pub fn is_held_out(&self) -> bool {
        self.objects.iter().any(|o| is_held_out(o.colour, o.shape))
    }

    /// The split this scene belongs to (never [`Split::All`]).
    pub fn split(&self) -> Split {
        if self.is_held_out() {
            Split::HeldOut
        } else {
            Split::Train
        }
    }

    /// Background RGB.
    pub fn background_rgb(&self) -> [u8; 3] {
        BACKGROUNDS.get(self.background).map_or([0, 0, 0], |b| b.1)
    }
}

/// A dataset sample: its scene and caption words.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub index: u64,
    pub scene: Scene,
    pub words: Vec<&'static str>,
}

/// The RNG of sample `index` of `split` under `seed`.
pub fn sample_rng(seed: u64, split: Split, index: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8] = split.code();
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(index);
    rng
}

/// Sample `index` of `split` under `seed`: a scene and its caption.
pub fn sample(seed: u64, split: Split, index: u64) -> Sample {
    let mut rng = sample_rng(seed, split, index);
    let scene = draw_scene(&mut rng, split);
    let words = caption::caption(&scene, &mut rng);
    Sample {
        index,
        scene,
        words,
    }
}

/// Which pairs an attribute draw may return.
#[derive(Clone, Copy)]
enum Allowed {
    Train,
    HeldOut,
    Any,
}

/// `all[rng.gen_range(0..all.len())]`: the draw the datasets were made with, kept so that a
/// seed keeps giving the same data (`SliceRandom::choose` draws a `u32` index instead).
#[allow(clippy::indexing_slicing)] // `gen_range(0..len)` is below `len`; callers pass non-empty tables
fn pick<T: Copy>(rng: &mut ChaCha8Rng, all: &[T]) -> T {
    all[rng.gen_range(0..all.len())]
}

fn draw_pair(rng: &mut ChaCha8Rng, allowed: Allowed) -> (Colour, Shape) {
    match allowed {
        Allowed::Any => {
            let colour = pick(rng, &Colour::ALL);
            (colour, pick(rng, &Shape::ALL))
        }
        Allowed::HeldOut => pick(rng, &HELD_OUT),
        Allowed::Train => {
            let colour = pick(rng, &Colour::ALL);
            let shapes: Vec<Shape> = Shape::ALL
                .into_iter()
                .filter(|&s| !is_held_out(colour, s))
                .collect();
            (colour, pick(rng, &shapes))
        }
    }
}

/// `n` colour–shape pairs, distinct when `distinct`, following the split's rule.
fn draw_pairs(
    rng: &mut ChaCha8Rng,
    split: Split,
    n: usize,
    distinct: bool,
) -> Vec<(Colour, Shape)> {
    let forced = rng.gen_range(0..n);
    let mut pairs: Vec<(Colour, Shape)> = Vec::with_capacity(n);
    for i in 0..n {
        let allowed = match split {
            Split::Train => Allowed::Train,
            Split::HeldOut if i == forced => Allowed::HeldOut,
            Split::HeldOut | Split::All => Allowed::Any,
        };
        // 56 train pairs and 8 held-out ones: a handful of tries always finds a new pair.
        let mut pair = draw_pair(rng, allowed);
        for _ in 0..64 {
            if !distinct || !pairs.contains(&pair) {
                break;
            }
            pair = draw_pair(rng, allowed);
        }
        pairs.push(pair);
    }
    pairs
}

fn draw_side(rng: &mut ChaCha8Rng, size: Size) -> u32 {
    let (lo, hi) = size.sides();
    rng.gen_range(lo..=hi)
}

/// A random box origin fully inside the canvas with a 1 px margin.
fn random_origin(rng: &mut ChaCha8Rng, side: u32) -> (i32, i32) {
    let max = (IMAGE_SIZE - 1).saturating_sub(side).max(1) as i32;
    (rng.gen_range(1..=max), rng.gen_range(1..=max))
}

/// An origin whose box centre lies in `position`'s sampling box.
fn origin_at(rng: &mut ChaCha8Rng, side: u32, position: Position) -> (i32, i32) {
    let (bx0, bx1, by0, by1) = position.sampling_box();
    let n = IMAGE_SIZE as f32;
    let half = side as f32 / 2.0;
    let max = (IMAGE_SIZE - 1).saturating_sub(side).max(1) as i32;
    let mut range = |a: f32, b: f32| {
        let lo = ((a * n - half).ceil() as i32).clamp(1, max);
        let hi = ((b * n - half).floor() as i32).clamp(lo, max);
        rng.gen_range(lo..=hi)
    };
    let x = range(bx0, bx1);
    (x, range(by0, by1))
}

/// Places `objects` (sides set) without overlap, so that `accept` holds, by rejection; falls
/// back to a 2×2 grid in `fallback_cells` order (always valid for ≤ 4 objects of ≤ 23 px).
fn place(
    rng: &mut ChaCha8Rng,
    objects: &mut [Object],
    accept: impl Fn(&[Object]) -> bool,
    fallback_cells: [usize; 4],
) {
    for _ in 0..64 {
        let mut ok = true;
        for i in 0..objects.len() {
            let Some((before, [object, ..])) = objects.split_at_mut_checked(i) else {
                break;
            };
            let mut placed = false;
            for _ in 0..64 {
                (object.x0, object.y0) = random_origin(rng, object.side);
                if before.iter().all(|o| !o.too_close(object)) {
                    placed = true;
                    break;
                }
            }
            if !placed {
                ok = false;
                break;
            }
        }
        if ok && accept(objects) {
            return;
        }
    }
    let cell = IMAGE_SIZE as i32 / 2;
    for (object, &c) in objects.iter_mut().zip(&fallback_cells) {
        let offset = (cell - object.side as i32) / 2;
        object.x0 = (c % 2) as i32 * cell + offset;
        object.y0 = (c / 2) as i32 * cell + offset;
    }
}

/// Draws a scene of `split`.
pub fn draw_scene(rng: &mut ChaCha8Rng, split: Split) -> Scene {
    const KINDS: [(SceneKind, u32); 5] = [
        (SceneKind::Single, 30),
        (SceneKind::Relation, 25),
        (SceneKind::Pair, 15),
        (SceneKind::Count, 20),
        (SceneKind::Multi, 10),
    ];
    let kind = KINDS
        .choose_weighted(rng, |k| k.1)
        .map_or(SceneKind::Single, |k| k.0);
    let n = match kind {
        SceneKind::Single => 1,
        SceneKind::Pair | SceneKind::Relation => 2,
        SceneKind::Count => rng.gen_range(2..=4),
        SceneKind::Multi => rng.gen_range(3..=4),
    };
    let pairs = if kind == SceneKind::Count {
        // One pair, repeated.
        let pair = draw_pairs(rng, split, 1, false);
        pair.into_iter().cycle().take(n).collect()
    } else {
        draw_pairs(rng, split, n, true)
    };
    let shared_size = pick(rng, &Size::ALL);
    let mut objects: Vec<Object> = pairs
        .iter()
        .map(|&(colour, shape)| {
            let size = if kind == SceneKind::Count {
                shared_size
            } else {
                pick(rng, &Size::ALL)
            };
            Object {
                shape,
                colour,
                size,
                side: draw_side(rng, size),
                x0: 0,
                y0: 0,
            }
        })
        .collect();
    let mention_size = rng.gen_bool(0.5);
    let background = rng.gen_range(0..BACKGROUNDS.len());
    let mut relation = None;
    let mut position = None;
    match kind {
        SceneKind::Single => {
            if rng.gen_bool(0.6) {
                let p = pick(rng, &Position::ALL);
                if let Some(o) = objects.first_mut() {
                    (o.x0, o.y0) = origin_at(rng, o.side, p);
                }
                position = Some(p);
            } else {
                place(rng, &mut objects, |_| true, [0, 1, 2, 3]);
            }
        }
        SceneKind::Relation => {
            let r = pick(rng, &Relation::ALL);
            let min_along = 0.15 * IMAGE_SIZE as f32;
            let holds = |o: &[Object]| match o {
                [a, b] => r.holds_clearly(a.center(), b.center(), min_along),
                _ => false,
            };
            // Grid cells 0 1 / 2 3: A's cell first, then B's.
            let cells = match r {
                Relation::LeftOf => [0, 1, 2, 3],
                Relation::RightOf => [1, 0, 2, 3],
                Relation::Above => [0, 2, 1, 3],
                Relation::Below => [2, 0, 1, 3],
            };
            place(rng, &mut objects, holds, cells);
            relation = Some(r);
        }
        SceneKind::Pair | SceneKind::Count | SceneKind::Multi => {
            place(rng, &mut objects, |_| true, [0, 3, 1, 2]);
        }
    }
    Scene {
        kind,
        objects,
        relation,
        position,
        mention_size,
        background,
    }
}
