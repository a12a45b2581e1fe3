//! Checkpoint loading (what `transfusion convert` reads first): the input is split into
//! `config.json` and `model.safetensors` (safetensors header + data) at the first `\0\0\0\0`
//! marker; the fixture's `tokenizer.json` completes the directory. Seeds: the tiny fixture's
//! files joined the same way (fuzz/seed.sh).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use transfusion_tools::checkpoint::Checkpoint;

const MARK: &[u8] = b"\0\0\0\0";

fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tools/tests/fixtures/tiny/tokenizer.json");
        std::fs::copy(fixture, dir.path().join("tokenizer.json")).expect("fixture tokenizer");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let (config, weights) = match data.windows(MARK.len()).position(|w| w == MARK) {
        Some(i) => (&data[..i], &data[i + MARK.len()..]),
        None => (data, &[][..]),
    };
    let dir = dir().path();
    if std::fs::write(dir.join("config.json"), config).is_err()
        || std::fs::write(dir.join("model.safetensors"), weights).is_err()
    {
        return;
    }
    if let Ok(ckpt) = Checkpoint::load(dir) {
        let _ = ckpt.validate(&dir.join("model.safetensors"));
    }
});
