//! The tract measurements, all through the SDK's public API: image generation with
//! [`Model::generate`], the same generation without the prefix cache (a [`Session`] in
//! [`Session::recompute_prefix`] mode driven step by step like `generate.rs` does), and text
//! prefill/decode speed with [`Session::append_tokens`] + [`Session::logits`].

use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use transfusion_sdk::config::SamplerKind;
use transfusion_sdk::diffusion::{Sampler, SamplerOptions};
use transfusion_sdk::{
    Control, GenerateOptions, GraphId, Model, Request, RgbImage, Session, Timings,
};

use super::stats::{ms, p50};
use crate::error::{Error, Result};

/// The benchmark prompt: `n` ordinary vocabulary words.
#[derive(Debug, Clone)]
pub struct Prompt {
    /// The words joined by spaces (what [`Model::generate`] is given).
    pub text: String,
    /// Their token ids (without BOS/BOI).
    pub ids: Vec<u32>,
}

/// The deterministic prompt of `n` tokens: the tokenizer's non-special words in id order,
/// repeated (the rule `tools/bench/ort_bench.py` applies to `tokenizer.json` as well). Checks
/// that the text encodes back to exactly those ids.
pub fn prompt(model: &Model, n: usize) -> Result<Prompt> {
    let tokenizer = model.tokenizer();
    let special = tokenizer.special();
    let specials: Vec<u32> = special.all().iter().map(|&(_, id)| id).collect();
    let words: Vec<(u32, String)> = (0..tokenizer.vocab_size() as u32)
        .filter(|id| !specials.contains(id))
        .filter_map(|id| tokenizer.decode_token(id).map(|w| (id, w)))
        .collect();
    if words.is_empty() {
        return Err(Error::Invalid(
            "the bundle's tokenizer has no ordinary words to build a prompt from".into(),
        ));
    }
    let picked: Vec<&(u32, String)> = words.iter().cycle().take(n).collect();
    let text = picked
        .iter()
        .map(|(_, w)| w.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let ids: Vec<u32> = picked.iter().map(|(id, _)| *id).collect();
    let encoded = tokenizer.encode(&text)?;
    if encoded != ids {
        return Err(Error::Invalid(format!(
            "the benchmark prompt does not round-trip through the tokenizer: {} words gave {} \
             tokens",
            ids.len(),
            encoded.len()
        )));
    }
    Ok(Prompt { text, ids })
}

/// Per-run milliseconds of one image-generation variant.
#[derive(Debug, Clone, Default)]
pub struct ImageSamples {
    pub total: Vec<f64>,
    pub text_embed: Vec<f64>,
    pub backbone: Vec<f64>,
    /// `patch_in` + `patch_out`.
    pub patch: Vec<f64>,
    pub vae_decode: Vec<f64>,
    /// Everything outside the graphs: sampler updates, tokenization, tensor copies.
    pub host: Vec<f64>,
}

impl ImageSamples {
    fn push(&mut self, wall: Duration, t: &Timings) {
        self.total.push(ms(wall));
        self.text_embed.push(ms(t.graph(GraphId::TextEmbed)));
        self.backbone.push(ms(t.graph(GraphId::Backbone)));
        self.patch
            .push(ms(t.graph(GraphId::PatchIn) + t.graph(GraphId::PatchOut)));
        self.vae_decode.push(ms(t.graph(GraphId::VaeDecoder)));
        self.host.push(ms(wall.saturating_sub(t.graphs_total())));
    }
}

/// How an image is generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// [`Model::generate`]: the prefix runs once, each step reads its KV cache.
    Cached,
    /// Every diffusion step recomputes the whole sequence (no prefix cache).
    Recompute,
}

/// What every image measurement shares.
pub struct ImageJob<'a> {
    pub model: &'a Model,
    pub prompt: &'a Prompt,
    pub steps: usize,
    pub warmup: usize,
    pub runs: usize,
}

/// Generates `warmup + runs` images with `variant`, keeping the last `runs` timings; ticks `bar`
/// once per image.
pub fn images(job: &ImageJob, variant: Variant, bar: &ProgressBar) -> Result<ImageSamples> {
    let mut samples = ImageSamples::default();
    for run in 0..job.warmup + job.runs {
        let seed = run as u64;
        let (wall, timings) = match variant {
            Variant::Cached => image_generate(job, seed)?,
            Variant::Recompute => image_recompute(job, seed)?,
        };
        if run >= job.warmup {
            samples.push(wall, &timings);
        }
        bar.inc(1);
    }
    Ok(samples)
}

/// One image through [`Model::generate`] (DDIM, no previews, no text after the image).
pub(crate) fn image_generate(job: &ImageJob, seed: u64) -> Result<(Duration, Timings)> {
    let options = GenerateOptions {
        seed,
        max_tokens: Some(0),
        steps: Some(job.steps),
        sampler: Some(SamplerKind::Ddim),
        previews: false,
        ..GenerateOptions::default()
    };
    let start = Instant::now();
    let out = job.model.generate(
        Request::Image {
            prompt: &job.prompt.text,
        },
        &options,
        |_| Control::Continue,
    )?;
    let wall = start.elapsed();
    if out.images().len() != 1 {
        return Err(Error::Invalid(format!(
            "generate returned {} images, expected 1",
            out.images().len()
        )));
    }
    Ok((wall, out.timings))
}

/// The same image as [`image_generate`], driven step by step on a [`Session`] in
/// recompute-prefix mode: `[BOS] + prompt + [BOI]`, DDIM steps of `denoise` (each running the
/// backbone over the whole sequence), the VAE decode — no commit of the clean block, as
/// [`Model::generate`] makes none when no text follows the image.
fn image_recompute(job: &ImageJob, seed: u64) -> Result<(Duration, Timings)> {
    let model = job.model;
    let m = model.manifest();
    let g = &m.geometry;
    let sp = m.special_tokens;
    let start = Instant::now();
    let mut session = Session::new(model)?;
    session.recompute_prefix();
    let mut prefix = Vec::with_capacity(job.prompt.ids.len() + 2);
    prefix.push(sp.bos);
    prefix.extend_from_slice(&job.prompt.ids);
    prefix.push(sp.boi);
    session.append_tokens(&prefix)?;
    let mut sampler = Sampler::on_grid(
        &SamplerOptions {
            kind: SamplerKind::Ddim,
            steps: job.steps,
            eta: 0.0,
            ..SamplerOptions::from_config(&m.diffusion)
        },
        m.diffusion.grid(job.steps),
    )?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut latent = vec![0f32; g.latent_channels * g.latent_size * g.latent_size];
    sampler.init_noise(&mut latent, &mut rng);
    for step in 0..sampler.steps() {
        let t = sampler.model_time(step)?;
        let prediction = session.denoise(&latent, t)?;
        sampler.step(step, &mut latent, &prediction, &mut rng)?;
    }
    let rgb = session.decode_latent(&latent)?;
    RgbImage::from_chw(&rgb, g.image_size, g.image_size)?;
    let wall = start.elapsed();
    let mut timings = session.timings;
    timings.total = wall;
    Ok((wall, timings))
}

/// Text speed of one configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextSpeed {
    /// Tokens in the prefill (`[BOS]` + prompt).
    pub prefill_tokens: usize,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
}

/// The index of the largest logit (greedy decoding; EOS is just another token here).
fn argmax(logits: &[f32]) -> Result<u32> {
    logits
        .iter()
        .enumerate()
        .filter(|(_, v)| v.is_finite())
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i as u32)
        .ok_or_else(|| Error::Invalid("the text head returned no finite logit".into()))
}

/// Median prefill and greedy-decode speed over `warmup + runs` sessions: prefill of
/// `[BOS] + prompt` in one `append_tokens` call, then `decode_tokens` × (`logits` → argmax →
/// `append_tokens`), never stopping at EOS. Ticks `bar` once per session.
pub fn text_speed(
    model: &Model,
    prompt: &Prompt,
    decode_tokens: usize,
    warmup: usize,
    runs: usize,
    bar: &ProgressBar,
) -> Result<TextSpeed> {
    let mut ids = Vec::with_capacity(prompt.ids.len() + 1);
    ids.push(model.manifest().special_tokens.bos);
    ids.extend_from_slice(&prompt.ids);
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    for run in 0..warmup + runs {
        let mut session = Session::new(model)?;
        let start = Instant::now();
        let mut hidden = session.append_tokens(&ids)?;
        let prefill_time = start.elapsed();
        if session.remaining() < decode_tokens {
            return Err(Error::Invalid(format!(
                "{decode_tokens} decode tokens do not fit after a {}-token prompt (context {})",
                ids.len(),
                model.manifest().geometry.max_seq_len
            )));
        }
        let start = Instant::now();
        for _ in 0..decode_tokens {
            let logits = session.logits(&hidden)?;
            hidden = session.append_tokens(&[argmax(&logits)?])?;
        }
        let decode_time = start.elapsed();
        if run >= warmup {
            prefill.push(prefill_time.as_secs_f64());
            decode.push(decode_time.as_secs_f64());
        }
        bar.inc(1);
    }
    let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    Ok(TextSpeed {
        prefill_tokens: ids.len(),
        prefill_tok_s: rate(ids.len(), p50(&prefill)),
        decode_tok_s: rate(decode_tokens, p50(&decode)),
    })
}

#[cfg(test)]
mod tests {
    use super::argmax;

    #[test]
    fn argmax_skips_non_finite_logits() {
        assert_eq!(argmax(&[0.1, f32::NAN, 3.0, -1.0]).unwrap(), 2);
        assert!(argmax(&[f32::NAN]).is_err());
    }
}
