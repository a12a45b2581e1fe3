//! Tokenizer input: arbitrary bytes as a prompt (lossy UTF-8, as an app reading a socket would
//! pass them), and arbitrary ids to decode.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use transfusion_sdk::config::SpecialTokens;
use transfusion_sdk::text::Tokenizer;

fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/tests/fixtures/tiny");
        let config = std::fs::read_to_string(dir.join("config.json")).expect("fixture config");
        let config: transfusion_sdk::Config =
            serde_json::from_str(&config).expect("fixture config");
        let special: SpecialTokens = config.special_tokens;
        Tokenizer::from_file(&dir.join("tokenizer.json"), special).expect("fixture tokenizer")
    })
}

fuzz_target!(|data: &[u8]| {
    let t = tokenizer();
    let text = String::from_utf8_lossy(data);
    if let Ok(ids) = t.encode(&text) {
        let _ = t.decode(&ids);
    }
    let ids: Vec<u32> = data
        .chunks(2)
        .map(|c| u32::from(c[0]) | u32::from(*c.get(1).unwrap_or(&0)) << 8)
        .collect();
    let _ = t.decode(&ids);
    for &id in ids.iter().take(8) {
        let _ = t.decode_token(id);
    }
});
