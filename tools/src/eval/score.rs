//! What an image must show (an [`Expectation`]), GenEval-style categories, the default prompt
//! list built from the held-out split, and scoring detections against expectations.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::checker::Detection;
use crate::error::{Error, Result};
use crate::shapes::caption::{count_phrase, noun_phrase, position_phrase, relation_phrase, text};
use crate::shapes::scene::{Scene, SceneKind};
use crate::shapes::spec::{
    is_held_out, Colour, Position, Relation, Shape, Size, HELD_OUT, IMAGE_SIZE,
};

/// GenEval-style prompt categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// One object; only its shape is checked.
    SingleObject,
    /// Two objects; both shapes must be present.
    TwoObjects,
    /// N identical objects; exactly N must match.
    Counting,
    /// One object; shape and colour are checked.
    Colors,
    /// A relation between two objects, or an object at a canvas position.
    Position,
    /// Two objects; each colour must be on its own shape.
    AttributeBinding,
}

impl Category {
    /// Every category, in report order.
    pub const ALL: [Category; 6] = [
        Category::SingleObject,
        Category::TwoObjects,
        Category::Counting,
        Category::Colors,
        Category::Position,
        Category::AttributeBinding,
    ];

    /// The JSON key.
    pub fn name(self) -> &'static str {
        match self {
            Category::SingleObject => "single_object",
            Category::TwoObjects => "two_objects",
            Category::Counting => "counting",
            Category::Colors => "colors",
            Category::Position => "position",
            Category::AttributeBinding => "attribute_binding",
        }
    }
}

/// Constraints on one object; `None` fields are not checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectSpec {
    pub shape: Shape,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub colour: Option<Colour>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
}

impl ObjectSpec {
    /// Whether `d` satisfies every constraint.
    pub fn matches(&self, d: &Detection) -> bool {
        let (x, y) = d.center();
        d.shape == Some(self.shape)
            && self.colour.is_none_or(|c| c == d.colour)
            && self.size.is_none_or(|s| s == d.size)
            && self
                .position
                .is_none_or(|p| p.contains(x, y, IMAGE_SIZE as f32))
    }
}

/// "objects[subject] relation objects[object]".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelationSpec {
    pub subject: usize,
    pub relation: Relation,
    pub object: usize,
}

/// How detections must match the expected objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchMode {
    /// Each expected object matches a distinct detection; other detections are ignored.
    #[default]
    Contains,
    /// The number of detections matching `objects[0]` equals `objects.len()`.
    Count,
    /// As `Contains`, and there are no other detections.
    Exactly,
}

/// What an image must show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expectation {
    pub objects: Vec<ObjectSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relation: Option<RelationSpec>,
    #[serde(default)]
    pub mode: MatchMode,
}

/// One evaluation prompt: a line of a prompts file (JSON lines).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalPrompt {
    pub category: Category,
    pub prompt: String,
    #[serde(flatten)]
    pub expect: Expectation,
}

/// Tries to give expected objects `i..` distinct detections, then checks the relation.
fn assign(e: &Expectation, dets: &[Detection], i: usize, chosen: &mut Vec<usize>) -> bool {
    let Some(spec) = e.objects.get(i) else {
        return e.relation.is_none_or(|r| {
            let center = |k: usize| chosen.get(k).and_then(|&d| dets.get(d)).map(|d| d.center());
            match (center(r.subject), center(r.object)) {
                (Some(a), Some(b)) => r.relation.holds(a, b, IMAGE_SIZE as f32),
                _ => false,
            }
        });
    };
    for (d, det) in dets.iter().enumerate() {
        if chosen.contains(&d) || !spec.matches(det) {
            continue;
        }
        chosen.push(d);
        if assign(e, dets, i + 1, chosen) {
            return true;
        }
        chosen.pop();
    }
    false
}

/// Whether `detections` satisfy `expect`.
pub fn check(expect: &Expectation, detections: &[Detection]) -> bool {
    match expect.mode {
        MatchMode::Count => expect.objects.first().is_some_and(|spec| {
            detections.iter().filter(|d| spec.matches(d)).count() == expect.objects.len()
        }),
        MatchMode::Contains => assign(expect, detections, 0, &mut Vec::new()),
        MatchMode::Exactly => {
            detections.len() == expect.objects.len()
                && assign(expect, detections, 0, &mut Vec::new())
        }
    }
}

/// The full ground truth of a dataset scene, for validating the checker: every object with
/// shape, colour and size, the named position and relation, and nothing else in the image.
pub fn ground_truth(scene: &Scene) -> Expectation {
    let objects = scene
        .objects
        .iter()
        .enumerate()
        .map(|(i, o)| ObjectSpec {
            shape: o.shape,
            colour: Some(o.colour),
            size: Some(o.size),
            position: if i == 0 { scene.position } else { None },
        })
        .collect();
    let relation = scene.relation.map(|relation| RelationSpec {
        subject: 0,
        relation,
        object: 1,
    });
    let mode = if scene.kind == SceneKind::Count {
        MatchMode::Count
    } else {
        MatchMode::Exactly
    };
    Expectation {
        objects,
        relation,
        mode,
    }
}

fn spec(shape: Shape, colour: Option<Colour>) -> ObjectSpec {
    ObjectSpec {
        shape,
        colour,
        size: None,
        position: None,
    }
}

/// A train-split partner for held-out pair `i`: another colour and another shape.
fn partner(i: usize) -> (Colour, Shape) {
    let (c, s) = HELD_OUT
        .get(i)
        .copied()
        .unwrap_or((Colour::Red, Shape::Circle));
    let ci = Colour::ALL.iter().position(|&x| x == c).unwrap_or(0);
    let si = Shape::ALL.iter().position(|&x| x == s).unwrap_or(0);
    // `ALL[(start + k) % ALL.len()]`; the tables are not empty, so never the fallback.
    let colour = |k: usize| Colour::ALL.iter().cycle().nth(ci + k).copied().unwrap_or(c);
    let shape = |k: usize| Shape::ALL.iter().cycle().nth(si + k).copied().unwrap_or(s);
    let pc = colour(3);
    (0..Shape::ALL.len())
        .map(|k| shape(2 + k))
        .find(|&ps| ps != s && !is_held_out(pc, ps))
        .map_or((colour(1), shape(1)), |ps| (pc, ps))
}

/// The default prompts: for each held-out pair, one prompt per category (two for position:
/// a relation and a canvas position). Deterministic; 56 prompts.
pub fn default_prompts() -> Vec<EvalPrompt> {
    let mut out = Vec::new();
    let relations = Relation::ALL.iter().cycle();
    let positions = Position::ALL.iter().cycle();
    for (i, ((&(c, s), &relation), &position)) in
        HELD_OUT.iter().zip(relations).zip(positions).enumerate()
    {
        let (pc, ps) = partner(i);
        let mut push = |category, words: Vec<&'static str>, expect| {
            out.push(EvalPrompt {
                category,
                prompt: text(&words),
                expect,
            })
        };
        let np = |w: &mut Vec<&'static str>, c, s| noun_phrase(w, None, Some(c), s);
        let contains = |objects| Expectation {
            objects,
            relation: None,
            mode: MatchMode::Contains,
        };

        let mut w = Vec::new();
        np(&mut w, c, s);
        push(Category::SingleObject, w, contains(vec![spec(s, None)]));

        let mut w = vec!["an", "image", "of"];
        np(&mut w, c, s);
        push(Category::Colors, w, contains(vec![spec(s, Some(c))]));

        let mut w = Vec::new();
        np(&mut w, c, s);
        w.push("and");
        np(&mut w, pc, ps);
        push(
            Category::TwoObjects,
            w,
            contains(vec![spec(s, None), spec(ps, None)]),
        );

        let mut w = vec!["there", "is"];
        np(&mut w, c, s);
        w.push("and");
        np(&mut w, pc, ps);
        push(
            Category::AttributeBinding,
            w,
            contains(vec![spec(s, Some(c)), spec(ps, Some(pc))]),
        );

        let n = 2 + i % 3;
        let mut w = Vec::new();
        count_phrase(&mut w, n, None, Some(c), s);
        let expect = Expectation {
            objects: vec![spec(s, Some(c)); n],
            relation: None,
            mode: MatchMode::Count,
        };
        push(Category::Counting, w, expect);

        let mut w = Vec::new();
        np(&mut w, c, s);
        w.extend(relation_phrase(relation));
        np(&mut w, pc, ps);
        let expect = Expectation {
            objects: vec![spec(s, Some(c)), spec(ps, Some(pc))],
            relation: Some(RelationSpec {
                subject: 0,
                relation,
                object: 1,
            }),
            mode: MatchMode::Contains,
        };
        push(Category::Position, w, expect);

        let mut w = Vec::new();
        np(&mut w, c, s);
        w.extend(position_phrase(position));
        let mut object = spec(s, Some(c));
        object.position = Some(position);
        push(Category::Position, w, contains(vec![object]));
    }
    out
}

/// Reads a prompts file: one JSON [`EvalPrompt`] per line, blank lines skipped.
pub fn read_prompts(path: &Path) -> Result<Vec<EvalPrompt>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let prompt: EvalPrompt = serde_json::from_str(line).map_err(|e| {
            Error::Invalid(format!("{}:{}: not a prompt: {e}", path.display(), n + 1))
        })?;
        out.push(prompt);
    }
    if out.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no prompts, expected one JSON object per line",
            path.display()
        )));
    }
    Ok(out)
}

/// Writes `prompts` as JSON lines to `path`.
pub fn write_prompts(path: &Path, prompts: &[EvalPrompt]) -> Result<()> {
    let mut bytes = Vec::new();
    for p in prompts {
        serde_json::to_writer(&mut bytes, p).map_err(|e| Error::Invalid(e.to_string()))?;
        bytes.push(b'\n');
    }
    let mut file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    file.write_all(&bytes).map_err(|e| Error::io(path, e))
}
