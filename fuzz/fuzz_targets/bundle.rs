//! Bundle loading: a copy of the tiny fixture's bundle (FP32) in which the input replaces one
//! file, chosen by the first byte: the manifest, the tokenizer, or one of the seven ONNX graphs.
//! `Model::load` must return a model or an error. Seeds: the bundle's own files, each prefixed
//! with its selector byte (fuzz/seed.sh).
//!
//! The load is `Model::load_with`: every step of `Model::load` runs on every input, but the graph
//! files the input did not touch come from graphs read once at start-up (reading and optimising
//! seven graphs cost ~50 ms a run; tract's import of the changed file still runs each time).
#![no_main]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use transfusion_sdk::engine::Graph;
use transfusion_sdk::{LoadOptions, Model, PartPrecisions, Precision, PrecisionChoice};

struct Bundle {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    files: Vec<(PathBuf, Vec<u8>)>,
    /// The bundle's graphs as read before fuzzing, by file path.
    graphs: HashMap<PathBuf, Graph>,
}

/// `manifest.json`, `tokenizer.json`, then `fp32/<graph>.onnx` for the seven graphs.
pub fn targets() -> Vec<String> {
    let mut t = vec!["manifest.json".to_string(), "tokenizer.json".to_string()];
    t.extend(
        transfusion_sdk::GraphId::ALL
            .iter()
            .map(|g| format!("fp32/{g}.onnx")),
    );
    t
}

fn bundle() -> &'static Bundle {
    static B: OnceLock<Bundle> = OnceLock::new();
    B.get_or_init(|| {
        // libfuzzer-sys's hook aborts on every panic, even one the SDK catches and turns into
        // an error (tract's importer panics on some malformed graphs; `Graph::load` catches
        // them). Print instead: a panic that escapes `Model::load` still aborts the run, as
        // fuzz_target! catches it and aborts.
        std::panic::set_hook(Box::new(|info| eprintln!("{info}")));
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("bundle");
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/tests/fixtures/tiny");
        let options = transfusion_tools::convert::ConvertOptions {
            precisions: vec![transfusion_tools::convert::BundlePrecision::Fp32],
            int8: Default::default(),
            progress: false,
        };
        transfusion_tools::convert::convert(&fixture, &dir, &options).expect("tiny bundle");
        let files = targets()
            .into_iter()
            .map(|rel| {
                let path = dir.join(&rel);
                let bytes = std::fs::read(&path).expect("bundle file");
                (path, bytes)
            })
            .collect();
        let graphs = transfusion_sdk::GraphId::ALL
            .iter()
            .map(|g| {
                let path = dir.join(format!("fp32/{g}.onnx"));
                let graph = Graph::load(g.name(), &path).expect("fixture graph");
                (path, graph)
            })
            .collect();
        Bundle {
            _tmp: tmp,
            dir,
            files,
            graphs,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let b = bundle();
    let (path, original) = &b.files[usize::from(selector) % b.files.len()];
    if std::fs::write(path, bytes).is_err() {
        return;
    }
    let options = LoadOptions {
        precision: PartPrecisions::all(PrecisionChoice::Exact(Precision::Fp32)),
        ..Default::default()
    };
    let _ = Model::load_with(
        &b.dir,
        &options,
        &mut |name, file, _| match b.graphs.get(file) {
            Some(graph) if file != path => Ok(graph.clone()),
            _ => Graph::load(name.name(), file),
        },
    );
    std::fs::write(path, original).expect("restore the bundle file");
});
