//! End to end on the committed tiny fixture (checkpoint + PyTorch reference, no torch needed):
//! convert to FP32/FP16/INT8, verify every graph against PyTorch, check integer kernels, the
//! KV cache and the bidirectional image block in tract, and atomicity on bad input.

use std::path::{Path, PathBuf};

use tract_onnx::prelude::*;
use transfusion_sdk::engine::{tensor_to_f32, Graph};
use transfusion_sdk::manifest::{Manifest, Precision};
use transfusion_sdk::GraphId;
use transfusion_tools::convert::{convert, ConvertOptions};
use transfusion_tools::error::Error;
use transfusion_tools::onnx::{build_graph, Int8Parts};
use transfusion_tools::verify::verify;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny")
}

fn options() -> ConvertOptions {
    ConvertOptions {
        precisions: Precision::ALL.to_vec(),
        int8: Int8Parts::default(),
        progress: false,
    }
}

fn converted() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    convert(&fixture(), &bundle, &options()).unwrap();
    (dir, bundle)
}

#[test]
fn every_graph_of_every_precision_matches_pytorch() {
    let (_dir, bundle) = converted();
    let results = verify(
        &bundle,
        &fixture().join("reference.safetensors"),
        None,
        None,
    )
    .unwrap();
    assert_every_output_passes(&results);
    for p in Precision::ALL {
        assert!(results.iter().any(|r| r.precision == p));
    }
}

/// The format-2 fixture (`tests/fixtures/tiny-v2`: `transfusion init --preset tiny --seed 0`,
/// both patch conditionings on, with its PyTorch reference): every graph and precision match.
#[test]
fn format_2_patch_conditioning_matches_pytorch() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-v2");
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    convert(&fixture, &bundle, &options()).unwrap();
    let m = Manifest::load(&bundle).unwrap();
    assert!(m.config.patch.has_position_embedding() && m.config.patch.has_timestep_tokens());
    let results = verify(&bundle, &fixture.join("reference.safetensors"), None, None).unwrap();
    assert_every_output_passes(&results);
}

/// At least 3 precisions × 9 cases (the backbone ones have hidden + 2 tensors per layer), each
/// within its tolerance.
fn assert_every_output_passes(results: &[transfusion_tools::verify::Comparison]) {
    assert!(results.len() >= 3 * 9, "{} comparisons", results.len());
    for r in results {
        assert!(
            r.pass,
            "{} {}/{}: rel {} > {}",
            r.precision, r.case, r.tensor, r.rel, r.tolerance
        );
    }
}

/// A format-2 config over format-1 weights: the error names each missing tensor.
#[test]
fn format_2_config_without_its_tensors_names_them() {
    let v2 = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-v2");
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    std::fs::create_dir(&ckpt).unwrap();
    std::fs::copy(v2.join("config.json"), ckpt.join("config.json")).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture().join(f), ckpt.join(f)).unwrap();
    }
    let message = convert(&ckpt, &dir.path().join("bundle"), &options())
        .unwrap_err()
        .to_string();
    for name in ["patch.pos_embed", "patch.time_proj.weight"] {
        assert!(message.contains(name), "{message}");
    }
    assert!(!dir.path().join("bundle").exists());
}

#[test]
fn manifest_describes_the_bundle() {
    let (_dir, bundle) = converted();
    let m = Manifest::load(&bundle).unwrap();
    assert_eq!(m.geometry.num_patches, 16);
    assert_eq!(m.precisions, Precision::ALL.to_vec());
    let backbone = m.graph(GraphId::Backbone).unwrap();
    let mask = backbone
        .inputs
        .iter()
        .find(|t| t.name == "attention_mask")
        .unwrap();
    assert_eq!(mask.shape, vec!["S".to_string(), "P+S".to_string()]);
    for name in [
        GraphId::Backbone,
        GraphId::LmHead,
        GraphId::PatchIn,
        GraphId::PatchOut,
        GraphId::VaeEncoder,
        GraphId::VaeDecoder,
    ] {
        assert!(
            m.graph(name).unwrap().files[&Precision::Int8].int8_ops,
            "{name}"
        );
    }
    // Embeddings stay float: the INT8 entry reuses the FP32 file.
    let embed = &m.graph(GraphId::TextEmbed).unwrap().files;
    assert_eq!(embed[&Precision::Int8].path, embed[&Precision::Fp32].path);
    assert!(bundle.join("tokenizer.json").is_file());
    assert_eq!(m.preview.weight.len(), 3);
}

#[test]
fn int8_graphs_run_integer_kernels() {
    let (_dir, bundle) = converted();
    let m = Manifest::load(&bundle).unwrap();
    for name in [
        GraphId::Backbone,
        GraphId::LmHead,
        GraphId::PatchIn,
        GraphId::PatchOut,
    ] {
        let files = &m.graph(name).unwrap().files;
        let int8 = &files[&Precision::Int8];
        let graph = Graph::load(name.name(), &bundle.join(&int8.path)).unwrap();
        let k = graph.kernel_summary();
        assert!(k.integer_matmuls > 0, "{name}: {k:?}");
        assert!(
            k.kernels.iter().any(|n| n.contains("i32")),
            "{name}: no i32 kernel in {k:?}"
        );
        // Sizes: the tiny model's float norms and per-channel scales weigh too much to say
        // anything; the 30 % bound is checked on shapes64 below.
    }
}

/// onnxruntime's `session.x64quantprecision` rewrite (exact INT8 on x86 without VNNI, see
/// docs/bundle.md) reads the weights' zero point, so every MatMulInteger must carry it.
#[test]
fn int8_matmuls_name_their_weight_zero_point() {
    use prost::Message;
    let ckpt = transfusion_tools::init::init_checkpoint("tiny", 0).unwrap();
    for name in [GraphId::Backbone, GraphId::LmHead] {
        let built = build_graph(name, &ckpt, Precision::Int8, Int8Parts::default()).unwrap();
        let model = tract_onnx::pb::ModelProto::decode(built.built.bytes.as_slice()).unwrap();
        let graph = model.graph.unwrap();
        let matmuls: Vec<_> = graph
            .node
            .iter()
            .filter(|n| n.op_type == "MatMulInteger")
            .collect();
        assert!(!matmuls.is_empty(), "{name}: no MatMulInteger");
        for node in matmuls {
            let zero = node.input.get(3).filter(|z| !z.is_empty());
            let zero = zero.unwrap_or_else(|| panic!("{name}: {} has no b_zero_point", node.name));
            let init = graph.initializer.iter().find(|t| &t.name == zero).unwrap();
            assert_eq!(init.raw_data, [0u8], "{name}: {zero}");
        }
    }
}

#[test]
fn shapes64_int8_files_are_at_most_30_percent_of_fp32() {
    let ckpt = transfusion_tools::init::init_checkpoint("shapes64", 0).unwrap();
    for name in [
        GraphId::Backbone,
        GraphId::LmHead,
        GraphId::PatchIn,
        GraphId::PatchOut,
    ] {
        let size = |p| {
            build_graph(name, &ckpt, p, Int8Parts::default())
                .unwrap()
                .built
                .bytes
                .len() as f64
        };
        let ratio = size(Precision::Int8) / size(Precision::Fp32);
        assert!(ratio <= 0.30, "{name}: INT8 is {ratio:.3} of FP32");
    }
}

/// Reads a reference tensor of `case/name` as a tract tensor.
fn reference_tensor(case: &str, name: &str) -> Tensor {
    let bytes = std::fs::read(fixture().join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor(&format!("{case}/{name}")).unwrap();
    let shape = view.shape().to_vec();
    match view.dtype() {
        safetensors::Dtype::F32 => {
            let v: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            tract_ndarray::ArrayD::from_shape_vec(shape, v)
                .unwrap()
                .into_tensor()
        }
        safetensors::Dtype::I64 => {
            let v: Vec<i64> = view
                .data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect();
            tract_ndarray::ArrayD::from_shape_vec(shape, v)
                .unwrap()
                .into_tensor()
        }
        other => panic!("{other:?}"),
    }
}

/// Empty past keys and values for every layer (`P = 0`).
fn empty_past(m: &Manifest) -> Vec<TValue> {
    let g = &m.geometry;
    (0..2 * g.n_layers)
        .map(|_| {
            Tensor::zero::<f32>(&[1, g.n_heads, 0, g.head_dim])
                .unwrap()
                .into()
        })
        .collect()
}

fn run_backbone(graph: &Graph, m: &Manifest, embeddings: Tensor, case: &str) -> Vec<f32> {
    let mut inputs: TVec<TValue> = tvec![
        embeddings.into(),
        reference_tensor(case, "positions").into(),
        reference_tensor(case, "attention_mask").into(),
    ];
    inputs.extend(empty_past(m));
    let out = graph.run(inputs).unwrap();
    tensor_to_f32(&out[0], "hidden").unwrap().1
}

#[test]
fn kv_cache_and_bidirectional_image_block_in_tract() {
    let (_dir, bundle) = converted();
    let m = Manifest::load(&bundle).unwrap();
    let file = &m.graph(GraphId::Backbone).unwrap().files[&Precision::Fp32];
    let graph = Graph::load("backbone", &bundle.join(&file.path)).unwrap();
    let d = m.geometry.dim;
    let n = m.geometry.num_patches;

    // Prefix then block with the cache == the whole sequence at once.
    let mut prefill_inputs: TVec<TValue> = tvec![
        reference_tensor("backbone.prefill", "embeddings").into(),
        reference_tensor("backbone.prefill", "positions").into(),
        reference_tensor("backbone.prefill", "attention_mask").into(),
    ];
    prefill_inputs.extend(empty_past(&m));
    let prefill = graph.run(prefill_inputs).unwrap();
    let mut block_inputs: TVec<TValue> = tvec![
        reference_tensor("backbone.block", "embeddings").into(),
        reference_tensor("backbone.block", "positions").into(),
        reference_tensor("backbone.block", "attention_mask").into(),
    ];
    block_inputs.extend(prefill.iter().skip(1).cloned());
    let block = graph.run(block_inputs).unwrap();
    let (_, block_hidden) = tensor_to_f32(&block[0], "hidden").unwrap();
    let full = run_backbone(
        &graph,
        &m,
        reference_tensor("backbone.full", "embeddings"),
        "backbone.full",
    );
    let prefix = full.len() / d - (n + 1);
    for (i, (a, b)) in block_hidden.iter().zip(&full[prefix * d..]).enumerate() {
        assert!(
            (a - b).abs() < 1e-4,
            "position {}: {a} vs {b}",
            prefix + i / d
        );
    }

    // Perturb the last image patch: the first image position sees it (bidirectional block),
    // the text before BOI never does.
    let mut emb = reference_tensor("backbone.full", "embeddings");
    {
        let mut view = emb.to_plain_array_view_mut::<f32>().unwrap();
        let last_patch = prefix + n - 1;
        for k in 0..d {
            view[[0, last_patch, k]] += 1.0;
        }
    }
    let changed = run_backbone(&graph, &m, emb, "backbone.full");
    assert_eq!(
        &changed[..prefix * d],
        &full[..prefix * d],
        "text before BOI changed"
    );
    let first_image = &changed[prefix * d..(prefix + 1) * d];
    let before = &full[prefix * d..(prefix + 1) * d];
    let diff: f32 = first_image
        .iter()
        .zip(before)
        .map(|(a, b)| (a - b).abs())
        .sum();
    assert!(
        diff > 1e-3,
        "first image position did not see the last patch"
    );
}

#[test]
fn existing_output_is_refused_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bundle");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let err = convert(&fixture(), &out, &options()).unwrap_err();
    assert!(matches!(err, Error::OutputExists { .. }), "{err}");
    assert!(err.to_string().contains("bundle"), "{err}");
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "mine"
    );
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
}

#[test]
fn bad_checkpoint_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    std::fs::create_dir(&ckpt).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture().join(f), ckpt.join(f)).unwrap();
    }
    std::fs::write(
        ckpt.join("model.safetensors"),
        b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json",
    )
    .unwrap();
    let out = dir.path().join("bundle");
    let err = convert(&ckpt, &out, &options()).unwrap_err();
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    assert!(!out.exists());
    // No staging directory left behind either.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}
