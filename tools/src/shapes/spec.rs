//! The one specification of the synthetic shapes domain: palette, shapes, sizes, positions,
//! relations, counts, the caption vocabulary and the held-out split.
//!
//! The dataset generator ([`super::scene`], [`super::render`]) and the evaluator
//! ([`crate::eval`]) both read this module, so a prompt the evaluator asks for and a scene the
//! trainer saw are described by the same words, colours and geometry. Every word used here is in
//! [`crate::vocab::WORDS`] (checked by a test), so captions never hit the unknown token.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Side of every dataset image, in pixels (the `shapes64` preset's `image.size`).
pub const IMAGE_SIZE: u32 = 64;

/// Colour channels of a dataset image (RGB).
pub const CHANNELS: u32 = 3;

/// Most objects in one scene.
pub const MAX_OBJECTS: usize = 4;

/// Fixed length of the padded token-id rows in `shapes.bin`; every caption the grammar can
/// produce is shorter (checked by a test), so files of any count share one layout.
pub const MAX_CAPTION_TOKENS: usize = 32;

/// Smallest gap in pixels between the bounding boxes of two objects: with 2 px no two objects
/// touch, even diagonally, so each one is its own connected component.
pub const OBJECT_GAP: i32 = 2;

/// Preset whose tokenizer maps caption words to ids (the same ids as its `tokenizer.json`).
pub const VOCAB_PRESET: &str = "shapes64";

/// Words of the counts 1–4, indexed by `count - 1`.
pub const COUNT_WORDS: [&str; 4] = ["one", "two", "three", "four"];

/// Object colours. RGB values are far apart (smallest pairwise distance ≈ 83, orange–yellow) and far from
/// every [`BACKGROUNDS`] colour, so nearest-colour segmentation of flat renders is exact and
/// tolerant of a model's colour noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
    Orange,
    Purple,
    White,
    Gray,
}

impl Colour {
    /// Every colour, in palette order.
    pub const ALL: [Colour; 8] = [
        Colour::Red,
        Colour::Green,
        Colour::Blue,
        Colour::Yellow,
        Colour::Orange,
        Colour::Purple,
        Colour::White,
        Colour::Gray,
    ];

    /// The caption word.
    pub fn word(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Orange => "orange",
            Colour::Purple => "purple",
            Colour::White => "white",
            Colour::Gray => "gray",
        }
    }

    /// The flat RGB value the renderer paints.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 40, 40],
            Colour::Green => [40, 180, 60],
            Colour::Blue => [40, 90, 230],
            Colour::Yellow => [240, 220, 40],
            Colour::Orange => [250, 140, 20],
            Colour::Purple => [150, 60, 200],
            Colour::White => [240, 240, 240],
            Colour::Gray => [130, 130, 130],
        }
    }
}

/// Background colours: dark, and at least ≈ 160 away from every object colour.
/// Captions never name the background (it varies so a model learns to ignore it).
pub const BACKGROUNDS: [(&str, [u8; 3]); 2] = [("black", [0, 0, 0]), ("navy", [18, 22, 64])];

/// Object shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
    Diamond,
    Hexagon,
    Cross,
    Heart,
}

impl Shape {
    /// Every shape.
    pub const ALL: [Shape; 8] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Star,
        Shape::Diamond,
        Shape::Hexagon,
        Shape::Cross,
        Shape::Heart,
    ];

    /// The caption word, singular.
    pub fn word(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
            Shape::Diamond => "diamond",
            Shape::Hexagon => "hexagon",
            Shape::Cross => "cross",
            Shape::Heart => "heart",
        }
    }

    /// The caption word, plural (counts of two or more).
    pub fn plural(self) -> &'static str {
        match self {
            Shape::Circle => "circles",
            Shape::Square => "squares",
            Shape::Triangle => "triangles",
            Shape::Star => "stars",
            Shape::Diamond => "diamonds",
            Shape::Hexagon => "hexagons",
            Shape::Cross => "crosses",
            Shape::Heart => "hearts",
        }
    }
}

/// Object sizes: the side of the object's square bounding box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    Small,
    Large,
}

impl Size {
    /// Both sizes.
    pub const ALL: [Size; 2] = [Size::Small, Size::Large];

    /// The caption word.
    pub fn word(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }

    /// Box sides the generator draws from (inclusive): small ≈ 12 px, large ≈ 22 px.
    pub fn sides(self) -> (u32, u32) {
        match self {
            Size::Small => (11, 13),
            Size::Large => (21, 23),
        }
    }

    /// The size class of a measured box side: the midpoint 17 px splits them.
    pub fn of_side(side: u32) -> Size {
        if side <= 17 {
            Size::Small
        } else {
            Size::Large
        }
    }
}

/// Absolute positions: regions of the canvas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Position {
    Left,
    Right,
    Top,
    Bottom,
    Center,
}

/// Half the side of the centre region, as a fraction of the image side.
const CENTER_HALF: f32 = 0.125;

impl Position {
    /// Every position.
    pub const ALL: [Position; 5] = [
        Position::Left,
        Position::Right,
        Position::Top,
        Position::Bottom,
        Position::Center,
    ];

    /// The position's own word.
    pub fn word(self) -> &'static str {
        match self {
            Position::Left => "left",
            Position::Right => "right",
            Position::Top => "top",
            Position::Bottom => "bottom",
            Position::Center => "center",
        }
    }

    /// Caption phrases for "the object is at this position" (the grammar picks one).
    pub fn phrases(self) -> &'static [&'static [&'static str]] {
        match self {
            Position::Left => &[&["on", "the", "left"], &["at", "the", "left"]],
            Position::Right => &[&["on", "the", "right"], &["at", "the", "right"]],
            Position::Top => &[&["at", "the", "top"], &["on", "the", "top"]],
            Position::Bottom => &[&["at", "the", "bottom"], &["on", "the", "bottom"]],
            Position::Center => &[&["in", "the", "center"], &["in", "the", "middle"]],
        }
    }

    /// Where the generator puts the centre of an object at this position, as fractions of the
    /// image side: `(x_min, x_max, y_min, y_max)`. Each box lies well inside [`Self::contains`].
    pub fn sampling_box(self) -> (f32, f32, f32, f32) {
        match self {
            Position::Left => (0.0, 0.3, 0.44, 0.56),
            Position::Right => (0.7, 1.0, 0.44, 0.56),
            Position::Top => (0.44, 0.56, 0.0, 0.3),
            Position::Bottom => (0.44, 0.56, 0.7, 1.0),
            Position::Center => (0.45, 0.55, 0.45, 0.55),
        }
    }

    /// Whether a centre `(x, y)` (pixels, on a `side`-pixel image) is at this position.
    ///
    /// Compass regions: centre when both offsets from the image centre are within 1/8 of the
    /// side; otherwise the dominant axis and its sign decide (left when the horizontal offset
    /// is negative and larger than the vertical one, ...). Regions are disjoint, so every
    /// point off the diagonals has exactly one position.
    pub fn contains(self, x: f32, y: f32, side: f32) -> bool {
        let dx = x / side - 0.5;
        let dy = y / side - 0.5;
        let central = dx.abs() <= CENTER_HALF && dy.abs() <= CENTER_HALF;
        match self {
            Position::Center => central,
            Position::Left => !central && dx < 0.0 && -dx > dy.abs(),
            Position::Right => !central && dx > 0.0 && dx > dy.abs(),
            Position::Top => !central && dy < 0.0 && -dy > dx.abs(),
            Position::Bottom => !central && dy > 0.0 && dy > dx.abs(),
        }
    }

    /// The position of a centre, if it is off the region borders.
    pub fn of(x: f32, y: f32, side: f32) -> Option<Position> {
        Position::ALL.into_iter().find(|p| p.contains(x, y, side))
    }
}

/// Relations between two objects: "A *relation* B".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    LeftOf,
    RightOf,
    Above,
    Below,
}

/// Smallest centre distance along a relation's axis, as a fraction of the image side, for
/// the checker to accept it (GenEval-style threshold).
pub const RELATION_MIN_OFFSET: f32 = 0.1;

impl Relation {
    /// Every relation.
    pub const ALL: [Relation; 4] = [
        Relation::LeftOf,
        Relation::RightOf,
        Relation::Above,
        Relation::Below,
    ];

    /// The relation's name in labels and prompt files.
    pub fn name(self) -> &'static str {
        match self {
            Relation::LeftOf => "left_of",
            Relation::RightOf => "right_of",
            Relation::Above => "above",
            Relation::Below => "below",
        }
    }

    /// Caption phrases (the grammar picks one).
    pub fn phrases(self) -> &'static [&'static [&'static str]] {
        match self {
            Relation::LeftOf => &[&["to", "the", "left", "of"], &["left", "of"]],
            Relation::RightOf => &[&["to", "the", "right", "of"], &["right", "of"]],
            Relation::Above => &[&["above"]],
            Relation::Below => &[&["below"]],
        }
    }

    /// The offset of B's centre from A's along the relation's axis, signed so that positive
    /// means the relation holds in direction, and the absolute offset across it.
    fn offsets(self, a: (f32, f32), b: (f32, f32)) -> (f32, f32) {
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        match self {
            Relation::LeftOf => (dx, dy.abs()),
            Relation::RightOf => (-dx, dy.abs()),
            Relation::Above => (dy, dx.abs()),
            Relation::Below => (-dy, dx.abs()),
        }
    }

    /// Whether "A relation B" holds for centres `a`, `b` on a `side`-pixel image: the
    /// along-axis offset is at least [`RELATION_MIN_OFFSET`] of the side and larger than the
    /// offset across (so "above" is not satisfied by a mostly-sideways arrangement).
    pub fn holds(self, a: (f32, f32), b: (f32, f32), side: f32) -> bool {
        let (along, across) = self.offsets(a, b);
        along >= RELATION_MIN_OFFSET * side && along > across
    }

    /// The generator's stricter version of [`Self::holds`]: along ≥ `min_along` pixels and at
    /// least twice the offset across, so every generated relation is unambiguous.
    pub fn holds_clearly(self, a: (f32, f32), b: (f32, f32), min_along: f32) -> bool {
        let (along, across) = self.offsets(a, b);
        along >= min_along && along >= 2.0 * across
    }
}

/// Colour–shape pairs never shown in the train split: one per colour and one per shape (a
/// Latin transversal of the 8×8 grid), so every colour and every shape is still trained with
/// seven partners and only the *combination* is new. The held-out split and the default
/// evaluation prompts are built from these pairs, to measure compositional generalisation.
pub const HELD_OUT: [(Colour, Shape); 8] = [
    (Colour::Purple, Shape::Triangle),
    (Colour::Yellow, Shape::Heart),
    (Colour::Orange, Shape::Star),
    (Colour::Green, Shape::Diamond),
    (Colour::Blue, Shape::Hexagon),
    (Colour::Red, Shape::Cross),
    (Colour::White, Shape::Square),
    (Colour::Gray, Shape::Circle),
];

/// Whether `colour shape` is a held-out pair.
pub fn is_held_out(colour: Colour, shape: Shape) -> bool {
    HELD_OUT.contains(&(colour, shape))
}

/// Words that open a caption (empty: none), before an object phrase.
pub const PREFIXES: &[&[&str]] = &[
    &[],
    &[],
    &["there", "is"],
    &["an", "image", "of"],
    &["a", "picture", "of"],
    &["draw"],
    &["show"],
];

/// Words that open a counting caption (plural noun phrase).
pub const PLURAL_PREFIXES: &[&[&str]] = &[
    &[],
    &[],
    &["there", "are"],
    &["an", "image", "of"],
    &["a", "picture", "of"],
    &["draw"],
    &["show"],
];

/// Joiners between the two objects of a scene without a relation.
pub const PAIR_JOINERS: &[&[&str]] = &[&["and"], &["and"], &["with"], &["next", "to"]];

/// Every word the grammar may use (each must be in [`crate::vocab::WORDS`]).
pub fn grammar_words() -> Vec<&'static str> {
    let mut words: Vec<&'static str> = Vec::new();
    words.extend(Colour::ALL.iter().map(|c| c.word()));
    words.extend(Shape::ALL.iter().map(|s| s.word()));
    words.extend(Shape::ALL.iter().map(|s| s.plural()));
    words.extend(Size::ALL.iter().map(|s| s.word()));
    words.extend(COUNT_WORDS);
    for p in Position::ALL {
        p.phrases().iter().for_each(|ph| words.extend(*ph));
    }
    for r in Relation::ALL {
        r.phrases().iter().for_each(|ph| words.extend(*ph));
    }
    for list in [PREFIXES, PLURAL_PREFIXES, PAIR_JOINERS] {
        list.iter().for_each(|ph| words.extend(*ph));
    }
    words.extend(["a", "an", "is", "and", ",", "."]);
    words
}

/// The specification as JSON, stored in the dataset header so a trainer or a later reader
/// knows the palette, sizes and held-out pairs the file was made with.
pub fn spec_json() -> Value {
    let colours: Vec<Value> = Colour::ALL
        .iter()
        .map(|c| json!({"name": c.word(), "rgb": c.rgb()}))
        .collect();
    let backgrounds: Vec<Value> = BACKGROUNDS
        .iter()
        .map(|(name, rgb)| json!({"name": name, "rgb": rgb}))
        .collect();
    let sizes: Vec<Value> = Size::ALL
        .iter()
        .map(|s| json!({"name": s.word(), "sides": [s.sides().0, s.sides().1]}))
        .collect();
    let held_out: Vec<Value> = HELD_OUT
        .iter()
        .map(|(c, s)| json!([c.word(), s.word()]))
        .collect();
    json!({
        "colours": colours,
        "backgrounds": backgrounds,
        "shapes": Shape::ALL.iter().map(|s| s.word()).collect::<Vec<_>>(),
        "sizes": sizes,
        "positions": Position::ALL.iter().map(|p| p.word()).collect::<Vec<_>>(),
        "relations": Relation::ALL.iter().map(|r| r.name()).collect::<Vec<_>>(),
        "max_objects": MAX_OBJECTS,
        "object_gap": OBJECT_GAP,
        "held_out": held_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn distance(a: [u8; 3], b: [u8; 3]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(&x, y)| (f32::from(x) - f32::from(y)).powi(2))
            .sum::<f32>()
            .sqrt()
    }

    #[test]
    fn palette_is_well_separated() {
        for (i, a) in Colour::ALL.iter().enumerate() {
            for b in &Colour::ALL[i + 1..] {
                assert!(distance(a.rgb(), b.rgb()) > 80.0, "{a:?} {b:?}");
            }
            for (name, bg) in BACKGROUNDS {
                assert!(distance(a.rgb(), bg) > 150.0, "{a:?} {name}");
            }
        }
    }

    #[test]
    fn held_out_is_a_transversal() {
        for c in Colour::ALL {
            assert_eq!(HELD_OUT.iter().filter(|(hc, _)| *hc == c).count(), 1);
        }
        for s in Shape::ALL {
            assert_eq!(HELD_OUT.iter().filter(|(_, hs)| *hs == s).count(), 1);
        }
    }

    #[test]
    fn sampling_boxes_lie_inside_their_regions() {
        for p in Position::ALL {
            let (x0, x1, y0, y1) = p.sampling_box();
            // Object centres never reach the canvas edge (objects are ≥ 11 px).
            let clamp = |v: f32| v.clamp(6.0 / 64.0, 58.0 / 64.0) * 64.0;
            for (x, y) in [(x0, y0), (x0, y1), (x1, y0), (x1, y1)] {
                assert_eq!(Position::of(clamp(x), clamp(y), 64.0), Some(p), "{p:?}");
            }
        }
    }

    #[test]
    fn relations_are_directional() {
        let a = (10.0, 32.0);
        let b = (40.0, 30.0);
        assert!(Relation::LeftOf.holds(a, b, 64.0));
        assert!(!Relation::RightOf.holds(a, b, 64.0));
        assert!(!Relation::Above.holds(a, b, 64.0));
        assert!(Relation::RightOf.holds(b, a, 64.0));
    }
}
