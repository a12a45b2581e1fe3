//! Sampler and option validation, then what a validated configuration does: arbitrary bytes
//! decoded into `GenerateOptions`, `SamplerOptions` and logits (every f32 bit pattern, NaN and
//! infinities included); a full sampler trajectory and token sampling must end in values or
//! errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use transfusion_sdk::config::{Prediction, SamplerKind, Schedule};
use transfusion_sdk::diffusion::{Sampler, SamplerOptions};
use transfusion_sdk::sampling::{sample_token, SamplingOptions};
use transfusion_sdk::{GenerateOptions, UnknownWords};

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
    fn f32(&mut self) -> f32 {
        f32::from_le_bytes(self.bytes())
    }
    /// Small values most of the time, any value sometimes.
    fn usize(&mut self) -> usize {
        match self.u8() % 4 {
            0 => u64::from_le_bytes(self.bytes()) as usize,
            _ => usize::from(u16::from_le_bytes(self.bytes())),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader(data);
    let sampling = SamplingOptions {
        temperature: r.f32(),
        top_k: r.usize(),
        top_p: r.f32(),
        min_p: r.f32(),
    };
    let options = GenerateOptions {
        seed: u64::from_le_bytes(r.bytes()),
        max_tokens: (r.u8() & 1 == 1).then(|| r.usize()),
        sampling,
        steps: Some(r.usize()),
        sampler: None,
        guidance: Some(r.f32()),
        eta: r.f32(),
        max_images: r.usize(),
        truncate_prompt: r.u8() & 1 == 1,
        previews: r.u8() & 1 == 1,
        unknown_words: [UnknownWords::Warn, UnknownWords::Error, UnknownWords::Allow]
            [usize::from(r.u8()) % 3],
    };
    let _ = options.validate();
    let schedule = [Schedule::Cosine, Schedule::Linear, Schedule::Flow][usize::from(r.u8()) % 3];
    let prediction = [
        Prediction::Epsilon,
        Prediction::V,
        Prediction::X0,
        Prediction::Flow,
    ][usize::from(r.u8()) % 4];
    let kind = [
        SamplerKind::Ddim,
        SamplerKind::DpmPp2M,
        SamplerKind::Euler,
        SamplerKind::Lcm,
    ][usize::from(r.u8()) % 4];
    let sampler_options = SamplerOptions {
        schedule,
        prediction,
        train_timesteps: r.usize(),
        kind,
        steps: r.usize() % 64,
        eta: r.f32(),
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(options.seed);
    if let Ok(mut sampler) = Sampler::new(&sampler_options) {
        let mut latent = [0f32; 8];
        sampler.init_noise(&mut latent, &mut rng);
        for step in 0..sampler.steps() {
            if sampler.model_time(step).is_err() {
                break;
            }
            let prediction: Vec<f32> = (0..8).map(|_| r.f32()).collect();
            if sampler
                .step(step, &mut latent, &prediction, &mut rng)
                .is_err()
            {
                break;
            }
            let _ = sampler.x0_estimate();
        }
    }
    let logits: Vec<f32> = (0..r.u8() % 80).map(|_| r.f32()).collect();
    let _ = sample_token(&logits, &options.sampling, &mut rng, &mut Vec::new());
});
