//! Manifest parsing and checking: arbitrary bytes as `manifest.json` (seeds: real manifests).
#![no_main]

use libfuzzer_sys::fuzz_target;
use transfusion_sdk::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(manifest) = Manifest::from_json(&text, std::path::Path::new("fuzz/manifest.json")) {
        // A manifest that passes the checks must answer its own queries without panicking.
        for id in transfusion_sdk::GraphId::ALL {
            let _ = manifest.graph(id);
        }
        let _ = manifest.config.validate();
    }
});
