//! `transfusion init`: a randomly initialised checkpoint of a preset, reproducible from a seed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::checkpoint::{ensure_output_free, Checkpoint, Tensor};
use crate::error::{Error, Result};
use crate::presets::preset;
use crate::tensors::{init_rule, tensor_specs, Init};
use crate::vocab::tokenizer_json;

/// A checkpoint of preset `name` with weights drawn by [`init_rule`] from one
/// `ChaCha8Rng::seed_from_u64(seed)` stream, tensors taken in [`tensor_specs`] order. ChaCha is
/// specified bit-for-bit and `rand_distr`'s ziggurat Normal is plain IEEE arithmetic except for
/// rare tail/wedge samples that call `exp`/`ln`, so the same seed gives the same weights on
/// every platform (up to a libm difference in those rare samples).
pub fn init_checkpoint(name: &str, seed: u64) -> Result<Checkpoint> {
    let config = preset(name)?;
    let tokenizer = tokenizer_json(&config)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut tensors = BTreeMap::new();
    for spec in tensor_specs(&config) {
        let n = spec.numel();
        let data = match init_rule(&spec, config.backbone.n_layers) {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Normal { std } => {
                let normal = Normal::new(0.0f32, std).map_err(|e| {
                    Error::Invalid(format!("init of `{}`: std {std}: {e}", spec.name))
                })?;
                (0..n).map(|_| normal.sample(&mut rng)).collect()
            }
        };
        tensors.insert(
            spec.name,
            Tensor {
                shape: spec.shape,
                data,
            },
        );
    }
    Ok(Checkpoint {
        dir: PathBuf::new(),
        config,
        tensors,
        tokenizer,
    })
}

/// Builds the checkpoint of preset `name` with `seed` and saves it to `out_dir` (which must not
/// exist or be empty; checked before the weights are generated).
pub fn run(name: &str, seed: u64, out_dir: &Path) -> Result<()> {
    ensure_output_free(out_dir)?;
    let checkpoint = init_checkpoint(name, seed)?;
    checkpoint.save(out_dir)?;
    log::info!(
        "wrote {} ({} tensors, preset {name}, seed {seed})",
        out_dir.display(),
        checkpoint.tensors.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_init_follows_the_rules() {
        let c = init_checkpoint("tiny", 7).unwrap();
        c.validate(Path::new("model.safetensors")).unwrap();
        assert!(c
            .get("backbone.norm.weight")
            .unwrap()
            .data
            .iter()
            .all(|&x| x == 1.0));
        assert!(c
            .get("timestep.linear1.bias")
            .unwrap()
            .data
            .iter()
            .all(|&x| x == 0.0));
        let embed = &c.get("text.embed.weight").unwrap().data;
        let mean = embed.iter().sum::<f32>() / embed.len() as f32;
        let var = embed.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / embed.len() as f32;
        assert!(
            mean.abs() < 0.005 && (var.sqrt() - 0.02).abs() < 0.003,
            "{mean} {var}"
        );
        assert_eq!(init_checkpoint("tiny", 7).unwrap(), c);
        assert!(matches!(
            init_checkpoint("nope", 7),
            Err(Error::UnknownPreset { .. })
        ));
    }
}
