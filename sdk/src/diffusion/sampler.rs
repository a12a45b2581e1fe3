//! Few-step samplers: DDIM (with η), DPM-Solver++ 2M, Euler and LCM-style multistep
//! consistency sampling, over any [`NoiseSchedule`] and prediction type.
//!
//! The latent always lives in the schedule's own space, `x = alpha·x0 + sigma·ε` (no
//! k-diffusion input scaling), so the network is fed the latent unchanged at every step, and
//! every schedule starts from pure `N(0, 1)` noise ([`Sampler::init_noise_scale`] is 1).
//! Arithmetic is per element in `f64`; the latent and the model output stay `f32`.

use rand::Rng;
use rand_distr::StandardNormal;

use super::schedule::{NoiseLevel, NoiseSchedule};
use super::split_prediction;
use crate::config::{DiffusionConfig, Prediction, SamplerKind, Schedule};
use crate::error::{Error, Result};

/// Everything that defines a sampling trajectory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerOptions {
    /// Noise schedule the model was trained with.
    pub schedule: Schedule,
    /// What the network predicts (`flow` exactly when the schedule is `flow`).
    pub prediction: Prediction,
    /// `T`, training timesteps; model times are in `[0, T]`.
    pub train_timesteps: usize,
    /// Which sampler integrates the trajectory.
    pub kind: SamplerKind,
    /// Number of network evaluations (per guidance branch), 1..=1000 (and ≤ `T` for VP).
    pub steps: usize,
    /// DDIM stochasticity in `[0, 1]`: 0 is deterministic, 1 is DDPM-like; must be 0 for the
    /// other samplers.
    pub eta: f32,
}

impl SamplerOptions {
    /// The recommended sampler of a model configuration (deterministic, `eta = 0`); override
    /// fields with struct-update syntax, e.g. `SamplerOptions { steps: 8, ..from_config(c) }`.
    pub fn from_config(config: &DiffusionConfig) -> Self {
        Self {
            schedule: config.schedule,
            prediction: config.prediction,
            train_timesteps: config.train_timesteps,
            kind: config.sampler,
            steps: config.steps,
            eta: 0.0,
        }
    }
}

/// A sampling trajectory: the noise levels of each step plus the small state the multistep
/// solvers carry (the last predicted `x0`, reused buffers).
///
/// Call [`Sampler::step`] with `index = 0, 1, …, steps − 1` in order; index 0 always starts a
/// new trajectory, so one `Sampler` can generate many images (sequentially).
#[derive(Debug, Clone)]
pub struct Sampler {
    options: SamplerOptions,
    schedule: NoiseSchedule,
    /// `steps + 1` levels; the last is clean.
    levels: Vec<NoiseLevel>,
    /// Predicted `x0` of the last successful step.
    x0: Vec<f32>,
    /// Predicted `x0` of the step before (DPM-Solver++ 2M only).
    prev_x0: Vec<f32>,
    /// Index the next call to `step` must pass (0 also always accepted).
    next_index: usize,
}

fn invalid(name: &str, message: impl Into<String>) -> Error {
    Error::InvalidOption {
        name: name.to_string(),
        message: message.into(),
    }
}

fn check_finite(what: &str, values: &[f32], index: usize) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::Numerical {
            what: what.to_string(),
            message: format!(
                "non-finite value {} at element {i} before diffusion step {index}",
                values.get(i).copied().unwrap_or(f32::NAN)
            ),
        }),
    }
}

impl Sampler {
    /// Validates `options` and precomputes the trajectory's noise levels.
    ///
    /// Errors ([`Error::InvalidOption`]): `steps` outside 1..=1000 (or above `T` for VP),
    /// `train_timesteps` outside 1..=100000, a flow schedule without flow prediction (or the
    /// reverse), `eta` outside `[0, 1]` or non-zero for a sampler other than DDIM.
    pub fn new(options: &SamplerOptions) -> Result<Self> {
        Self::on_grid(options, None)
    }

    /// [`Sampler::new`] evaluating the network at `timesteps` (a configured grid,
    /// [`crate::config::DiffusionConfig::grid`]) instead of the trailing grid when `Some`;
    /// an error ([`Error::InvalidOption`] `timesteps`) unless they are a VP schedule's grid
    /// ([`super::schedule::check_grid`]: `options.steps` of them, strictly decreasing from
    /// `T − 1`).
    pub fn on_grid(options: &SamplerOptions, timesteps: Option<&[usize]>) -> Result<Self> {
        let flow_schedule = options.schedule == Schedule::Flow;
        if flow_schedule != (options.prediction == Prediction::Flow) {
            return Err(invalid(
                "prediction",
                format!(
                    "{:?} prediction does not fit the {:?} schedule (flow prediction goes with \
                     the flow schedule and only with it)",
                    options.prediction, options.schedule
                ),
            ));
        }
        if !(0.0..=1.0).contains(&options.eta) {
            return Err(invalid(
                "eta",
                format!("eta must be in [0, 1], got {}", options.eta),
            ));
        }
        if options.eta != 0.0 && options.kind != SamplerKind::Ddim {
            return Err(invalid(
                "eta",
                format!(
                    "eta applies to the ddim sampler only, not {:?}; use 0",
                    options.kind
                ),
            ));
        }
        let schedule = NoiseSchedule::new(options.schedule, options.train_timesteps)?;
        let levels = schedule.levels_on(options.steps, timesteps)?;
        Ok(Self {
            options: *options,
            schedule,
            levels,
            x0: Vec::new(),
            prev_x0: Vec::new(),
            next_index: 0,
        })
    }

    /// The options this sampler was built from.
    pub fn options(&self) -> &SamplerOptions {
        &self.options
    }

    /// The noise schedule (with its `ᾱ` table for VP schedules).
    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    /// Number of steps, i.e. of network evaluations per guidance branch.
    pub fn steps(&self) -> usize {
        self.levels.len().saturating_sub(1)
    }

    /// The noise level of the latent the network sees at step `index`, or, for
    /// `index = steps`, [`NoiseLevel::CLEAN`]; `None` beyond.
    pub fn level(&self, index: usize) -> Option<NoiseLevel> {
        self.levels.get(index).copied()
    }

    /// The `timestep` input of the network at step `index` (training-timestep units: an integer
    /// `t` for VP schedules, `σ·T` for flow).
    pub fn model_time(&self, index: usize) -> Result<f32> {
        if index >= self.steps() {
            return Err(self.bad_index(index));
        }
        self.level(index)
            .map(|l| l.model_time as f32)
            .ok_or_else(|| self.bad_index(index))
    }

    /// Standard deviation of the initial latent: 1 for every schedule, since both VP (trailing
    /// spacing starts at `t = T − 1`, where `ᾱ ≈ 0`) and flow (`σ = 1`) start from pure noise.
    pub fn init_noise_scale(&self) -> f32 {
        1.0
    }

    /// Fills `x` with the initial latent: `N(0, 1)` noise drawn element by element from `rng`
    /// (use a seeded `ChaCha8Rng` for reproducible images across platforms).
    pub fn init_noise<R: Rng + ?Sized>(&self, x: &mut [f32], rng: &mut R) {
        let scale = f64::from(self.init_noise_scale());
        for v in x.iter_mut() {
            let z: f64 = rng.sample(StandardNormal);
            *v = (scale * z) as f32;
        }
    }

    /// The index the next [`Sampler::step`] expects; `steps()` once the trajectory is done.
    pub fn next_index(&self) -> usize {
        self.next_index
    }

    /// The clean sample predicted by the last successful step (for previews); `None` before
    /// the first step of a trajectory. After the last step it equals the final latent.
    pub fn x0_estimate(&self) -> Option<&[f32]> {
        (self.next_index > 0).then_some(self.x0.as_slice())
    }

    /// Forgets the trajectory (keeps the buffers); the next step must be index 0.
    pub fn reset(&mut self) {
        self.next_index = 0;
    }

    fn bad_index(&self, index: usize) -> Error {
        invalid(
            "index",
            format!(
                "step {index} does not exist: this sampler has {} steps",
                self.steps()
            ),
        )
    }

    /// Advances the latent `x` (at the level of step `index`) to the next level in place, given
    /// the network output for `x` at [`Sampler::model_time`]`(index)` (after guidance).
    ///
    /// `rng` draws the fresh noise of DDIM with `eta > 0` and of LCM; the deterministic
    /// samplers never touch it. After the last step `x` is the clean sample.
    ///
    /// Errors: [`Error::InvalidOption`] (`index` out of order or range, lengths that differ, a
    /// latent whose length changed mid-trajectory) leave `x` and the state unchanged, as does
    /// [`Error::Numerical`] for a NaN/Inf in `x` or `model_output`. A non-finite result (a
    /// singular conversion or an `f32` overflow) is [`Error::Numerical`] too; then `x` is
    /// unspecified and the trajectory is reset.
    pub fn step<R: Rng + ?Sized>(
        &mut self,
        index: usize,
        x: &mut [f32],
        model_output: &[f32],
        rng: &mut R,
    ) -> Result<()> {
        let steps = self.steps();
        if index >= steps {
            return Err(self.bad_index(index));
        }
        if index != 0 && index != self.next_index {
            return Err(invalid(
                "index",
                format!(
                    "steps must run in order: expected step {} (or 0 to restart), got {index}",
                    self.next_index
                ),
            ));
        }
        if model_output.len() != x.len() {
            return Err(invalid(
                "model_output",
                format!(
                    "model output has {} values but the latent has {}",
                    model_output.len(),
                    x.len()
                ),
            ));
        }
        if index != 0 && x.len() != self.x0.len() {
            return Err(invalid(
                "latent",
                format!(
                    "the latent had {} values at the previous step and has {} now",
                    self.x0.len(),
                    x.len()
                ),
            ));
        }
        check_finite("latent", x, index)?;
        check_finite("model output", model_output, index)?;
        let (Some(cur), Some(next)) = (self.level(index), self.level(index + 1)) else {
            return Err(self.bad_index(index));
        };
        let coefficients = self.coefficients(index, cur, next);
        if self.options.kind == SamplerKind::DpmPp2M {
            std::mem::swap(&mut self.x0, &mut self.prev_x0);
        }
        self.x0.resize(x.len(), 0.0);
        let result = apply(
            self.options.prediction,
            cur,
            coefficients,
            x,
            model_output,
            &mut self.x0,
            &self.prev_x0,
            rng,
        );
        match result {
            Ok(()) => {
                self.next_index = index + 1;
                Ok(())
            }
            Err(element) => {
                self.reset();
                Err(Error::Numerical {
                    what: format!("{:?} sampler", self.options.kind),
                    message: format!(
                        "non-finite result at element {element} of diffusion step {index} \
                         (model time {}, {:?} prediction)",
                        cur.model_time, self.options.prediction
                    ),
                })
            }
        }
    }

    /// The affine update of step `index` from level `cur` to level `next`.
    fn coefficients(&self, index: usize, cur: NoiseLevel, next: NoiseLevel) -> Update {
        let (a, s, an, sn) = (cur.alpha, cur.sigma, next.alpha, next.sigma);
        // First-order DPM-Solver++ step (= DDIM η=0), written without log-SNR so that pure
        // noise (a = 0) and the clean target (sn = 0) stay finite.
        let first_order = Update {
            x: sn / s,
            x0: an - a * sn / s,
            ..Update::default()
        };
        if sn == 0.0 {
            // The final step of every sampler lands on the clean level, where all of them
            // reduce to x' = x0_hat (DDIM, Euler and first-order DPM-Solver++ algebraically,
            // LCM by definition); taking it exactly keeps `x0_estimate` equal to the result.
            return Update {
                x0: 1.0,
                ..Update::default()
            };
        }
        match self.options.kind {
            SamplerKind::Ddim => {
                let eta = f64::from(self.options.eta);
                let snr_ratio = (a * sn) / (an * s);
                let noise = eta * sn * (1.0 - snr_ratio * snr_ratio).max(0.0).sqrt();
                Update {
                    x0: an,
                    eps: (sn * sn - noise * noise).max(0.0).sqrt(),
                    noise,
                    ..Update::default()
                }
            }
            SamplerKind::Euler if self.schedule.is_vp() => {
                // k-diffusion: x̃ = x/a = x0 + σ̃·ε with σ̃ = s/a; x̃' = x̃ + (σ̃' − σ̃)·ε; x' = a'·x̃'.
                Update {
                    x: an / a,
                    eps: an * (sn / an - s / a),
                    ..Update::default()
                }
            }
            // Flow ODE: x' = x + (σ' − σ)·u with u = ε − x0.
            SamplerKind::Euler => Update {
                x: 1.0,
                eps: sn - s,
                x0: s - sn,
                ..Update::default()
            },
            SamplerKind::DpmPp2M => {
                let prev = index.checked_sub(1).and_then(|i| self.level(i));
                match prev {
                    // Second order except on the first step, the final one (first order above,
                    // as diffusers' lower_order_final) and after a pure-noise level (λ = −∞).
                    Some(prev) if prev.alpha > 0.0 => {
                        let h = next.lambda() - cur.lambda();
                        let r0 = (cur.lambda() - prev.lambda()) / h;
                        let c = -an * (-h).exp_m1();
                        let d1 = 0.5 / r0;
                        Update {
                            x: sn / s,
                            x0: c * (1.0 + d1),
                            prev_x0: -c * d1,
                            ..Update::default()
                        }
                    }
                    _ => first_order,
                }
            }
            // Consistency: jump to x0, then re-noise to the next level with fresh noise.
            SamplerKind::Lcm => Update {
                x0: an,
                noise: sn,
                ..Update::default()
            },
        }
    }
}

/// `x' = x·x + x0·x0_hat + eps·ε_hat + prev_x0·x0_prev + noise·z`, `z ~ N(0, 1)`.
#[derive(Debug, Clone, Copy, Default)]
struct Update {
    x: f64,
    x0: f64,
    eps: f64,
    prev_x0: f64,
    noise: f64,
}

/// Applies `update` element-wise, storing the predicted `x0`; returns the first element whose
/// prediction or result is not finite.
#[allow(clippy::too_many_arguments)]
fn apply<R: Rng + ?Sized>(
    prediction: Prediction,
    level: NoiseLevel,
    update: Update,
    x: &mut [f32],
    model_output: &[f32],
    x0_out: &mut [f32],
    prev_x0: &[f32],
    rng: &mut R,
) -> std::result::Result<(), usize> {
    let use_prev = update.prev_x0 != 0.0;
    for (i, ((xi, &out), x0i)) in x.iter_mut().zip(model_output).zip(x0_out).enumerate() {
        let xt = f64::from(*xi);
        let (x0, eps) = split_prediction(prediction, level, xt, f64::from(out));
        let mut value = update.x * xt + update.x0 * x0 + update.eps * eps;
        if use_prev {
            value += update.prev_x0 * f64::from(prev_x0.get(i).copied().unwrap_or(f32::NAN));
        }
        if update.noise > 0.0 {
            let z: f64 = rng.sample(StandardNormal);
            value += update.noise * z;
        }
        let (x0, value) = (x0 as f32, value as f32);
        if !(x0.is_finite() && value.is_finite()) {
            return Err(i);
        }
        *x0i = x0;
        *xi = value;
    }
    Ok(())
}
