//! The text vocabulary of the synthetic "shapes" domain and the `tokenizer.json` writer.
//!
//! The tokenizer is a Hugging Face `tokenizers` word-level tokenizer (lowercase, split on
//! whitespace and punctuation), so the SDK (Rust `tokenizers`) and the PyTorch reference
//! (Python `tokenizers`) read the same file and agree on every id.

use std::path::Path;

use serde_json::{json, Map, Value};
use transfusion_sdk::Config;

use crate::error::{Error, Result};

/// Special tokens in id order `0..6`, matching `pad, bos, eos, boi, eoi, unk` of the presets.
pub const SPECIAL_TOKENS: [&str; 6] = ["[PAD]", "[BOS]", "[EOS]", "[BOI]", "[EOI]", "[UNK]"];

/// Content of the unknown-word token (the WordLevel model's `unk_token`).
pub const UNK_TOKEN: &str = "[UNK]";

/// Every word of the shapes domain, in id order (ids start after the special tokens).
///
/// This is the single word list: the dataset grammar builds captions from it, the presets size
/// their embeddings from it ([`VOCAB_SIZE`]). Words are lowercase (the tokenizer lowercases its
/// input) and unique; appending words keeps existing ids stable, reordering does not.
/// Groups: shapes (singular, plural), colours, sizes, positions and relations, counts,
/// function words, punctuation (the whitespace pre-tokenizer splits `.` and `,` off words).
#[rustfmt::skip]
pub const WORDS: &[&str] = &[
    // shapes
    "circle", "square", "triangle", "star", "diamond", "hexagon", "cross", "heart", "shape",
    "circles", "squares", "triangles", "stars", "diamonds", "hexagons", "crosses", "hearts",
    "shapes",
    // colours (the dataset palette)
    "red", "green", "blue", "yellow", "orange", "purple", "white", "black", "gray", "pink",
    // sizes
    "small", "large", "big", "tiny",
    // positions and relations
    "left", "right", "top", "bottom", "center", "middle", "above", "below", "of", "the", "on",
    "in", "at", "next", "to", "corner",
    // counts
    "one", "two", "three", "four", "a", "an",
    // function words
    "and", "with", "image", "picture", "there", "is", "are", "background", "draw", "describe",
    "show", "scene",
    // punctuation
    ".", ",",
];

/// Size of the shapes vocabulary: the special tokens plus [`WORDS`]; every preset's
/// `text.vocab_size`.
pub const VOCAB_SIZE: usize = SPECIAL_TOKENS.len() + WORDS.len();

/// `(content, config id)` of each special token, in [`SPECIAL_TOKENS`] order.
fn special_ids(config: &Config) -> [(&'static str, u32); 6] {
    let s = &config.special_tokens;
    [
        (SPECIAL_TOKENS[0], s.pad),
        (SPECIAL_TOKENS[1], s.bos),
        (SPECIAL_TOKENS[2], s.eos),
        (SPECIAL_TOKENS[3], s.boi),
        (SPECIAL_TOKENS[4], s.eoi),
        (SPECIAL_TOKENS[5], s.unk),
    ]
}

/// Token of every id `0..config.text.vocab_size`: special tokens at their configured ids, the
/// [`WORDS`] in order on the remaining ids, and `[unused{i}]` fillers when the configuration's
/// vocabulary is larger than the word list (so every embedding row has a token).
///
/// Fails when the vocabulary is too small to hold the special tokens and every word.
pub fn tokens(config: &Config) -> Result<Vec<String>> {
    let size = config.text.vocab_size;
    let mut slots: Vec<Option<String>> = vec![None; size];
    for (content, id) in special_ids(config) {
        let slot = slots.get_mut(id as usize).ok_or_else(|| {
            Error::Invalid(format!(
                "special token {content} has id {id}, expected an id below text.vocab_size = {size}"
            ))
        })?;
        if let Some(other) = slot {
            return Err(Error::Invalid(format!(
                "special tokens {other} and {content} share id {id}, expected distinct ids"
            )));
        }
        *slot = Some(content.to_string());
    }
    let mut words = WORDS.iter();
    let mut unused = 0;
    for slot in slots.iter_mut().filter(|s| s.is_none()) {
        *slot = Some(match words.next() {
            Some(word) => word.to_string(),
            None => {
                unused += 1;
                format!("[unused{}]", unused - 1)
            }
        });
    }
    if words.next().is_some() {
        return Err(Error::Invalid(format!(
            "text.vocab_size = {size} cannot hold the {} special tokens and {} words of the \
             shapes vocabulary, expected at least {VOCAB_SIZE}",
            SPECIAL_TOKENS.len(),
            WORDS.len()
        )));
    }
    Ok(slots.into_iter().flatten().collect())
}

/// A Hugging Face `tokenizers` `tokenizer.json` (format version "1.0") for `config`: a
/// WordLevel model over [`tokens`], `Lowercase` normalizer, `Whitespace` pre-tokenizer, the six
/// special tokens as `added_tokens` (special, not normalized) at the configured ids, no
/// post-processor or decoder (the runtime adds BOS/EOS itself).
pub fn tokenizer_json(config: &Config) -> Result<Value> {
    let tokens = tokens(config)?;
    let mut vocab = Map::new();
    for (id, token) in tokens.iter().enumerate() {
        vocab.insert(token.clone(), json!(id));
    }
    let added_tokens: Vec<Value> = special_ids(config)
        .iter()
        .map(|(content, id)| {
            json!({
                "id": id,
                "content": content,
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": false,
                "special": true,
            })
        })
        .collect();
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": { "type": "Lowercase" },
        "pre_tokenizer": { "type": "Whitespace" },
        "post_processor": null,
        "decoder": null,
        "model": { "type": "WordLevel", "vocab": vocab, "unk_token": UNK_TOKEN },
    }))
}

/// Reads the `tokenizer.json` at `path` and checks it against `config`: its vocabulary size
/// (largest id + 1 over the model vocabulary and added tokens) equals `text.vocab_size`, and each
/// special token maps to its configured id in both the model vocabulary and `added_tokens`.
pub fn check_tokenizer(path: &Path, config: &Config) -> Result<()> {
    read_tokenizer(path, config).map(drop)
}

/// [`check_tokenizer`], returning the parsed JSON so a caller can keep it without reading the
/// file twice.
pub fn read_tokenizer(path: &Path, config: &Config) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let tokenizer_error = |message: String| Error::Tokenizer {
        path: path.to_path_buf(),
        message,
    };
    let json: Value =
        serde_json::from_str(&text).map_err(|e| tokenizer_error(format!("invalid JSON: {e}")))?;
    check_tokenizer_json(&json, config).map_err(tokenizer_error)?;
    Ok(json)
}

/// [`check_tokenizer`] on parsed JSON; the error is the message without the path.
fn check_tokenizer_json(json: &Value, config: &Config) -> std::result::Result<(), String> {
    let vocab = json
        .pointer("/model/vocab")
        .and_then(Value::as_object)
        .ok_or("expected an object at `model.vocab` (a WordLevel/WordPiece/BPE vocabulary)")?;
    let id_of = |value: &Value, what: &str| {
        value
            .as_u64()
            .ok_or_else(|| format!("{what}: expected a non-negative integer id, found {value}"))
    };
    let mut max_id: Option<u64> = None;
    for (token, id) in vocab {
        let id = id_of(id, &format!("model.vocab[{token:?}]"))?;
        max_id = max_id.max(Some(id));
    }
    let added = match json.get("added_tokens") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(other) => return Err(format!("`added_tokens`: expected an array, found {other}")),
    };
    let mut added_ids = Vec::new();
    for item in &added {
        let content = item
            .get("content")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("`added_tokens` entry {item}: expected a string `content`"))?;
        let id = id_of(item.get("id").unwrap_or(&Value::Null), content)?;
        max_id = max_id.max(Some(id));
        added_ids.push((content.to_string(), id));
    }
    let size = max_id.map_or(0, |m| m + 1);
    if size != config.text.vocab_size as u64 {
        return Err(format!(
            "vocabulary size (largest id + 1) is {size}, expected text.vocab_size = {}",
            config.text.vocab_size
        ));
    }
    for ((content, expected), (key, _)) in
        special_ids(config).iter().zip(config.special_tokens.all())
    {
        let expected = u64::from(*expected);
        let in_vocab = vocab.get(*content).map(|v| id_of(v, content)).transpose()?;
        let in_added = added_ids
            .iter()
            .find(|(c, _)| c == content)
            .map(|(_, id)| *id);
        let found = match (in_vocab, in_added) {
            (Some(a), Some(b)) if a != b => {
                return Err(format!(
                    "special token {content} (special_tokens.{key}) has id {a} in model.vocab \
                     but {b} in added_tokens, expected {expected}"
                ))
            }
            (Some(id), _) | (None, Some(id)) => id,
            (None, None) => {
                return Err(format!(
                    "special token {content} (special_tokens.{key}) is missing, expected id \
                     {expected}"
                ))
            }
        };
        if found != expected {
            return Err(format!(
                "special token {content} (special_tokens.{key}) has id {found}, expected \
                 {expected}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::preset;
    use std::collections::HashSet;

    #[test]
    fn words_are_unique_lowercase_and_not_special() {
        let mut seen = HashSet::new();
        for word in WORDS {
            assert!(seen.insert(*word), "duplicate word {word}");
            assert_eq!(word.to_lowercase(), *word);
            assert!(!word.contains(char::is_whitespace), "{word}");
            assert!(!SPECIAL_TOKENS.contains(word));
        }
        assert_eq!(VOCAB_SIZE, 6 + WORDS.len());
    }

    #[test]
    fn tokenizer_json_has_the_configured_ids() {
        let config = preset("tiny").unwrap();
        let json = tokenizer_json(&config).unwrap();
        assert_eq!(json["version"], "1.0");
        assert_eq!(json["model"]["type"], "WordLevel");
        assert_eq!(json["model"]["unk_token"], "[UNK]");
        assert_eq!(json["normalizer"], json!({"type": "Lowercase"}));
        assert_eq!(json["pre_tokenizer"], json!({"type": "Whitespace"}));
        assert!(json["post_processor"].is_null() && json["decoder"].is_null());
        let vocab = json["model"]["vocab"].as_object().unwrap();
        assert_eq!(vocab.len(), config.text.vocab_size);
        assert_eq!(vocab["[PAD]"], 0);
        assert_eq!(vocab["[UNK]"], 5);
        assert_eq!(vocab["circle"], 6);
        assert_eq!(vocab[","], json!(VOCAB_SIZE - 1));
        let added = json["added_tokens"].as_array().unwrap();
        assert_eq!(added.len(), 6);
        assert_eq!(added[3]["content"], "[BOI]");
        assert_eq!(added[3]["id"], 3);
        assert_eq!(added[3]["special"], true);
        check_tokenizer_json(&json, &config).unwrap();
    }

    #[test]
    fn other_special_ids_and_padding() {
        let mut config = preset("tiny").unwrap();
        config.text.vocab_size = VOCAB_SIZE + 3;
        config.special_tokens.pad = (VOCAB_SIZE + 2) as u32;
        let all = tokens(&config).unwrap();
        assert_eq!(all.len(), VOCAB_SIZE + 3);
        assert_eq!(all[VOCAB_SIZE + 2], "[PAD]");
        assert_eq!(all[0], "circle");
        assert_eq!(all[VOCAB_SIZE - 1], "[unused0]");
        assert_eq!(all[VOCAB_SIZE + 1], "[unused2]");
        check_tokenizer_json(&tokenizer_json(&config).unwrap(), &config).unwrap();
        config.text.vocab_size = VOCAB_SIZE - 1;
        config.special_tokens.pad = 0;
        assert!(tokens(&config).is_err());
    }

    #[test]
    fn check_names_a_wrong_special_id() {
        let config = preset("tiny").unwrap();
        let json = tokenizer_json(&config).unwrap();
        let mut other = config.clone();
        other.special_tokens.boi = 4;
        other.special_tokens.eoi = 3;
        let message = check_tokenizer_json(&json, &other).unwrap_err();
        assert!(
            message.contains("[BOI]") && message.contains("has id 3, expected 4"),
            "{message}"
        );
        other = config.clone();
        other.text.vocab_size += 1;
        let message = check_tokenizer_json(&json, &other).unwrap_err();
        assert!(message.contains("vocabulary size"), "{message}");
    }
}
