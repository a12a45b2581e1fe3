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
pub fn split_prediction(
    prediction: Prediction,
    level: NoiseLevel,
    x_t: f64,
    out: f64,
) -> (f64, f64) {
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
                assert!(
                    (x0_hat - x0).abs() < 1e-5,
                    "{prediction:?} {level:?}: {x0_hat}"
                );
                assert!(
                    (eps_hat - eps).abs() < 1e-5,
                    "{prediction:?} {level:?}: {eps_hat}"
                );
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
        assert!(
            (prediction_target(Prediction::V, level, 1.0, 2.0) - (0.6 * 2.0 - 0.8)).abs() < 1e-12
        );
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

/// Sampler tests (kept here so that `sampler.rs` stays short).
#[cfg(test)]
mod sampler_tests {
    use super::schedule::NoiseLevel;
    use super::{split_prediction, Sampler, SamplerOptions};
    use crate::config::{Prediction, SamplerKind, Schedule};
    use crate::diffusion::prediction_target;
    use crate::error::Error;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const VP_PREDICTIONS: [Prediction; 3] = [Prediction::Epsilon, Prediction::V, Prediction::X0];
    const KINDS: [SamplerKind; 4] = [
        SamplerKind::Ddim,
        SamplerKind::DpmPp2M,
        SamplerKind::Euler,
        SamplerKind::Lcm,
    ];

    fn options(
        schedule: Schedule,
        prediction: Prediction,
        kind: SamplerKind,
        steps: usize,
    ) -> SamplerOptions {
        SamplerOptions {
            schedule,
            prediction,
            train_timesteps: 1000,
            kind,
            steps,
            eta: 0.0,
        }
    }

    fn clean() -> Vec<f32> {
        (0..32).map(|i| ((i as f32) * 0.37).sin() * 1.5).collect()
    }

    /// The exact target of a perfect network that knows `x0`.
    fn oracle(sampler: &Sampler, index: usize, x: &[f32], x0: &[f32]) -> Vec<f32> {
        let level = sampler.level(index).unwrap();
        let p = sampler.options().prediction;
        x.iter()
            .zip(x0)
            .map(|(&xt, &c)| {
                let eps = (f64::from(xt) - level.alpha * f64::from(c)) / level.sigma;
                prediction_target(p, level, f64::from(c), eps) as f32
            })
            .collect()
    }

    /// Samples with `model` from seeded noise; returns the final latent.
    fn run(
        sampler: &mut Sampler,
        seed: u64,
        mut model: impl FnMut(&Sampler, usize, &[f32]) -> Vec<f32>,
    ) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut x = vec![0.0; 32];
        sampler.init_noise(&mut x, &mut rng);
        for i in 0..sampler.steps() {
            let out = model(sampler, i, &x);
            sampler.step(i, &mut x, &out, &mut rng).unwrap();
        }
        x
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// Epsilon prediction divides by alpha of the last evaluated level: f32 rounding of the
    /// output (half an ulp of |eps| <= 4: 2.4e-7) is amplified by sigma/alpha there (2e4 at the
    /// cosine schedule's t = 999).
    fn tolerance(sampler: &Sampler) -> f32 {
        let last = sampler.level(sampler.steps() - 1).unwrap();
        let conditioning = match sampler.options().prediction {
            Prediction::Epsilon => last.sigma / last.alpha,
            _ => 0.0,
        };
        (4e-6 + 2.5e-7 * conditioning) as f32
    }

    #[test]
    fn oracle_reaches_x0_in_1_and_4_steps() {
        let x0 = clean();
        let mut combos: Vec<(Schedule, Prediction)> = vec![(Schedule::Flow, Prediction::Flow)];
        for s in [Schedule::Cosine, Schedule::Linear] {
            combos.extend(VP_PREDICTIONS.iter().map(|&p| (s, p)));
        }
        for (schedule, prediction) in combos {
            for kind in KINDS {
                for steps in [1, 4] {
                    let mut sampler =
                        Sampler::new(&options(schedule, prediction, kind, steps)).unwrap();
                    let x = run(&mut sampler, 7, |s, i, x| oracle(s, i, x, &x0));
                    let err = max_diff(&x, &x0);
                    let tol = tolerance(&sampler);
                    assert!(
                        err <= tol,
                        "{schedule:?} {prediction:?} {kind:?} {steps}: {err} > {tol}"
                    );
                    assert_eq!(sampler.x0_estimate().unwrap(), x.as_slice());
                }
            }
        }
    }

    /// An arbitrary (non-oracle) deterministic model.
    fn wobbly(_: &Sampler, i: usize, x: &[f32]) -> Vec<f32> {
        x.iter()
            .enumerate()
            .map(|(j, v)| 0.4 * v + (j as f32 * 0.3 + i as f32).cos())
            .collect()
    }

    #[test]
    fn euler_equals_ddim_on_vp() {
        for schedule in [Schedule::Cosine, Schedule::Linear] {
            for prediction in VP_PREDICTIONS {
                for steps in [1, 2, 4, 10] {
                    let mut euler =
                        Sampler::new(&options(schedule, prediction, SamplerKind::Euler, steps))
                            .unwrap();
                    let mut ddim =
                        Sampler::new(&options(schedule, prediction, SamplerKind::Ddim, steps))
                            .unwrap();
                    let a = run(&mut euler, 3, wobbly);
                    let b = run(&mut ddim, 3, wobbly);
                    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                    assert!(
                        max_diff(&a, &b) <= 1e-5 * scale,
                        "{schedule:?} {prediction:?} {steps}"
                    );
                }
            }
        }
    }

    /// DPM-Solver++ 2M written with log-SNR as in diffusers, on one scalar.
    fn dpm_reference(
        levels: &[NoiseLevel],
        prediction: Prediction,
        x_init: f64,
        model: impl Fn(usize, f64) -> f64,
    ) -> f64 {
        let (mut x, mut prev_x0) = (x_init, 0.0);
        let n = levels.len() - 1;
        for i in 0..n {
            let (cur, next) = (levels[i], levels[i + 1]);
            let (x0, _) = split_prediction(prediction, cur, x, model(i, x));
            x = if i + 1 == n {
                x0
            } else if i == 0 {
                let h = next.lambda() - cur.lambda();
                next.sigma / cur.sigma * x - next.alpha * (-h).exp_m1() * x0
            } else {
                let h = next.lambda() - cur.lambda();
                let r0 = (cur.lambda() - levels[i - 1].lambda()) / h;
                let d1 = (x0 - prev_x0) / r0;
                next.sigma / cur.sigma * x - next.alpha * (-h).exp_m1() * (x0 + 0.5 * d1)
            };
            prev_x0 = x0;
        }
        x
    }

    #[test]
    fn dpmpp_2m_matches_reference() {
        let model = |i: usize, x: f64| 0.5 * x + 0.1 * i as f64 - 0.3;
        for (schedule, prediction) in [
            (Schedule::Cosine, Prediction::Epsilon),
            (Schedule::Linear, Prediction::V),
            (Schedule::Cosine, Prediction::X0),
        ] {
            for steps in [1, 2, 3, 6, 20] {
                let mut sampler =
                    Sampler::new(&options(schedule, prediction, SamplerKind::DpmPp2M, steps))
                        .unwrap();
                let mut rng = ChaCha8Rng::seed_from_u64(0);
                let mut x = [0.8f32];
                for i in 0..steps {
                    let out = [model(i, f64::from(x[0])) as f32];
                    sampler.step(i, &mut x, &out, &mut rng).unwrap();
                }
                let levels = sampler.schedule().levels(steps).unwrap();
                let expected = dpm_reference(&levels, prediction, 0.8, |i, x| {
                    f64::from(model(i, x) as f32)
                });
                let tol = 1e-4 * expected.abs().max(1.0);
                assert!(
                    (f64::from(x[0]) - expected).abs() <= tol,
                    "{schedule:?} {prediction:?} {steps}: {} vs {expected}",
                    x[0]
                );
            }
        }
    }

    #[test]
    fn ddim_eta_is_seeded() {
        let mut o = options(Schedule::Cosine, Prediction::Epsilon, SamplerKind::Ddim, 6);
        o.eta = 0.7;
        let mut sampler = Sampler::new(&o).unwrap();
        let a = run(&mut sampler, 11, wobbly);
        let b = run(&mut sampler, 11, wobbly);
        let c = run(&mut sampler, 12, wobbly);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut deterministic = Sampler::new(&SamplerOptions { eta: 0.0, ..o }).unwrap();
        assert_ne!(a, run(&mut deterministic, 11, wobbly));
        let mut lcm = Sampler::new(&options(
            Schedule::Flow,
            Prediction::Flow,
            SamplerKind::Lcm,
            4,
        ))
        .unwrap();
        assert_eq!(run(&mut lcm, 5, wobbly), run(&mut lcm, 5, wobbly));
    }

    #[test]
    fn rejects_invalid_options() {
        let check = |o: SamplerOptions, name: &str| match Sampler::new(&o) {
            Err(Error::InvalidOption { name: n, message }) => {
                assert_eq!(n, name, "{message}");
                assert!(!message.is_empty());
            }
            other => panic!("{o:?}: {other:?}"),
        };
        let base = options(Schedule::Cosine, Prediction::Epsilon, SamplerKind::Ddim, 4);
        check(SamplerOptions { steps: 0, ..base }, "steps");
        check(
            SamplerOptions {
                steps: 1001,
                ..base
            },
            "steps",
        );
        check(
            SamplerOptions {
                steps: 20,
                train_timesteps: 10,
                ..base
            },
            "steps",
        );
        check(SamplerOptions { eta: 1.5, ..base }, "eta");
        check(
            SamplerOptions {
                eta: f32::NAN,
                ..base
            },
            "eta",
        );
        check(
            SamplerOptions {
                eta: 0.5,
                kind: SamplerKind::Euler,
                ..base
            },
            "eta",
        );
        check(
            SamplerOptions {
                prediction: Prediction::Flow,
                ..base
            },
            "prediction",
        );
        check(
            SamplerOptions {
                schedule: Schedule::Flow,
                ..base
            },
            "prediction",
        );
        check(
            SamplerOptions {
                train_timesteps: 0,
                ..base
            },
            "train_timesteps",
        );
    }

    #[test]
    fn rejects_non_finite_and_misuse() {
        let mut sampler = Sampler::new(&options(
            Schedule::Linear,
            Prediction::V,
            SamplerKind::DpmPp2M,
            4,
        ))
        .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut x = vec![0.5f32; 8];
        let mut out = vec![0.1f32; 8];
        out[3] = f32::NAN;
        let before = x.clone();
        let err = sampler.step(0, &mut x, &out, &mut rng).unwrap_err();
        assert!(matches!(err, Error::Numerical { .. }), "{err}");
        assert!(err.to_string().contains("model output"), "{err}");
        assert_eq!(x, before);
        out[3] = 0.1;
        x[0] = f32::INFINITY;
        assert!(matches!(
            sampler.step(0, &mut x, &out, &mut rng),
            Err(Error::Numerical { .. })
        ));
        x[0] = 0.5;
        sampler.step(0, &mut x, &out, &mut rng).unwrap();
        assert!(sampler.x0_estimate().is_some());
        // Out of order, out of range, wrong lengths.
        assert!(matches!(
            sampler.step(2, &mut x, &out, &mut rng),
            Err(Error::InvalidOption { .. })
        ));
        assert!(sampler.step(4, &mut x, &out, &mut rng).is_err());
        assert!(sampler.step(1, &mut x, &out[..4], &mut rng).is_err());
        assert!(sampler.step(1, &mut x[..4], &out[..4], &mut rng).is_err());
        assert!(sampler.model_time(4).is_err());
        assert_eq!(sampler.model_time(1).unwrap(), 749.0);
        sampler.step(1, &mut x, &out, &mut rng).unwrap();
        assert_eq!(sampler.next_index(), 2);
        sampler.reset();
        assert!(sampler.x0_estimate().is_none());
    }
}
