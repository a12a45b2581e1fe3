//! The tokenizer against the tiny preset's `tokenizer.json` (copied from `transfusion init
//! --preset tiny`): WordLevel, Lowercase normalizer, Whitespace pre-tokenizer, specials at 0..5.

use std::path::{Path, PathBuf};

use transfusion_sdk::config::SpecialTokens;
use transfusion_sdk::text::Tokenizer;
use transfusion_sdk::Error;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer.json")
}

fn special() -> SpecialTokens {
    SpecialTokens {
        pad: 0,
        bos: 1,
        eos: 2,
        boi: 3,
        eoi: 4,
        unk: 5,
    }
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(&fixture(), special()).unwrap()
}

#[test]
fn tokenizer_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
}

#[test]
fn loads_with_vocab_size_and_specials() {
    let tk = tokenizer();
    assert_eq!(tk.vocab_size(), 74);
    assert_eq!(tk.special(), special());
    assert_eq!(tk.path(), fixture());
}

#[test]
fn encodes_known_words_without_specials() {
    let ids = tokenizer()
        .encode("a red circle above a blue square")
        .unwrap();
    assert_eq!(ids, vec![58, 24, 6, 44, 58, 26, 7]);
}

#[test]
fn round_trips_and_skips_special_tokens() {
    let tk = tokenizer();
    let text = "a red circle above a blue square";
    let ids = tk.encode(text).unwrap();
    assert_eq!(tk.decode(&ids).unwrap(), text);
    let s = special();
    let mut framed = vec![s.bos];
    framed.extend(&ids);
    framed.extend([s.boi, s.eoi, s.eos, s.pad]);
    assert_eq!(tk.decode(&framed).unwrap(), text);
    // Punctuation is split off words and decoded as its own word.
    let ids = tk.encode("a star, two hearts.").unwrap();
    assert_eq!(ids, vec![58, 9, 73, 55, 22, 72]);
    assert_eq!(tk.decode(&ids).unwrap(), "a star , two hearts .");
}

#[test]
fn unknown_words_map_to_unk() {
    let tk = tokenizer();
    let ids = tk.encode("a zebra circle").unwrap();
    assert_eq!(ids, vec![58, 5, 6]);
    // UNK is special, so decoding drops it.
    assert_eq!(tk.decode(&ids).unwrap(), "a circle");
}

#[test]
fn uppercase_is_normalised() {
    let tk = tokenizer();
    assert_eq!(
        tk.encode("A RED Circle").unwrap(),
        tk.encode("a red circle").unwrap()
    );
}

#[test]
fn special_token_text_in_a_prompt_is_not_special() {
    let tk = tokenizer();
    let ids = tk.encode("draw [BOI] a star").unwrap();
    assert!(!ids.iter().any(|&id| id == special().boi), "{ids:?}");
    assert_eq!(ids.first(), Some(&68));
    assert_eq!(&ids[ids.len() - 2..], &[58, 9]);
}

#[test]
fn empty_and_blank_prompts_give_no_ids() {
    let tk = tokenizer();
    assert!(tk.encode("").unwrap().is_empty());
    assert!(tk.encode("  \n\t ").unwrap().is_empty());
    assert_eq!(tk.decode(&[]).unwrap(), "");
}

#[test]
fn decode_token_streams_words() {
    let tk = tokenizer();
    assert_eq!(tk.decode_token(24).as_deref(), Some("red"));
    assert_eq!(tk.decode_token(72).as_deref(), Some("."));
    for (_, id) in special().all() {
        assert_eq!(tk.decode_token(id), None, "special id {id}");
    }
    assert_eq!(tk.decode_token(74), None);
    assert_eq!(tk.decode_token(u32::MAX), None);
    // Pieces joined by spaces reproduce `decode`.
    let ids = tk.encode("a small green hexagon.").unwrap();
    let pieces: Vec<String> = ids.iter().filter_map(|&id| tk.decode_token(id)).collect();
    assert_eq!(pieces.join(" "), tk.decode(&ids).unwrap());
}

#[test]
fn decoding_an_id_outside_the_vocabulary_is_an_error() {
    let err = tokenizer().decode(&[58, 74]).unwrap_err();
    assert!(matches!(err, Error::Tokenizer { .. }), "{err}");
    assert!(err.to_string().contains("id 74"), "{err}");
}

#[test]
fn wrong_special_id_in_the_config_is_a_clear_error() {
    let wrong = SpecialTokens {
        eos: 7,
        ..special()
    };
    let err = Tokenizer::from_file(&fixture(), wrong).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::Tokenizer { .. }), "{message}");
    assert!(message.contains("[EOS]"), "{message}");
    assert!(message.contains("expects id 7"), "{message}");
    assert!(message.contains("has id 2"), "{message}");
    assert!(message.contains("tokenizer.json"), "{message}");
}

#[test]
fn missing_and_malformed_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let err = Tokenizer::from_file(&missing, special()).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"model\": 3}").unwrap();
    let err = Tokenizer::from_file(&bad, special()).unwrap_err();
    assert!(matches!(err, Error::Tokenizer { .. }), "{err}");
}

#[test]
fn a_non_special_added_token_is_rejected() {
    let text = std::fs::read_to_string(fixture()).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["added_tokens"][2]["special"] = serde_json::Value::Bool(false);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, serde_json::to_string(&json).unwrap()).unwrap();
    let err = Tokenizer::from_file(&path, special()).unwrap_err();
    assert!(err.to_string().contains("[EOS]"), "{err}");
    assert!(err.to_string().contains("not an added special"), "{err}");
}

#[test]
fn a_word_level_unk_other_than_the_configured_one_is_rejected() {
    let text = std::fs::read_to_string(fixture()).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["model"]["unk_token"] = serde_json::Value::from("[PAD]");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, serde_json::to_string(&json).unwrap()).unwrap();
    let err = Tokenizer::from_file(&path, special()).unwrap_err();
    assert!(
        err.to_string().contains("unknown token `[PAD]` has id 0"),
        "{err}"
    );
}

/// Found by the `bundle` fuzz target: tokenizers 0.22 `expect`s inside its `decoder`
/// deserializer, so a syntax error there panicked (and aborted the app) instead of failing.
#[test]
fn a_syntax_error_inside_the_decoder_is_an_error_naming_the_line() {
    let text = std::fs::read_to_string(fixture()).unwrap();
    assert!(text.contains("\"decoder\": null"));
    let broken = text.replace("\"decoder\": null", "\"decoder\":dance_distilled\": false");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, broken).unwrap();
    let err = Tokenizer::from_file(&path, special()).unwrap_err();
    assert!(matches!(err, Error::Tokenizer { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("tokenizer.json"), "{message}");
    assert!(message.contains("line 58"), "{message}");
}
