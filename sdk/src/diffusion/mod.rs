//! Diffusion for the image side of Transfusion: noise schedules, prediction-type conversions,
//! classifier-free guidance and few-step samplers.
//!
//! A generation loop, with the network evaluated once (or twice, for guidance) per step:
//!
//! ```
//! use rand::SeedableRng;
//! use transfusion_sdk::config::{Prediction, SamplerKind, Schedule};
//! use transfusion_sdk::diffusion::{Sampler, SamplerOptions};
//!
//! # fn main() -> transfusion_sdk::Result<()> {
//! let options = SamplerOptions {
//!     schedule: Schedule::Cosine,
//!     prediction: Prediction::Epsilon,
//!     train_timesteps: 1000,
//!     kind: SamplerKind::DpmPp2M,
//!     steps: 4,
//!     eta: 0.0,
//! };
//! let mut sampler = Sampler::new(&options)?;
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
//! let mut latent = vec![0.0f32; 16];
//! sampler.init_noise(&mut latent, &mut rng);
//! let mut output = vec![0.0f32; 16];
//! for index in 0..sampler.steps() {
//!     let _timestep = sampler.model_time(index)?;
//!     // output = network(latent, timestep) ... (here: "no noise predicted")
//!     sampler.step(index, &mut latent, &output, &mut rng)?;
//! }
//! # Ok(())
//! # }
//! ```

pub mod sampler;
pub mod schedule;

pub use sampler::{Sampler, SamplerOptions};
pub use schedule::{NoiseLevel, NoiseSchedule};

use crate::config::Prediction;
use crate::error::{Error, Result};

/// Splits a network output at `level` into `(x0_hat, eps_hat)` given the noisy input `x_t`.
///
/// * `epsilon`: `ε = out`, `x0 = (x_t − σ·ε)/α` (ill-conditioned where `α → 0`);
/// * `v`: `v = α·ε − σ·x0`, so `x0 = α·x_t − σ·v`, `ε = σ·x_t + α·v` (VP only, `α² + σ² = 1`);
/// * `x0`: `x0 = out`, `ε = (x_t − α·x0)/σ`;
/// * `flow`: velocity `u = ε − x0`, so `x0 = x_t − σ·u`, `ε = x_t + (1 − σ)·u` (flow only).
///
/// Computed in `f64`; a level where the division is singular gives non-finite values, which
/// the samplers report as [`Error::Numerical`].
#[inline]
pub fn split_prediction(prediction: Prediction, level: NoiseLevel, x_t: f64, out: f64) -> (f64, f64) {
    let NoiseLevel { alpha, sigma, .. } = level;
    match prediction {
        Prediction::Epsilon => ((x_t - sigma * out) / alpha, out),
        Prediction::V => (alpha * x_t - sigma * out, sigma * x_t + alpha * out),
        Prediction::X0 => (out, (x_t - alpha * out) / sigma),
        Prediction::Flow => (x_t - sigma * out, x_t + (1.0 - sigma) * out),
    }
}

/// The training target of `prediction` at `level` for a clean sample `x0` and noise `eps`:
/// the exact output of a perfect network (the inverse of [`split_prediction`]).
#[inline]
pub fn prediction_target(prediction: Prediction, level: NoiseLevel, x0: f64, eps: f64) -> f64 {
    match prediction {
        Prediction::Epsilon => eps,
        Prediction::V => level.alpha * eps - level.sigma * x0,
        Prediction::X0 => x0,
        Prediction::Flow => eps - x0,
    }
}

/// Classifier-free guidance, in place: `cond ← uncond + scale·(cond − uncond)`.
///
/// `scale = 1` returns the conditional output unchanged; larger values push the sample
/// towards the condition. Works for every prediction type because they are all affine in the
/// network output. Errors when the lengths differ or `scale` is not finite.
pub fn guide(uncond: &[f32], cond: &mut [f32], scale: f32) -> Result<()> {
    if !scale.is_finite() {
        return Err(Error::InvalidOption {
            name: "guidance".to_string(),
            message: format!("the guidance scale must be finite, got {scale}"),
        });
    }
    if uncond.len() != cond.len() {
        return Err(Error::InvalidOption {
            name: "guidance".to_string(),
            message: format!(
                "unconditional output has {} values but the conditional one has {}",
                uncond.len(),
                cond.len()
            ),
        });
    }
    for (c, &u) in cond.iter_mut().zip(uncond) {
        *c = u + scale * (*c - u);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Schedule;

    #[test]
    fn predictions_round_trip() {
        let vp = NoiseSchedule::new(Schedule::Cosine, 1000).unwrap();
        let flow = NoiseSchedule::new(Schedule::Flow, 1000).unwrap();
        let cases = [
            (Prediction::Epsilon, vp.vp_level(10).unwrap()),
            (Prediction::Epsilon, vp.vp_level(500).unwrap()),
            (Prediction::V, vp.vp_level(10).unwrap()),
            (Prediction::V, vp.vp_level(999).unwrap()),
            (Prediction::X0, vp.vp_level(500).unwrap()),
            (Prediction::X0, vp.vp_level(999).unwrap()),
            (Prediction::Flow, flow.flow_level(1.0)),
            (Prediction::Flow, flow.flow_level(0.3)),
        ];
        for (prediction, level) in cases {
            for (x0, eps) in [(0.7, -1.3), (-2.0, 0.25), (0.0, 1.0)] {
                let x_t = level.alpha * x0 + level.sigma * eps;
                // The network output travels as f32.
                let out = prediction_target(prediction, level, x0, eps) as f32;
                let (x0_hat, eps_hat) = split_prediction(prediction, level, x_t, out as f64);
                assert!((x0_hat - x0).abs() < 1e-5, "{prediction:?} {level:?}: {x0_hat}");
                assert!((eps_hat - eps).abs() < 1e-5, "{prediction:?} {level:?}: {eps_hat}");
            }
        }
    }

    #[test]
    fn v_definition() {
        let level = NoiseLevel {
            alpha: 0.6,
            sigma: 0.8,
            model_time: 0.0,
        };
        assert!((prediction_target(Prediction::V, level, 1.0, 2.0) - (0.6 * 2.0 - 0.8)).abs() < 1e-12);
        assert_eq!(prediction_target(Prediction::Flow, level, 1.0, 2.0), 1.0);
    }

    #[test]
    fn guidance_combines() {
        let uncond = [1.0f32, 2.0, -1.0];
        let mut cond = [2.0f32, 2.0, 1.0];
        guide(&uncond, &mut cond, 3.0).unwrap();
        assert_eq!(cond, [4.0, 2.0, 5.0]);
        let mut same = [2.0f32, 2.0, 1.0];
        guide(&uncond, &mut same, 1.0).unwrap();
        assert_eq!(same, [2.0, 2.0, 1.0]);
        assert!(guide(&uncond, &mut [0.0; 2], 1.0).is_err());
        assert!(guide(&uncond, &mut cond, f32::NAN).is_err());
    }
}
