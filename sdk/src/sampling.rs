//! Next-token sampling from the text head's logits: greedy, or temperature softmax followed by
//! top-k, top-p (nucleus) and min-p truncation.
//!
//! Sampling is deterministic for a given RNG state: a non-greedy step draws exactly one
//! `rng.gen::<f64>()` (greedy draws none), and candidates are ordered by a total order
//! (probability descending, then id ascending), so results don't depend on the sort algorithm.
//! The runtime seeds a `rand_chacha::ChaCha8Rng`. Exponentials come from the platform's libm, so
//! two platforms agree on the distribution but not necessarily on every last-bit tie.

use std::cmp::Ordering;

use rand::Rng;

use crate::error::{Error, Result};

/// How to pick the next token. [`Default`] is greedy decoding.
///
/// The filters apply in this order: temperature softmax, then `top_k`, then `top_p` (on the
/// probabilities renormalised over the top-k set), then `min_p`; the survivors are renormalised
/// and one is drawn. The most likely token always survives every filter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingOptions {
    /// Softmax temperature; `0` means greedy (argmax, ties to the lowest id). Must be finite
    /// and ≥ 0. Below 1 sharpens the distribution, above 1 flattens it.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `0` turns the filter off.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probabilities sum to at least `top_p`;
    /// in `(0, 1]`, `1` turns the filter off.
    pub top_p: f32,
    /// Keep tokens whose probability is at least `min_p` times the most likely one's; in
    /// `[0, 1)`, `0` turns the filter off.
    pub min_p: f32,
}

impl Default for SamplingOptions {
    /// Greedy decoding: reproducible and the right choice for captions and short answers.
    fn default() -> Self {
        Self::greedy()
    }
}

impl SamplingOptions {
    /// Greedy decoding (temperature 0, every filter off).
    pub const fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
        }
    }

    /// Whether these options pick the argmax without consulting the RNG.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Checks every option's range; the error names the offending option.
    pub fn validate(&self) -> Result<()> {
        let invalid = |name: &str, message: String| {
            Err(Error::InvalidOption {
                name: name.to_string(),
                message,
            })
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return invalid(
                "temperature",
                format!(
                    "must be a finite number >= 0 (0 = greedy), got {}",
                    self.temperature
                ),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return invalid(
                "top_p",
                format!("must be in (0, 1] (1 = off), got {}", self.top_p),
            );
        }
        if !(self.min_p >= 0.0 && self.min_p < 1.0) {
            return invalid(
                "min_p",
                format!("must be in [0, 1) (0 = off), got {}", self.min_p),
            );
        }
        Ok(())
    }
}

/// Picks the next token id from `logits` (one per vocabulary entry) according to `options`.
///
/// `scratch` holds the candidate `(id, weight)` pairs; keep one per generation loop so that no
/// call allocates once it has grown to the vocabulary size. Non-finite or empty logits are an
/// [`Error::Numerical`] (the model diverged or the graph is wrong), invalid options an
/// [`Error::InvalidOption`].
pub fn sample_token(
    logits: &[f32],
    options: &SamplingOptions,
    rng: &mut impl Rng,
    scratch: &mut Vec<(u32, f32)>,
) -> Result<u32> {
    sample_token_masked(logits, options, rng, scratch, |_| true)
}

/// [`sample_token`] restricted to the ids for which `allowed` returns true, e.g. to forbid
/// `[PAD]`/`[UNK]`, or BOI when images are off. Masked tokens are removed before the softmax,
/// so the filters and probabilities only see allowed tokens. Masking every token is an
/// [`Error::InvalidOption`] named `allowed`.
pub fn sample_token_masked(
    logits: &[f32],
    options: &SamplingOptions,
    rng: &mut impl Rng,
    scratch: &mut Vec<(u32, f32)>,
    allowed: impl Fn(u32) -> bool,
) -> Result<u32> {
    options.validate()?;
    check_logits(logits)?;

    // Argmax over allowed tokens; strict `>` in id order keeps the lowest id on ties.
    let mut best: Option<(u32, f32)> = None;
    for (id, &logit) in (0u32..).zip(logits) {
        if allowed(id) && best.is_none_or(|(_, max)| logit > max) {
            best = Some((id, logit));
        }
    }
    let (best_id, max_logit) = best.ok_or_else(|| Error::InvalidOption {
        name: "allowed".to_string(),
        message: format!("masks out every one of the {} tokens", logits.len()),
    })?;
    if options.is_greedy() {
        return Ok(best_id);
    }

    // Unnormalised softmax weights, max-subtracted so the best token weighs exactly 1 and
    // nothing overflows; computed in f64 so huge logit gaps or tiny temperatures stay exact.
    // Zero weights can never be drawn and don't change any cumulative sum, so they are dropped.
    let temperature = f64::from(options.temperature);
    let max_logit = f64::from(max_logit);
    scratch.clear();
    for (id, &logit) in (0u32..).zip(logits) {
        if allowed(id) {
            let weight = ((f64::from(logit) - max_logit) / temperature).exp() as f32;
            if weight > 0.0 {
                scratch.push((id, weight));
            }
        }
    }

    let top_k = options.top_k;
    if top_k > 0 && top_k < scratch.len() {
        scratch.select_nth_unstable_by(top_k - 1, by_probability);
        scratch.truncate(top_k);
    }
    if top_k > 0 || options.top_p < 1.0 {
        // A well-defined candidate order (and so a well-defined draw) once a filter reordered.
        scratch.sort_unstable_by(by_probability);
    }
    if options.top_p < 1.0 {
        let target = f64::from(options.top_p) * total_weight(scratch);
        let mut cumulative = 0.0;
        let mut keep = scratch.len();
        for (index, &(_, weight)) in scratch.iter().enumerate() {
            cumulative += f64::from(weight);
            if cumulative >= target {
                keep = index + 1;
                break;
            }
        }
        scratch.truncate(keep);
    }
    if options.min_p > 0.0 {
        // p >= min_p * p_max  <=>  weight >= min_p * 1: the best token (weight 1) survives every
        // filter and the ratio is unchanged by renormalisation.
        let threshold = options.min_p;
        scratch.retain(|&(_, weight)| weight >= threshold);
    }

    let target = rng.gen::<f64>() * total_weight(scratch);
    let mut cumulative = 0.0;
    for &(id, weight) in scratch.iter() {
        cumulative += f64::from(weight);
        if target < cumulative {
            return Ok(id);
        }
    }
    // Only reached through rounding in the last sum (or never, as the best token always stays).
    Ok(scratch.last().map_or(best_id, |&(id, _)| id))
}

/// Probability descending, then id ascending: a total order on candidates (weights are finite).
fn by_probability(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

fn total_weight(candidates: &[(u32, f32)]) -> f64 {
    candidates
        .iter()
        .map(|&(_, weight)| f64::from(weight))
        .sum()
}

/// Rejects empty logits, more logits than `u32` ids, and any NaN or infinity.
fn check_logits(logits: &[f32]) -> Result<()> {
    let numerical = |message: String| {
        Err(Error::Numerical {
            what: "logits".to_string(),
            message,
        })
    };
    if logits.is_empty() {
        return numerical("no logits (empty vocabulary)".to_string());
    }
    if u32::try_from(logits.len()).is_err() {
        return numerical(format!("{} logits exceed the u32 id range", logits.len()));
    }
    if let Some((index, value)) = logits.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        let count = logits.iter().filter(|v| !v.is_finite()).count();
        return numerical(format!(
            "logit {index} is {value} ({count} of {} non-finite)",
            logits.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn options(temperature: f32, top_k: usize, top_p: f32, min_p: f32) -> SamplingOptions {
        SamplingOptions {
            temperature,
            top_k,
            top_p,
            min_p,
        }
    }

    fn sample(logits: &[f32], options: &SamplingOptions, seed: u64) -> u32 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        sample_token(logits, options, &mut rng, &mut Vec::new()).unwrap()
    }

    /// Empirical frequencies of `draws` samples with one RNG and one scratch.
    fn frequencies(logits: &[f32], options: &SamplingOptions, draws: usize) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut scratch = Vec::new();
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..draws {
            let id = sample_token(logits, options, &mut rng, &mut scratch).unwrap();
            counts[id as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    fn softmax(logits: &[f32], temperature: f64) -> Vec<f64> {
        let max = logits
            .iter()
            .fold(f64::NEG_INFINITY, |m, &l| m.max(l as f64));
        let exps: Vec<f64> = logits
            .iter()
            .map(|&l| ((l as f64 - max) / temperature).exp())
            .collect();
        let sum: f64 = exps.iter().sum();
        exps.iter().map(|e| e / sum).collect()
    }

    /// Logits with probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1.
    fn four() -> Vec<f32> {
        [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect()
    }

    #[test]
    fn default_is_greedy_and_valid() {
        let default = SamplingOptions::default();
        assert_eq!(default, SamplingOptions::greedy());
        assert!(default.is_greedy());
        default.validate().unwrap();
    }

    #[test]
    fn greedy_is_argmax_with_ties_to_lowest_id() {
        let greedy = SamplingOptions::default();
        assert_eq!(sample(&[0.1, 2.0, -1.0, 1.9], &greedy, 0), 1);
        assert_eq!(sample(&[0.1, 2.0, -1.0, 2.0], &greedy, 0), 1);
        assert_eq!(sample(&[-5.0], &greedy, 0), 0);
    }

    #[test]
    fn greedy_does_not_touch_the_rng() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let fresh = rng.clone();
        sample_token(
            &four(),
            &SamplingOptions::default(),
            &mut rng,
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(rng, fresh);
    }

    #[test]
    fn low_temperature_tends_to_greedy() {
        let logits = [0.3f32, 1.2, 1.1, -0.4, 0.9];
        for seed in 0..200 {
            assert_eq!(sample(&logits, &options(1e-3, 0, 1.0, 0.0), seed), 1);
        }
        // A subnormal temperature must not overflow into NaN weights.
        assert_eq!(sample(&logits, &options(1e-40, 0, 1.0, 0.0), 0), 1);
    }

    #[test]
    fn top_k_one_and_tiny_top_p_equal_greedy() {
        let logits = [0.3f32, 1.2, 1.2, -0.4, 0.9];
        let greedy = sample(&logits, &SamplingOptions::default(), 0);
        assert_eq!(greedy, 1);
        for seed in 0..200 {
            assert_eq!(sample(&logits, &options(1.5, 1, 1.0, 0.0), seed), greedy);
            assert_eq!(sample(&logits, &options(1.5, 0, 1e-6, 0.0), seed), greedy);
        }
    }

    #[test]
    fn top_k_keeps_the_k_most_likely_renormalised() {
        let freq = frequencies(&four(), &options(1.0, 2, 1.0, 0.0), 10_000);
        assert!((freq[0] - 0.625).abs() < 0.02, "{freq:?}");
        assert!((freq[1] - 0.375).abs() < 0.02, "{freq:?}");
        assert_eq!(freq[2] + freq[3], 0.0);
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        let freq = frequencies(&four(), &options(1.0, 0, 0.75, 0.0), 5_000);
        assert!(freq[0] > 0.0 && freq[1] > 0.0);
        assert_eq!(freq[2] + freq[3], 0.0, "{freq:?}");
        let freq = frequencies(&four(), &options(1.0, 0, 0.85, 0.0), 5_000);
        assert!(freq[2] > 0.0, "{freq:?}");
        assert_eq!(freq[3], 0.0, "{freq:?}");
        // top-p applies to the top-k renormalised probabilities: 0.5 / 0.8 = 0.625 >= 0.6, so
        // only the best token is left (unrenormalised, 0.5 < 0.6 would keep two).
        for seed in 0..100 {
            assert_eq!(sample(&four(), &options(1.0, 2, 0.6, 0.0), seed), 0);
        }
    }

    #[test]
    fn min_p_drops_tokens_below_a_fraction_of_the_best() {
        // Threshold 0.2 * 0.5 = 0.1: keeps 0.5, 0.3, 0.15; drops 0.05.
        let freq = frequencies(&four(), &options(1.0, 0, 1.0, 0.2), 10_000);
        assert!(freq[..3].iter().all(|&f| f > 0.0), "{freq:?}");
        assert_eq!(freq[3], 0.0, "{freq:?}");
        assert!((freq[2] - 0.15 / 0.95).abs() < 0.02, "{freq:?}");
        // Just under 1: only the best token (and exact ties with it) survive.
        for seed in 0..100 {
            assert_eq!(sample(&four(), &options(1.0, 0, 1.0, 0.999), seed), 0);
        }
    }

    #[test]
    fn empirical_frequencies_match_softmax() {
        let logits = [1.0f32, 2.0, 0.5, -1.0, 3.0, 2.5];
        for temperature in [0.7f32, 1.0, 2.0] {
            let expected = softmax(&logits, temperature as f64);
            let freq = frequencies(&logits, &options(temperature, 0, 1.0, 0.0), 10_000);
            for (f, e) in freq.iter().zip(&expected) {
                assert!(
                    (f - e).abs() < 0.02,
                    "T={temperature}: {freq:?} vs {expected:?}"
                );
            }
        }
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits = [1.0f32, 2.0, 0.5, -1.0, 3.0, 2.5];
        let opts = options(1.0, 4, 0.9, 0.05);
        let run = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut scratch = Vec::new();
            (0..64)
                .map(|_| sample_token(&logits, &opts, &mut rng, &mut scratch).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(11), run(11));
        assert_ne!(run(11), run(12));
    }

    #[test]
    fn scratch_stops_growing() {
        let logits: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut scratch = Vec::new();
        let opts = options(0.8, 50, 0.9, 0.01);
        sample_token(&logits, &opts, &mut rng, &mut scratch).unwrap();
        let capacity = scratch.capacity();
        for _ in 0..100 {
            sample_token(&logits, &opts, &mut rng, &mut scratch).unwrap();
        }
        assert_eq!(scratch.capacity(), capacity);
    }

    #[test]
    fn non_finite_and_empty_logits_are_numerical_errors() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for opts in [SamplingOptions::default(), options(1.0, 0, 1.0, 0.0)] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let err =
                    sample_token(&[0.0, bad, 1.0], &opts, &mut rng, &mut Vec::new()).unwrap_err();
                match &err {
                    Error::Numerical { what, message } => {
                        assert_eq!(what, "logits");
                        assert!(message.contains("logit 1"), "{message}");
                    }
                    other => panic!("unexpected error {other}"),
                }
            }
            let err = sample_token(&[], &opts, &mut rng, &mut Vec::new()).unwrap_err();
            assert!(matches!(err, Error::Numerical { ref what, .. } if what == "logits"));
        }
    }

    #[test]
    fn masked_tokens_are_never_picked() {
        let logits = four();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut scratch = Vec::new();
        let not_zero = |id: u32| id != 0;
        let greedy = SamplingOptions::default();
        let id = sample_token_masked(&logits, &greedy, &mut rng, &mut scratch, not_zero).unwrap();
        assert_eq!(id, 1);
        let opts = options(1.0, 0, 1.0, 0.0);
        for _ in 0..1000 {
            let id = sample_token_masked(&logits, &opts, &mut rng, &mut scratch, not_zero);
            assert_ne!(id.unwrap(), 0);
        }
        let err = sample_token_masked(&logits, &opts, &mut rng, &mut scratch, |_| false);
        assert!(matches!(err, Err(Error::InvalidOption { ref name, .. }) if name == "allowed"));
    }

    #[test]
    fn invalid_options_name_the_option() {
        let name_of = |opts: SamplingOptions| match opts.validate() {
            Err(Error::InvalidOption { name, .. }) => name,
            other => panic!("expected an invalid option, got {other:?}"),
        };
        for t in [-0.1, f32::NAN, f32::INFINITY] {
            assert_eq!(name_of(options(t, 0, 1.0, 0.0)), "temperature");
        }
        for p in [0.0, -0.5, 1.01, f32::NAN] {
            assert_eq!(name_of(options(1.0, 0, p, 0.0)), "top_p");
        }
        for m in [-0.1, 1.0, f32::NAN] {
            assert_eq!(name_of(options(1.0, 0, 1.0, m)), "min_p");
        }
        options(0.0, 0, 1.0, 0.0).validate().unwrap();
        options(5.0, 100, 0.01, 0.99).validate().unwrap();
        // sample_token validates too.
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let err = sample_token(
            &four(),
            &options(1.0, 0, 0.0, 0.0),
            &mut rng,
            &mut Vec::new(),
        );
        assert!(matches!(err, Err(Error::InvalidOption { ref name, .. }) if name == "top_p"));
    }
}
