//! The text tokenizer: a Hugging Face `tokenizer.json` (see `docs/bundle.md`) read with the
//! `tokenizers` crate, checked against the config's special-token ids.
//!
//! The bundled tokenizer is word-level (lowercase normalizer, whitespace pre-tokenizer), but
//! nothing here depends on that except the documentation of [`Tokenizer::decode_token`]: any
//! `tokenizer.json` whose special tokens carry the configured ids loads.

use std::fmt;
use std::path::{Path, PathBuf};

use tokenizers::models::ModelWrapper;

use crate::config::SpecialTokens;
use crate::error::{catch_panic, Error, Result};

/// A loaded tokenizer: turns prompts into token ids and generated ids back into text.
///
/// Cheap to share: it is `Send + Sync` and every method takes `&self`, so one instance can serve
/// several generation threads.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The file it was read from, named in every error.
    path: PathBuf,
    special: SpecialTokens,
    /// Vocabulary size including added (special) tokens.
    vocab_size: usize,
}

impl fmt::Debug for Tokenizer {
    /// The path and sizes only: the derived form would print the whole vocabulary.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size)
            .field("special", &self.special)
            .finish()
    }
}

/// `[PAD]`, `[BOS]`, ...: the text of the special token that [`SpecialTokens::all`] calls `name`.
fn special_token_text(name: &str) -> String {
    format!("[{}]", name.to_ascii_uppercase())
}

impl Tokenizer {
    /// Reads the `tokenizer.json` at `path` and checks that each special token (`[PAD]`, `[BOS]`,
    /// `[EOS]`, `[BOI]`, `[EOI]`, `[UNK]`) is an added special token with the id `special` gives
    /// it, and that a word-level model's unknown token is `[UNK]`; a mismatch would make the
    /// model see (or emit) the wrong control tokens, so it is an error naming the token, the
    /// expected id and the id found.
    ///
    /// Padding and truncation stored in the file are switched off (the runtime lays out its own
    /// sequences), and special-token text in prompts is *not* turned into special ids: a user
    /// typing `[BOI]` gets ordinary (here: unknown) word tokens, never an image block.
    pub fn from_file(path: &Path, special: SpecialTokens) -> Result<Self> {
        let error = |message: String| Error::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // Syntax first, with serde_json's line and column. tokenizers 0.22 panics on a syntax
        // error inside `decoder` (it `expect`s there; found by fuzzing): reading from a parsed
        // value avoids that path, and `catch_panic` turns any other panic into an error.
        let json: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| error(format!("invalid tokenizer.json: not JSON: {e}")))?;
        let mut inner = catch_panic(|| serde_json::from_value::<tokenizers::Tokenizer>(json))
            .map_err(|what| {
                error(format!(
                    "tokenizers panicked reading it ({what}): the file is malformed"
                ))
            })?
            .map_err(|e| error(format!("invalid tokenizer.json: {e}")))?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| error(format!("disabling truncation: {e}")))?;
        inner.set_encode_special_tokens(true);
        check_special_tokens(&inner, &special).map_err(error)?;
        let vocab_size = inner.get_vocab_size(true);
        Ok(Self {
            inner,
            path: path.to_path_buf(),
            special,
            vocab_size,
        })
    }

    /// Token ids of `text`, without BOS/EOS or any other special token (the caller lays out the
    /// sequence). Words missing from the vocabulary become the unknown token's id; an empty or
    /// all-whitespace `text` gives an empty vector, which the caller may accept or reject.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| self.error(format!("encoding {} bytes of text: {e}", text.len())))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// [`encode`](Self::encode), and the words of `text` that became the unknown token, in
    /// order (each once): what a prompt asks that this model never saw.
    pub fn encode_with_unknown(&self, text: &str) -> Result<(Vec<u32>, Vec<String>)> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| self.error(format!("encoding {} bytes of text: {e}", text.len())))?;
        let mut unknown: Vec<String> = Vec::new();
        for ((&id, token), &(start, end)) in encoding
            .get_ids()
            .iter()
            .zip(encoding.get_tokens())
            .zip(encoding.get_offsets())
        {
            if id != self.special.unk {
                continue;
            }
            let word = text.get(start..end).unwrap_or(token).to_string();
            if !unknown.contains(&word) {
                unknown.push(word);
            }
        }
        Ok((encoding.get_ids().to_vec(), unknown))
    }

    /// The text of `ids`, with special tokens (BOS, EOS, BOI, ...) left out. An id outside the
    /// vocabulary is an error rather than silently dropped: it means the logits and the
    /// tokenizer disagree about the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&id) = ids.iter().find(|&&id| self.inner.id_to_token(id).is_none()) {
            return Err(self.error(format!(
                "cannot decode id {id}: not in the vocabulary ({} tokens)",
                self.vocab_size
            )));
        }
        self.inner
            .decode(ids, true)
            .map_err(|e| self.error(format!("decoding {} ids: {e}", ids.len())))
    }

    /// The text of one token, for streaming output; `None` for a special token or an id outside
    /// the vocabulary. For the word-level tokenizers of this model family each piece is one word
    /// or punctuation mark, and [`decode`](Self::decode) of a sequence equals its pieces joined
    /// by single spaces, so a streaming caller prints a space between pieces.
    pub fn decode_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)?;
        let text = self.inner.decode(&[id], true).ok()?;
        (!text.is_empty()).then_some(text)
    }

    /// Number of token ids, special tokens included; the text head's logits have this length.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The special-token ids this tokenizer was checked against.
    pub fn special(&self) -> SpecialTokens {
        self.special
    }

    /// The file this tokenizer was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, message: String) -> Error {
        Error::Tokenizer {
            path: self.path.clone(),
            message,
        }
    }
}

/// Checks every configured special token against `tokenizer`; the error is the message only.
fn check_special_tokens(
    tokenizer: &tokenizers::Tokenizer,
    special: &SpecialTokens,
) -> std::result::Result<(), String> {
    let added = tokenizer.get_added_tokens_decoder();
    for (name, expected) in special.all() {
        let token = special_token_text(name);
        match tokenizer.token_to_id(&token) {
            None => {
                return Err(format!(
                    "special token `{token}` is missing (config `special_tokens.{name}` \
                     expects id {expected})"
                ))
            }
            Some(found) if found != expected => {
                return Err(format!(
                    "special token `{token}`: config `special_tokens.{name}` expects id \
                     {expected}, the tokenizer has id {found}"
                ))
            }
            Some(found) => {
                if !added.get(&found).is_some_and(|t| t.special) {
                    return Err(format!(
                        "token `{token}` (id {found}) is not an added special token, so \
                         decoding would not skip it"
                    ));
                }
            }
        }
    }
    if let ModelWrapper::WordLevel(model) = tokenizer.get_model() {
        let found = tokenizer.token_to_id(&model.unk_token);
        if found != Some(special.unk) {
            return Err(format!(
                "the word-level model's unknown token `{}` has id {}, config \
                 `special_tokens.unk` expects {}",
                model.unk_token,
                found.map_or_else(|| "none".to_string(), |id| id.to_string()),
                special.unk
            ));
        }
    }
    Ok(())
}
