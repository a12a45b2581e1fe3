//! The caption grammar: scene → words, with paraphrase variety, and words → token ids.
//!
//! Forms (brackets optional, `|` alternatives, every word from [`crate::vocab::WORDS`]):
//!
//! | kind | form | example |
//! |---|---|---|
//! | single | `[prefix] NP [position] [.]` | "there is a small red circle on the left" |
//! | relation | `[prefix] NP relation NP` or `NP is relation NP` | "a red circle above a blue square" |
//! | pair | `[prefix] NP (and \| with \| next to) NP` | "a red circle with a blue star" |
//! | multi | `[prefix] NP , NP [, NP] and NP` | "a red circle, a blue star and a gray cross" |
//! | count | `[plural prefix] COUNT [size] colour plural` | "there are three green squares" |
//!
//! `NP` = `a|an [size] colour shape` (size named in half the scenes, for every object).

use std::collections::HashMap;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::scene::{Scene, SceneKind};
use super::spec::{
    Colour, Position, Relation, Shape, Size, COUNT_WORDS, PAIR_JOINERS, PLURAL_PREFIXES, PREFIXES,
    VOCAB_PRESET,
};
use crate::error::{Error, Result};
use crate::presets::preset;
use crate::vocab;

/// Picks one phrase of a non-empty list.
fn pick<'a>(rng: &mut ChaCha8Rng, list: &'a [&'a [&'static str]]) -> &'a [&'static str] {
    list.get(rng.gen_range(0..list.len().max(1)))
        .copied()
        .unwrap_or(&[])
}

/// Appends the noun phrase `a|an [size] [colour] shape` to `out`.
pub fn noun_phrase(
    out: &mut Vec<&'static str>,
    size: Option<Size>,
    colour: Option<Colour>,
    shape: Shape,
) {
    let first = size
        .map(Size::word)
        .or(colour.map(Colour::word))
        .unwrap_or(shape.word());
    let vowel = first.starts_with(['a', 'e', 'i', 'o', 'u']);
    out.push(if vowel { "an" } else { "a" });
    out.extend(size.map(Size::word));
    out.extend(colour.map(Colour::word));
    out.push(shape.word());
}

/// Appends the counted phrase `COUNT [size] [colour] shapes` (`count` in 1..=4).
pub fn count_phrase(
    out: &mut Vec<&'static str>,
    count: usize,
    size: Option<Size>,
    colour: Option<Colour>,
    shape: Shape,
) {
    let index = count.clamp(1, COUNT_WORDS.len()) - 1;
    out.extend(COUNT_WORDS.get(index).copied());
    out.extend(size.map(Size::word));
    out.extend(colour.map(Colour::word));
    out.push(if count == 1 {
        shape.word()
    } else {
        shape.plural()
    });
}

/// The first (canonical) phrase of a position.
pub fn position_phrase(position: Position) -> &'static [&'static str] {
    position.phrases().first().copied().unwrap_or(&[])
}

/// The first (canonical) phrase of a relation.
pub fn relation_phrase(relation: Relation) -> &'static [&'static str] {
    relation.phrases().first().copied().unwrap_or(&[])
}

/// The caption words of `scene`, paraphrase choices drawn from `rng`.
pub fn caption(scene: &Scene, rng: &mut ChaCha8Rng) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::with_capacity(24);
    let size_of = |size: Size| scene.mention_size.then_some(size);
    let np = |out: &mut Vec<&'static str>, index: usize| {
        if let Some(o) = scene.objects.get(index) {
            noun_phrase(out, size_of(o.size), Some(o.colour), o.shape);
        }
    };
    match scene.kind {
        SceneKind::Single => {
            out.extend(pick(rng, PREFIXES));
            np(&mut out, 0);
            if let Some(p) = scene.position {
                out.extend(pick(rng, p.phrases()));
            }
            if rng.gen_bool(0.2) {
                out.push(".");
            }
        }
        SceneKind::Relation => {
            let with_is = rng.gen_bool(0.25);
            if !with_is {
                out.extend(pick(rng, PREFIXES));
            }
            np(&mut out, 0);
            if with_is {
                out.push("is");
            }
            if let Some(r) = scene.relation {
                out.extend(pick(rng, r.phrases()));
            }
            np(&mut out, 1);
        }
        SceneKind::Pair => {
            out.extend(pick(rng, PREFIXES));
            np(&mut out, 0);
            out.extend(pick(rng, PAIR_JOINERS));
            np(&mut out, 1);
        }
        SceneKind::Multi => {
            out.extend(pick(rng, PREFIXES));
            let n = scene.objects.len();
            for i in 0..n {
                if i + 1 == n {
                    out.push("and");
                } else if i > 0 {
                    out.push(",");
                }
                np(&mut out, i);
            }
        }
        SceneKind::Count => {
            out.extend(pick(rng, PLURAL_PREFIXES));
            if let Some(o) = scene.objects.first() {
                let n = scene.objects.len();
                count_phrase(&mut out, n, size_of(o.size), Some(o.colour), o.shape);
            }
        }
    }
    out
}

/// Caption text: words joined by spaces, with no space before `,` and `.`. The tokenizer's
/// whitespace pre-tokenizer splits punctuation off again, so the text encodes to the same ids
/// as the words.
pub fn text(words: &[&str]) -> String {
    let mut s = String::new();
    for w in words {
        if !s.is_empty() && *w != "," && *w != "." {
            s.push(' ');
        }
        s.push_str(w);
    }
    s
}

/// Word → token id, as in the `tokenizer.json` of the [`VOCAB_PRESET`] preset.
#[derive(Debug, Clone)]
pub struct WordIds {
    ids: HashMap<String, u32>,
    tokens: Vec<String>,
    pad: u32,
}

impl WordIds {
    /// The id map of the [`VOCAB_PRESET`] preset.
    pub fn new() -> Result<Self> {
        let config = preset(VOCAB_PRESET)?;
        let tokens = vocab::tokens(&config)?;
        let ids = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        Ok(WordIds {
            ids,
            tokens,
            pad: config.special_tokens.pad,
        })
    }

    /// Every token, by id.
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// The padding id.
    pub fn pad(&self) -> u32 {
        self.pad
    }

    /// The id of each word; fails on a word outside the vocabulary (a grammar bug).
    pub fn encode(&self, words: &[&str]) -> Result<Vec<u32>> {
        words
            .iter()
            .map(|w| {
                self.ids.get(*w).copied().ok_or_else(|| {
                    Error::Invalid(format!(
                        "caption word `{w}` is not in the {VOCAB_PRESET} vocabulary"
                    ))
                })
            })
            .collect()
    }
}
