//! Noise schedules of the forward process and the timestep spacing of few-step sampling.
//!
//! Every schedule is expressed through a [`NoiseLevel`]: `x_t = alpha·x0 + sigma·ε`.
//!
//! * `cosine` and `linear` are variance-preserving (VP) schedules over the discrete training
//!   timesteps `t ∈ {0..T-1}` with `alpha = sqrt(ᾱ_t)` and `sigma = sqrt(1 − ᾱ_t)`; the table
//!   `ᾱ` is computed once, in `f64`, exactly like diffusers' `squaredcos_cap_v2` and `linear`
//!   beta schedules.
//! * `flow` is rectified flow: `alpha = 1 − σ`, `sigma = σ` with `σ ∈ [0, 1]`; the network
//!   receives `σ·T`.
//!
//! Few-step sampling uses the "trailing" spacing of diffusers so that the first step starts at
//! the noisiest training timestep (pure noise), which matters most when there are few steps.

use crate::config::Schedule;
use crate::error::{Error, Result};

/// Largest accepted `train_timesteps` (bounds the `ᾱ` table to 800 KB).
pub const MAX_TRAIN_TIMESTEPS: usize = 100_000;

/// Largest accepted number of sampling steps.
pub const MAX_STEPS: usize = 1000;

/// Offset `s` of the cosine schedule (Nichol & Dhariwal 2021).
const COSINE_OFFSET: f64 = 0.008;

/// Betas of the cosine schedule are clipped to this value to avoid a singular last step.
const COSINE_MAX_BETA: f64 = 0.999;

/// First and last beta of the linear (DDPM) schedule.
const LINEAR_BETA_START: f64 = 1e-4;
const LINEAR_BETA_END: f64 = 0.02;

/// One point of the forward process: `x_t = alpha·x0 + sigma·ε`, plus what the network is told.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NoiseLevel {
    /// Coefficient of the clean sample `x0` in `x_t` (`sqrt(ᾱ)` for VP, `1 − σ` for flow).
    pub alpha: f64,
    /// Coefficient of the noise `ε` in `x_t` (`sqrt(1 − ᾱ)` for VP, `σ` for flow).
    pub sigma: f64,
    /// The `timestep` fed to the network at this level, in training-timestep units `[0, T]`.
    pub model_time: f64,
}

impl NoiseLevel {
    /// The clean end of every trajectory: `x = x0`. Never fed to the network.
    pub const CLEAN: NoiseLevel = NoiseLevel {
        alpha: 1.0,
        sigma: 0.0,
        model_time: 0.0,
    };

    /// Half log signal-to-noise ratio `λ = ln(alpha / sigma)` (DPM-Solver's time variable);
    /// `−∞` at pure noise, `+∞` at the clean level.
    pub fn lambda(&self) -> f64 {
        self.alpha.ln() - self.sigma.ln()
    }
}

/// A noise schedule with its precomputed `ᾱ` table (empty for `flow`).
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    kind: Schedule,
    train_timesteps: usize,
    alpha_bar: Vec<f64>,
}

fn invalid(name: &str, message: impl Into<String>) -> Error {
    Error::InvalidOption {
        name: name.to_string(),
        message: message.into(),
    }
}

/// `f(u) = cos²(((u + s)/(1 + s))·π/2)` of the cosine schedule, `u = t/T ∈ [0, 1]`.
fn cosine_f(u: f64) -> f64 {
    let c = ((u + COSINE_OFFSET) / (1.0 + COSINE_OFFSET) * std::f64::consts::FRAC_PI_2).cos();
    c * c
}

impl NoiseSchedule {
    /// Builds a schedule over `train_timesteps` (`T`, 1..=[`MAX_TRAIN_TIMESTEPS`]); VP schedules
    /// precompute their `ᾱ` table here, once.
    pub fn new(kind: Schedule, train_timesteps: usize) -> Result<Self> {
        if train_timesteps == 0 || train_timesteps > MAX_TRAIN_TIMESTEPS {
            return Err(invalid(
                "train_timesteps",
                format!("must be in 1..={MAX_TRAIN_TIMESTEPS}, got {train_timesteps}"),
            ));
        }
        let t = train_timesteps as f64;
        let betas: Box<dyn Iterator<Item = f64>> = match kind {
            Schedule::Flow => Box::new(std::iter::empty()),
            Schedule::Cosine => Box::new((0..train_timesteps).map(move |i| {
                let beta = 1.0 - cosine_f((i + 1) as f64 / t) / cosine_f(i as f64 / t);
                beta.min(COSINE_MAX_BETA)
            })),
            Schedule::Linear => {
                // `linspace(start, end, T)`; a single step is `start`, like numpy/torch.
                let span = (train_timesteps - 1).max(1) as f64;
                Box::new((0..train_timesteps).map(move |i| {
                    LINEAR_BETA_START + (LINEAR_BETA_END - LINEAR_BETA_START) * i as f64 / span
                }))
            }
        };
        let alpha_bar = betas
            .scan(1.0f64, |product, beta| {
                *product *= 1.0 - beta;
                Some(*product)
            })
            .collect();
        Ok(Self {
            kind,
            train_timesteps,
            alpha_bar,
        })
    }

    /// Which schedule this is.
    pub fn kind(&self) -> Schedule {
        self.kind
    }

    /// `T`, the number of training timesteps.
    pub fn train_timesteps(&self) -> usize {
        self.train_timesteps
    }

    /// Whether this is a variance-preserving (discrete-timestep) schedule.
    pub fn is_vp(&self) -> bool {
        self.kind != Schedule::Flow
    }

    /// The whole `ᾱ` table, indexed by training timestep; empty for `flow`.
    pub fn alpha_bars(&self) -> &[f64] {
        &self.alpha_bar
    }

    /// `ᾱ_t` (cumulative product of `1 − β`) of a VP schedule; `None` for `flow` or `t ≥ T`.
    pub fn alpha_bar(&self, t: usize) -> Option<f64> {
        self.alpha_bar.get(t).copied()
    }

    /// `sqrt(ᾱ_t)`, the signal coefficient at training timestep `t` (VP only).
    pub fn alpha(&self, t: usize) -> Option<f64> {
        self.alpha_bar(t).map(f64::sqrt)
    }

    /// `sqrt(1 − ᾱ_t)`, the noise coefficient at training timestep `t` (VP only).
    pub fn sigma(&self, t: usize) -> Option<f64> {
        self.alpha_bar(t).map(|a| (1.0 - a).sqrt())
    }

    /// The noise level at training timestep `t` of a VP schedule (`None` for `flow` or `t ≥ T`).
    pub fn vp_level(&self, t: usize) -> Option<NoiseLevel> {
        self.alpha_bar(t).map(|a| NoiseLevel {
            alpha: a.sqrt(),
            sigma: (1.0 - a).sqrt(),
            model_time: t as f64,
        })
    }

    /// The noise level at flow time `σ ∈ [0, 1]` (model time `σ·T`); valid for any schedule
    /// kind but only meaningful for `flow`.
    pub fn flow_level(&self, sigma: f64) -> NoiseLevel {
        NoiseLevel {
            alpha: 1.0 - sigma,
            sigma,
            model_time: sigma * self.train_timesteps as f64,
        }
    }

    /// Checks a number of sampling steps: 1..=[`MAX_STEPS`], and at most `T` for VP schedules
    /// (trailing spacing needs distinct timesteps).
    pub fn check_steps(&self, steps: usize) -> Result<()> {
        if steps == 0 || steps > MAX_STEPS {
            return Err(invalid(
                "steps",
                format!("the number of sampling steps must be in 1..={MAX_STEPS}, got {steps}"),
            ));
        }
        if self.is_vp() && steps > self.train_timesteps {
            return Err(invalid(
                "steps",
                format!(
                    "{steps} sampling steps exceed the {} training timesteps of the {:?} schedule",
                    self.train_timesteps, self.kind
                ),
            ));
        }
        Ok(())
    }

    /// The `steps + 1` noise levels of a sampling trajectory: levels `0..steps` are where the
    /// network is evaluated (trailing spacing, noisiest first) and the last one is
    /// [`NoiseLevel::CLEAN`], the target of the final step.
    pub fn levels(&self, steps: usize) -> Result<Vec<NoiseLevel>> {
        self.levels_on(steps, None)
    }

    /// [`Self::levels`] at the given `timesteps` (a VP schedule's grid, [`check_grid`])
    /// instead of the trailing grid when `Some`.
    pub fn levels_on(&self, steps: usize, timesteps: Option<&[usize]>) -> Result<Vec<NoiseLevel>> {
        self.check_steps(steps)?;
        let mut levels = Vec::with_capacity(steps + 1);
        if let Some(ts) = timesteps {
            let checked = if self.is_vp() {
                check_grid(ts, steps, self.train_timesteps)
            } else {
                Err(format!("no grid (the {:?} schedule has none)", self.kind))
            };
            checked.map_err(|expected| invalid("timesteps", format!("{expected}, got {ts:?}")))?;
        }
        if self.is_vp() {
            let ts = match timesteps {
                Some(ts) => ts.to_vec(),
                None => trailing_timesteps(self.train_timesteps, steps)?,
            };
            for t in ts {
                let level = self.vp_level(t).ok_or_else(|| {
                    invalid("steps", format!("timestep {t} is outside the schedule"))
                })?;
                levels.push(level);
            }
        } else {
            levels.extend(flow_sigmas(steps)?.into_iter().map(|s| self.flow_level(s)));
        }
        levels.push(NoiseLevel::CLEAN);
        Ok(levels)
    }
}

/// Whether `timesteps` can be the grid of a `steps`-step trajectory over a VP schedule of
/// `train_timesteps` (`T`) timesteps: `steps` of them, strictly decreasing from `T − 1`, where
/// the sampler's pure noise starts. `Err` says what was expected.
pub fn check_grid(
    timesteps: &[usize],
    steps: usize,
    train_timesteps: usize,
) -> std::result::Result<(), String> {
    let first = train_timesteps.saturating_sub(1);
    let decreasing = timesteps
        .iter()
        .zip(timesteps.iter().skip(1))
        .all(|(a, b)| a > b);
    if timesteps.len() == steps && timesteps.first() == Some(&first) && decreasing {
        Ok(())
    } else {
        Err(format!(
            "{steps} strictly decreasing timesteps from {first} (T - 1: pure noise)"
        ))
    }
}

/// Diffusers' "trailing" timesteps for `steps` steps over `train_timesteps` (`T`):
/// `t_k = round(T − k·T/n) − 1`, `k = 0..n`, rounding half to even like `np.round`
/// (e.g. `T = 1000, n = 4` → `999, 749, 499, 249`). Requires `1 ≤ n ≤ T`.
pub fn trailing_timesteps(train_timesteps: usize, steps: usize) -> Result<Vec<usize>> {
    if steps == 0 || steps > train_timesteps {
        return Err(invalid(
            "steps",
            format!("trailing spacing needs 1..={train_timesteps} steps, got {steps}"),
        ));
    }
    let t = train_timesteps as f64;
    let ratio = t / steps as f64;
    // `n ≤ T` makes `ratio ≥ 1`, so the rounded values are distinct and ≥ 1.
    Ok((0..steps)
        .map(|k| ((t - k as f64 * ratio).round_ties_even() as usize).saturating_sub(1))
        .collect())
}

/// Flow-matching noise levels for `steps` steps: `σ_k = 1 − k/n`, `k = 0..n` (the next level
/// after the last is `σ = 0`, the clean sample).
pub fn flow_sigmas(steps: usize) -> Result<Vec<f64>> {
    if steps == 0 || steps > MAX_STEPS {
        return Err(invalid(
            "steps",
            format!("the number of sampling steps must be in 1..={MAX_STEPS}, got {steps}"),
        ));
    }
    let n = steps as f64;
    Ok((0..steps).map(|k| 1.0 - k as f64 / n).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    #[test]
    fn cosine_matches_closed_form() {
        let s = NoiseSchedule::new(Schedule::Cosine, 1000).unwrap();
        // Independent f64 closed form: without clipping the product telescopes to
        // ᾱ_t = f((t + 1)/T) / f(0).
        let f = |u: f64| {
            let c = ((u + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos();
            c * c
        };
        for t in [0usize, 1, 10, 249, 499, 749, 998] {
            let expected = f((t + 1) as f64 / 1000.0) / f(0.0);
            let got = s.alpha_bar(t).unwrap();
            assert!(close(got, expected, 1e-9), "t={t}: {got} vs {expected}");
        }
        // The last beta is clipped to 0.999.
        let last = s.alpha_bar(999).unwrap();
        assert!(close(last, s.alpha_bar(998).unwrap() * 0.001, 1e-9));
        // Literal values from a separate Python implementation of squaredcos_cap_v2.
        for (t, v) in [
            (0, 0.999958715775178),
            (499, 0.4938435904406382),
            (749, 0.14427210238573596),
            (999, 2.4287669070348567e-09),
        ] {
            assert!(close(s.alpha_bar(t).unwrap(), v, 1e-9), "t={t}");
        }
        assert_eq!(s.alpha_bar(1000), None);
    }

    #[test]
    fn linear_matches_closed_form() {
        let s = NoiseSchedule::new(Schedule::Linear, 1000).unwrap();
        assert!(close(s.alpha_bar(0).unwrap(), 1.0 - 1e-4, 1e-12));
        let beta1 = 1e-4 + (0.02 - 1e-4) / 999.0;
        assert!(close(
            s.alpha_bar(1).unwrap(),
            (1.0 - 1e-4) * (1.0 - beta1),
            1e-12
        ));
        for (t, v) in [
            (249, 0.5240853738253606),
            (499, 0.07858724288177821),
            (999, 4.0358297653756754e-05),
        ] {
            assert!(close(s.alpha_bar(t).unwrap(), v, 1e-9), "t={t}");
        }
        for schedule in [Schedule::Linear, Schedule::Cosine] {
            let s = NoiseSchedule::new(schedule, 1000).unwrap();
            assert!(s.alpha_bars().windows(2).all(|w| w[1] < w[0]));
            assert!(s.alpha_bars().iter().all(|&a| a > 0.0 && a < 1.0));
        }
    }

    #[test]
    fn alpha_sigma_helpers() {
        let s = NoiseSchedule::new(Schedule::Cosine, 1000).unwrap();
        for t in [0, 500, 999] {
            let (a, g) = (s.alpha(t).unwrap(), s.sigma(t).unwrap());
            assert!((a * a + g * g - 1.0).abs() < 1e-12);
            assert!(close(a * a, s.alpha_bar(t).unwrap(), 1e-12));
        }
        let flow = NoiseSchedule::new(Schedule::Flow, 1000).unwrap();
        assert!(flow.alpha_bars().is_empty());
        assert_eq!(flow.alpha(0), None);
    }

    #[test]
    fn trailing_spacing() {
        assert_eq!(trailing_timesteps(1000, 1).unwrap(), vec![999]);
        assert_eq!(trailing_timesteps(1000, 2).unwrap(), vec![999, 499]);
        assert_eq!(
            trailing_timesteps(1000, 4).unwrap(),
            vec![999, 749, 499, 249]
        );
        assert_eq!(trailing_timesteps(1000, 3).unwrap(), vec![999, 666, 332]);
        // Ties round to even like np.round: 937.5 → 938, 812.5 → 812.
        let t16 = trailing_timesteps(1000, 16).unwrap();
        assert_eq!(&t16[..4], &[999, 937, 874, 811]);
        assert_eq!(
            trailing_timesteps(10, 10).unwrap(),
            (0..10).rev().collect::<Vec<_>>()
        );
        for n in 1..=1000 {
            let ts = trailing_timesteps(1000, n).unwrap();
            assert_eq!(ts.len(), n);
            assert_eq!(ts[0], 999);
            assert!(ts.windows(2).all(|w| w[1] < w[0]), "n={n}");
        }
        assert!(trailing_timesteps(10, 11).is_err());
        assert!(trailing_timesteps(10, 0).is_err());
    }

    #[test]
    fn flow_spacing() {
        assert_eq!(flow_sigmas(1).unwrap(), vec![1.0]);
        assert_eq!(flow_sigmas(4).unwrap(), vec![1.0, 0.75, 0.5, 0.25]);
        let s = NoiseSchedule::new(Schedule::Flow, 1000).unwrap();
        let levels = s.levels(4).unwrap();
        let times: Vec<f64> = levels.iter().map(|l| l.model_time).collect();
        assert_eq!(times, vec![1000.0, 750.0, 500.0, 250.0, 0.0]);
        assert_eq!(levels[0].alpha, 0.0);
        assert_eq!(levels[4], NoiseLevel::CLEAN);
    }

    #[test]
    fn vp_levels_end_clean() {
        let s = NoiseSchedule::new(Schedule::Linear, 1000).unwrap();
        let levels = s.levels(4).unwrap();
        let times: Vec<f64> = levels.iter().map(|l| l.model_time).collect();
        assert_eq!(times, vec![999.0, 749.0, 499.0, 249.0, 0.0]);
        assert_eq!(levels[4], NoiseLevel::CLEAN);
        assert!(close(levels[1].alpha, s.alpha(749).unwrap(), 1e-15));
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(NoiseSchedule::new(Schedule::Cosine, 0).is_err());
        assert!(NoiseSchedule::new(Schedule::Cosine, 100_001).is_err());
        assert!(NoiseSchedule::new(Schedule::Linear, 100_000).is_ok());
        let s = NoiseSchedule::new(Schedule::Cosine, 1000).unwrap();
        for steps in [0, 1001] {
            match s.levels(steps) {
                Err(Error::InvalidOption { name, message }) => {
                    assert_eq!(name, "steps");
                    assert!(message.contains("1..=1000"), "{message}");
                }
                other => panic!("steps={steps}: {other:?}"),
            }
        }
        let small = NoiseSchedule::new(Schedule::Linear, 10).unwrap();
        assert!(matches!(small.levels(11), Err(Error::InvalidOption { .. })));
        let flow = NoiseSchedule::new(Schedule::Flow, 10).unwrap();
        assert_eq!(flow.levels(11).unwrap().len(), 12);
    }
}
