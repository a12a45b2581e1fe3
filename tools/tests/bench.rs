//! `transfusion bench` on the tiny fixture: the report has every key with sane values (no timing
//! thresholds: CI machines vary).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use transfusion_sdk::manifest::Precision;
use transfusion_tools::bench::{bench, BenchOptions};
use transfusion_tools::convert::{convert, ConvertOptions};
use transfusion_tools::onnx::Int8Parts;

fn converted(precisions: &[Precision]) -> (tempfile::TempDir, PathBuf) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny");
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let options = ConvertOptions {
        precisions: precisions.to_vec(),
        int8: Int8Parts::default(),
        progress: false,
    };
    convert(&fixture, &bundle, &options).unwrap();
    (dir, bundle)
}

fn quick(precisions: &[Precision]) -> BenchOptions {
    BenchOptions {
        precisions: precisions.to_vec(),
        threads: vec![1],
        steps: vec![1],
        runs: 1,
        warmup: 0,
        prompt_tokens: 8,
        decode_tokens: 4,
        ort: false,
        progress: false,
        device: transfusion_sdk::Device::Cpu,
    }
}

fn positive(row: &Value, key: &str) -> f64 {
    let v = row[key]
        .as_f64()
        .unwrap_or_else(|| panic!("`{key}` is not a number in {row}"));
    assert!(v.is_finite() && v > 0.0, "`{key}` = {v}");
    v
}

#[test]
fn bench_reports_every_key_with_positive_numbers() {
    let (_dir, bundle) = converted(&[Precision::Fp32, Precision::Int8]);
    let report = bench(&bundle, &quick(&[Precision::Fp32, Precision::Int8])).unwrap();
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["model"], "tiny");
    assert!(!json["machine"]["cpu_model"].as_str().unwrap().is_empty());
    assert!(json["machine"]["logical_cpus"].as_u64().unwrap() >= 1);
    let rows = json["results"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "one row per precision × threads × steps");
    for (row, precision) in rows.iter().zip(["fp32", "int8"]) {
        assert_eq!(row["precision"], precision);
        assert_eq!(row["threads"], 1);
        assert_eq!(row["steps"], 1);
        for key in [
            "image_ms_p50",
            "image_ms_p90",
            "backbone_ms_p50",
            "patch_ms_p50",
            "vae_decode_ms_p50",
            "load_ms",
            "text_prefill_tok_s",
            "text_decode_tok_s",
            "nocache_image_ms_p50",
            "nocache_over_cache",
        ] {
            positive(row, key);
        }
        assert!(row["host_ms_p50"].as_f64().unwrap() >= 0.0);
        assert!(positive(row, "image_ms_p90") >= positive(row, "image_ms_p50"));
        assert!(positive(row, "image_ms_p50") >= positive(row, "backbone_ms_p50"));
        assert_eq!(row["text_prefill_tokens"], 9, "[BOS] + 8 words");
        if cfg!(target_os = "linux") {
            positive(row, "peak_rss_mb");
        }
        // Without --ort the onnxruntime keys are present and null.
        for key in ["ort_image_ms_p50", "ort_over_tract", "ort_error"] {
            assert!(row.get(key).is_some_and(Value::is_null), "{key}: {row}");
        }
    }
    let text = report.to_text();
    assert!(
        text.contains("no-cache") && text.contains("ort/tract"),
        "{text}"
    );
}

#[test]
fn bench_rejects_empty_lists_and_zero_runs() {
    let (_dir, bundle) = converted(&[Precision::Fp32]);
    let mut options = quick(&[Precision::Fp32]);
    options.steps.clear();
    assert!(bench(&bundle, &options).is_err());
    let mut options = quick(&[Precision::Fp32]);
    options.runs = 0;
    assert!(bench(&bundle, &options).is_err());
    // A precision the bundle lacks fails at load, naming it.
    let err = bench(&bundle, &quick(&[Precision::Fp16])).unwrap_err();
    assert!(err.to_string().contains("fp16"), "{err}");
}

/// The onnxruntime baseline, when a Python with onnxruntime is at hand (skipped otherwise).
#[test]
fn bench_merges_the_onnxruntime_baseline() {
    let python = transfusion_tools::bench::python();
    let has_ort = Command::new(&python)
        .args(["-c", "import numpy, onnxruntime"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_ort {
        eprintln!("skipped: {python:?} has no onnxruntime");
        return;
    }
    let (_dir, bundle) = converted(&[Precision::Fp32]);
    let mut options = quick(&[Precision::Fp32]);
    options.ort = true;
    let report = bench(&bundle, &options).unwrap();
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["onnxruntime"].is_string(), "{json}");
    let row = &json["results"][0];
    assert!(row["ort_error"].is_null(), "{row}");
    for key in [
        "ort_image_ms_p50",
        "ort_image_ms_p90",
        "ort_backbone_ms_p50",
        "ort_vae_decode_ms_p50",
        "ort_load_ms",
        "ort_over_tract",
    ] {
        positive(row, key);
    }
}
