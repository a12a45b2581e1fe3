//! Every valid schedule × prediction × sampler combination, driven through the public API by an
//! oracle network (one that returns the exact training target for a known clean sample), must
//! land on that clean sample for any number of steps.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use transfusion_sdk::config::{DiffusionConfig, Prediction, SamplerKind, Schedule};
use transfusion_sdk::diffusion::{guide, prediction_target, Sampler, SamplerOptions};
use transfusion_sdk::Error;

const COMBOS: [(Schedule, Prediction); 7] = [
    (Schedule::Cosine, Prediction::Epsilon),
    (Schedule::Cosine, Prediction::V),
    (Schedule::Cosine, Prediction::X0),
    (Schedule::Linear, Prediction::Epsilon),
    (Schedule::Linear, Prediction::V),
    (Schedule::Linear, Prediction::X0),
    (Schedule::Flow, Prediction::Flow),
];

/// `(kind, eta)`: DDIM both deterministic and stochastic.
const SAMPLERS: [(SamplerKind, f32); 5] = [
    (SamplerKind::Ddim, 0.0),
    (SamplerKind::Ddim, 1.0),
    (SamplerKind::DpmPp2M, 0.0),
    (SamplerKind::Euler, 0.0),
    (SamplerKind::Lcm, 0.0),
];

const STEPS: [usize; 10] = [1, 2, 3, 4, 5, 6, 7, 8, 25, 50];

fn clean_sample() -> Vec<f32> {
    (0..48)
        .map(|i| ((i as f32) * 0.61).sin() * 2.0 - 0.25)
        .collect()
}

/// What a perfect network outputs for latent `x` at step `index`, knowing `x0`.
fn oracle(sampler: &Sampler, index: usize, x: &[f32], x0: &[f32]) -> Vec<f32> {
    let level = sampler.level(index).unwrap();
    let prediction = sampler.options().prediction;
    x.iter()
        .zip(x0)
        .map(|(&xt, &c)| {
            let eps = (f64::from(xt) - level.alpha * f64::from(c)) / level.sigma;
            prediction_target(prediction, level, f64::from(c), eps) as f32
        })
        .collect()
}

#[test]
fn oracle_model_recovers_the_clean_sample() {
    let x0 = clean_sample();
    let mut runs = 0;
    for (schedule, prediction) in COMBOS {
        for (kind, eta) in SAMPLERS {
            for steps in STEPS {
                let options = SamplerOptions {
                    schedule,
                    prediction,
                    train_timesteps: 1000,
                    kind,
                    steps,
                    eta,
                };
                let mut sampler = Sampler::new(&options).unwrap();
                assert_eq!(sampler.steps(), steps);
                assert_eq!(sampler.init_noise_scale(), 1.0);
                let mut rng = ChaCha8Rng::seed_from_u64(steps as u64);
                let mut x = vec![0.0f32; x0.len()];
                sampler.init_noise(&mut x, &mut rng);
                let mut previous_time = f32::INFINITY;
                for index in 0..steps {
                    let time = sampler.model_time(index).unwrap();
                    assert!((0.0..=1000.0).contains(&time) && time < previous_time);
                    previous_time = time;
                    let output = oracle(&sampler, index, &x, &x0);
                    sampler.step(index, &mut x, &output, &mut rng).unwrap();
                    assert_eq!(sampler.x0_estimate().map(<[f32]>::len), Some(x0.len()));
                }
                // Epsilon prediction recovers x0 by dividing by alpha at the last evaluated
                // level: half an f32 ulp of |eps| <= 4 (2.4e-7) grows by sigma/alpha there
                // (2e4 at the cosine schedule's t = 999).
                let last = sampler.level(steps - 1).unwrap();
                let conditioning = match prediction {
                    Prediction::Epsilon => last.sigma / last.alpha,
                    _ => 0.0,
                };
                let tolerance = (4e-6 + 2.5e-7 * conditioning) as f32;
                let error = x
                    .iter()
                    .zip(&x0)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(
                    error <= tolerance,
                    "{schedule:?}/{prediction:?}/{kind:?} eta={eta} steps={steps}: \
                     error {error} > {tolerance}"
                );
                runs += 1;
            }
        }
    }
    assert_eq!(runs, COMBOS.len() * SAMPLERS.len() * STEPS.len());
}

#[test]
fn a_configured_grid_replaces_the_trailing_one() {
    let options = SamplerOptions {
        schedule: Schedule::Cosine,
        prediction: Prediction::V,
        train_timesteps: 1000,
        kind: SamplerKind::Ddim,
        steps: 4,
        eta: 0.0,
    };
    let times = |s: &Sampler| {
        (0..4)
            .map(|i| s.model_time(i).unwrap())
            .collect::<Vec<f32>>()
    };
    let trailing = Sampler::new(&options).unwrap();
    assert_eq!(times(&trailing), vec![999.0, 749.0, 499.0, 249.0]);
    let grid = Sampler::on_grid(&options, Some(&[999, 937, 749, 499])).unwrap();
    assert_eq!(times(&grid), vec![999.0, 937.0, 749.0, 499.0]);
    for bad in [
        &[999, 749, 499][..],
        &[999, 749, 749, 499],
        &[1000, 749, 499, 249],
        &[937, 749, 499, 249],
    ] {
        match Sampler::on_grid(&options, Some(bad)) {
            Err(Error::InvalidOption { name, .. }) => assert_eq!(name, "timesteps", "{bad:?}"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    let flow = SamplerOptions {
        schedule: Schedule::Flow,
        prediction: Prediction::Flow,
        ..options
    };
    assert!(Sampler::on_grid(&flow, Some(&[999, 937, 749, 499])).is_err());
}

#[test]
fn options_from_config_and_invalid_ones() {
    let config = DiffusionConfig {
        schedule: Schedule::Flow,
        prediction: Prediction::Flow,
        train_timesteps: 1000,
        sampler: SamplerKind::Euler,
        steps: 4,
        guidance: 3.0,
        guidance_distilled: false,
        timesteps: None,
    };
    let options = SamplerOptions::from_config(&config);
    let sampler = Sampler::new(&options).unwrap();
    let times: Vec<f32> = (0..4).map(|i| sampler.model_time(i).unwrap()).collect();
    assert_eq!(times, vec![1000.0, 750.0, 500.0, 250.0]);

    for steps in [0, 1001] {
        match Sampler::new(&SamplerOptions { steps, ..options }) {
            Err(Error::InvalidOption { name, .. }) => assert_eq!(name, "steps"),
            other => panic!("steps={steps} accepted: {other:?}"),
        }
    }
    let mismatched = SamplerOptions {
        prediction: Prediction::Epsilon,
        ..options
    };
    assert!(matches!(
        Sampler::new(&mismatched),
        Err(Error::InvalidOption { .. })
    ));
}

#[test]
fn nan_from_the_model_is_an_error_not_a_black_image() {
    let options = SamplerOptions {
        schedule: Schedule::Cosine,
        prediction: Prediction::Epsilon,
        train_timesteps: 1000,
        kind: SamplerKind::DpmPp2M,
        steps: 4,
        eta: 0.0,
    };
    let mut sampler = Sampler::new(&options).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut x = vec![0.0f32; 8];
    sampler.init_noise(&mut x, &mut rng);
    let uncond = vec![0.0f32; 8];
    let mut cond = vec![0.0f32; 8];
    cond[5] = f32::NAN;
    guide(&uncond, &mut cond, 4.0).unwrap();
    let err = sampler.step(0, &mut x, &cond, &mut rng).unwrap_err();
    assert!(matches!(err, Error::Numerical { .. }), "{err}");
}
