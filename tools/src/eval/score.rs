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

/// `"objects[subject] relation objects[object]"`.
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

/// What a dataset scene's caption asks for: its [`ground_truth`] without the object sizes when
/// the caption does not name them. The fair expectation for an image drawn from the caption
/// alone, where any size is a right answer to "a red cross".
pub fn caption_truth(scene: &Scene) -> Expectation {
    let mut expect = ground_truth(scene);
    if !scene.mention_size {
        for object in &mut expect.objects {
            object.size = None;
        }
    }
    expect
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

/// Which colour–shape pairs a prompt set is built from (`eval --prompt-set`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptSet {
    /// The held-out pairs ([`HELD_OUT`]): compositional generalisation ([`default_prompts`]).
    #[default]
    #[serde(rename = "heldout")]
    HeldOut,
    /// Pairs of the train split ([`seen_pairs`]), same grammar and categories ([`seen_prompts`]).
    Seen,
}

impl PromptSet {
    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            PromptSet::HeldOut => "heldout",
            PromptSet::Seen => "seen",
        }
    }

    /// The prompts of this set.
    pub fn prompts(self) -> Vec<EvalPrompt> {
        match self {
            PromptSet::HeldOut => default_prompts(),
            PromptSet::Seen => seen_prompts(),
        }
    }
}

impl std::str::FromStr for PromptSet {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "heldout" | "held-out" | "held_out" => Ok(PromptSet::HeldOut),
            "seen" | "train" => Ok(PromptSet::Seen),
            other => Err(format!(
                "unknown prompt set `{other}` (expected heldout or seen)"
            )),
        }
    }
}

/// Train-split counterparts of the held-out pairs: row `i` keeps the shape of
/// `HELD_OUT[i]` and takes the colour of the next row (`HELD_OUT[(i + 1) % 8]`). The held-out
/// pairs are a transversal (one per colour, one per shape), so each such pair is in the train
/// split, and the eight are again one per colour and one per shape.
pub fn seen_pairs() -> Vec<(Colour, Shape)> {
    let next_colours = HELD_OUT.iter().cycle().skip(1).map(|&(c, _)| c);
    HELD_OUT
        .iter()
        .zip(next_colours)
        .map(|(&(_, s), c)| (c, s))
        .collect()
}

/// The default prompts: for each held-out pair, one prompt per category (two for position:
/// a relation and a canvas position). Deterministic; 56 prompts.
pub fn default_prompts() -> Vec<EvalPrompt> {
    prompts_from_pairs(&HELD_OUT)
}

/// The `seen` prompt set: [`default_prompts`] with every held-out pair replaced by its
/// [`seen_pairs`] row (same partners, relations, positions and counts), so every object of
/// every prompt has a colour–shape pair of the train split. Deterministic; 56 prompts.
pub fn seen_prompts() -> Vec<EvalPrompt> {
    prompts_from_pairs(&seen_pairs())
}

/// One prompt per category (two for position) for each pair; row `i` gets the partner,
/// relation, position and count of held-out row `i`.
fn prompts_from_pairs(pairs: &[(Colour, Shape)]) -> Vec<EvalPrompt> {
    let mut out = Vec::new();
    let relations = Relation::ALL.iter().cycle();
    let positions = Position::ALL.iter().cycle();
    for (i, ((&(c, s), &relation), &position)) in
        pairs.iter().zip(relations).zip(positions).enumerate()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shapes::spec::COUNT_WORDS;

    /// The colour–shape pairs a prompt's words name: a colour word followed by a shape word.
    fn named_pairs(prompt: &str) -> Vec<(Colour, Shape)> {
        let words: Vec<&str> = prompt.split_whitespace().collect();
        words
            .windows(2)
            .filter_map(|w| {
                let c = Colour::ALL.into_iter().find(|c| c.word() == w[0])?;
                let s = Shape::ALL
                    .into_iter()
                    .find(|s| s.word() == w[1] || s.plural() == w[1])?;
                Some((c, s))
            })
            .collect()
    }

    fn category_counts(prompts: &[EvalPrompt]) -> Vec<(Category, usize)> {
        Category::ALL
            .iter()
            .map(|&c| (c, prompts.iter().filter(|p| p.category == c).count()))
            .collect()
    }

    #[test]
    fn seen_pairs_are_train_pairs_one_per_colour_and_shape() {
        let pairs = seen_pairs();
        assert_eq!(pairs.len(), HELD_OUT.len());
        for &(c, s) in &pairs {
            assert!(!is_held_out(c, s), "{c:?} {s:?}");
        }
        for c in Colour::ALL {
            assert_eq!(pairs.iter().filter(|p| p.0 == c).count(), 1, "{c:?}");
        }
        for s in Shape::ALL {
            assert_eq!(pairs.iter().filter(|p| p.1 == s).count(), 1, "{s:?}");
        }
    }

    #[test]
    fn seen_prompt_set_uses_only_train_split_pairs() {
        let seen = PromptSet::Seen.prompts();
        let heldout = PromptSet::HeldOut.prompts();
        assert_eq!(heldout, default_prompts());
        assert_eq!(seen.len(), heldout.len());
        assert_eq!(category_counts(&seen), category_counts(&heldout));
        let mut held_out_named = 0;
        for (p, h) in seen.iter().zip(&heldout) {
            assert_eq!(p.category, h.category);
            assert_eq!(p.expect.mode, h.expect.mode);
            assert_eq!(p.expect.relation, h.expect.relation);
            assert_eq!(p.expect.objects.len(), h.expect.objects.len());
            // Every pair the words name and every pair the checker asks for is a train pair.
            let named = named_pairs(&p.prompt);
            assert!(!named.is_empty(), "{}", p.prompt);
            for (c, s) in named {
                assert!(!is_held_out(c, s), "`{}` names {c:?} {s:?}", p.prompt);
            }
            for o in &p.expect.objects {
                if let Some(c) = o.colour {
                    assert!(!is_held_out(c, o.shape), "`{}`: {o:?}", p.prompt);
                }
            }
            // Same grammar: only colour words differ from the held-out prompt.
            let (a, b): (Vec<&str>, Vec<&str>) = (
                p.prompt.split_whitespace().collect(),
                h.prompt.split_whitespace().collect(),
            );
            assert_eq!(a.len(), b.len(), "`{}` vs `{}`", p.prompt, h.prompt);
            for (x, y) in a.iter().zip(&b) {
                let colour = |w: &str| Colour::ALL.iter().any(|c| c.word() == w);
                let article = |w: &str| w == "a" || w == "an";
                assert!(
                    x == y || (colour(x) && colour(y)) || (article(x) && article(y)),
                    "`{}` vs `{}`",
                    p.prompt,
                    h.prompt
                );
            }
            held_out_named += named_pairs(&h.prompt)
                .iter()
                .filter(|(c, s)| is_held_out(*c, *s))
                .count();
            if p.category == Category::Counting {
                assert!(COUNT_WORDS.iter().any(|w| p.prompt.starts_with(w)));
            }
        }
        // The held-out set, by contrast, names a held-out pair in every prompt.
        assert_eq!(held_out_named, heldout.len());
    }

    #[test]
    fn prompt_set_names_parse_back() {
        for set in [PromptSet::HeldOut, PromptSet::Seen] {
            assert_eq!(set.name().parse::<PromptSet>(), Ok(set));
            assert_eq!(serde_json::to_value(set).unwrap(), set.name());
        }
        assert_eq!(PromptSet::default(), PromptSet::HeldOut);
        let err = "unseen".parse::<PromptSet>().unwrap_err();
        assert!(
            err.contains("unseen") && err.contains("heldout or seen"),
            "{err}"
        );
    }
}
