//! Shared by the SDK's integration tests: a bundle converted from the committed tiny fixture.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use transfusion_sdk::{LoadOptions, Model};

/// The committed tiny checkpoint (`tools/tests/fixtures/tiny`).
pub fn fixture_checkpoint() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/tests/fixtures/tiny")
}

/// A bundle (FP32, FP16, INT8) converted once per test binary from the tiny fixture.
pub fn tiny_bundle() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle");
        let options = transfusion_tools::convert::ConvertOptions::all_precisions(false);
        transfusion_tools::convert::convert(&fixture_checkpoint(), &bundle, &options).unwrap();
        (dir, bundle)
    });
    path
}

/// The tiny model at FP32, loaded once per test binary.
pub fn tiny_model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let options = LoadOptions {
            precision: transfusion_sdk::PartPrecisions::all(
                transfusion_sdk::PrecisionChoice::Exact(transfusion_sdk::Precision::Fp32),
            ),
            ..Default::default()
        };
        Model::load(tiny_bundle(), &options).unwrap()
    })
}

/// Copies the tiny bundle into a fresh directory the test may break.
pub fn bundle_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("bundle");
    copy_dir(tiny_bundle(), &dst);
    (dir, dst)
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), to).unwrap();
        }
    }
}
