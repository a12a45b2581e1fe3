//! Generation: text, images inside the sequence (BOI … EOI), captioning and editing, with events
//! for streaming and cancellation. Output is an ordered list of text and image segments.

use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::diffusion::{guide, Sampler, SamplerOptions};
use crate::error::{Error, Result};
use crate::image::RgbImage;
use crate::model::Model;
use crate::options::{GenerateOptions, UnknownWords, DEFAULT_MAX_TOKENS};
use crate::sampling::sample_token_masked;
use crate::session::{Session, Timings};

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    /// Text after the prompt; the model may open images itself (BOI), up to `max_images`.
    Text { prompt: &'a str },
    /// An image of the prompt (BOI is appended after it); text after it only when
    /// [`GenerateOptions::max_tokens`] asks for some.
    Image { prompt: &'a str },
    /// Text about an image (the image first, clean, then text): captioning.
    Caption { image: &'a RgbImage },
    /// A new image from an image and an instruction; text after it only when
    /// [`GenerateOptions::max_tokens`] asks for some.
    Edit {
        image: &'a RgbImage,
        instruction: &'a str,
    },
}

/// What happens during generation, in order. New kinds of event may be added: match with a
/// `_` arm.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// Words of the prompt the model's vocabulary lacks (each once, in order), with
    /// [`UnknownWords::Warn`]: they reach the model as its unknown token. Comes before any
    /// graph runs.
    UnknownWords { words: &'a [String] },
    /// A text token was generated; `text` is its piece (empty for tokens without text).
    Token { id: u32, text: &'a str },
    /// An image block opened (index among this generation's images).
    ImageStart { index: usize, steps: usize },
    /// A diffusion step finished; `preview` is the predicted clean image at latent resolution
    /// through the manifest's linear latent→RGB map (no VAE), when previews are on.
    Step {
        index: usize,
        total: usize,
        preview: Option<&'a RgbImage>,
    },
    /// An image is complete (VAE-decoded).
    Image { index: usize, image: &'a RgbImage },
    /// Generation ended.
    Done { timings: &'a Timings },
}

/// The callback's answer: go on or stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    Cancel,
}

/// One piece of the output.
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Text(String),
    Image(RgbImage),
}

/// Why generation stopped. New reasons may be added: match with a `_` arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub enum StopReason {
    /// The model emitted EOS.
    EndOfSequence,
    /// `max_tokens` reached.
    MaxTokens,
    /// The context is full.
    ContextFull,
    /// The callback cancelled.
    Cancelled,
    /// The image of an image or edit request is done and no text was asked after it.
    Complete,
}

/// The result of a generation.
#[derive(Debug, Clone)]
pub struct Output {
    pub segments: Vec<Segment>,
    pub timings: Timings,
    pub stop: StopReason,
}

impl Output {
    /// All text segments joined.
    pub fn text(&self) -> String {
        let parts: Vec<&str> = self
            .segments
            .iter()
            .filter_map(|s| match s {
                Segment::Text(t) => Some(t.as_str()),
                Segment::Image(_) => None,
            })
            .collect();
        parts.join(" ")
    }

    /// All images, in order.
    pub fn images(&self) -> Vec<&RgbImage> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Image(i) => Some(i),
                Segment::Text(_) => None,
            })
            .collect()
    }
}

struct Run<'m, 'c> {
    model: &'m Model,
    options: &'c GenerateOptions,
    session: Session<'m>,
    rng: ChaCha8Rng,
    on_event: &'c mut dyn FnMut(Event) -> Control,
    segments: Vec<Segment>,
    pending_text: Vec<u32>,
    images: usize,
}

impl Model {
    /// Generates for `request`; `on_event` sees every token, step and image and may cancel.
    pub fn generate(
        &self,
        request: Request,
        options: &GenerateOptions,
        mut on_event: impl FnMut(Event) -> Control,
    ) -> Result<Output> {
        options.validate()?;
        let start = Instant::now();
        let mut run = Run {
            model: self,
            options,
            session: Session::new(self)?,
            rng: ChaCha8Rng::seed_from_u64(options.seed),
            on_event: &mut on_event,
            segments: Vec::new(),
            pending_text: Vec::new(),
            images: 0,
        };
        let stop = run.go(request)?;
        run.flush_text()?;
        let mut timings = run.session.timings;
        timings.total = start.elapsed();
        timings.host = timings.total.saturating_sub(timings.graphs_total());
        // The final event cannot cancel anything any more.
        let _ = (run.on_event)(Event::Done { timings: &timings });
        Ok(Output {
            segments: run.segments,
            timings,
            stop,
        })
    }
}

impl Model {
    /// The image of `prompt`: [`Model::generate`] of a [`Request::Image`] without a callback
    /// (the [`GenerateOptions::max_tokens`] and `max_images` of `options` are not used).
    ///
    /// ```no_run
    /// # use transfusion_sdk::{GenerateOptions, LoadOptions, Model};
    /// let model = Model::load("models/shapes64/bundle", &LoadOptions::default())?;
    /// let image = model.generate_image("a red circle above a blue square", &GenerateOptions::default())?;
    /// image.save_png("generated.png")?;
    /// # Ok::<(), transfusion_sdk::Error>(())
    /// ```
    pub fn generate_image(&self, prompt: &str, options: &GenerateOptions) -> Result<RgbImage> {
        let options = GenerateOptions {
            max_tokens: Some(0),
            // No callback sees them.
            previews: false,
            ..options.clone()
        };
        let out = self.generate(Request::Image { prompt }, &options, |_| Control::Continue)?;
        out.segments
            .into_iter()
            .find_map(|s| match s {
                Segment::Image(image) => Some(image),
                Segment::Text(_) => None,
            })
            .ok_or_else(|| Error::Numerical {
                what: "generate_image".into(),
                message: format!("generation stopped ({:?}) before the image", out.stop),
            })
    }

    /// A caption of `image`: [`Model::generate`] of a [`Request::Caption`] without a callback,
    /// text only (the model may not open images of its own; `max_images` is not used).
    ///
    /// ```no_run
    /// # use transfusion_sdk::{GenerateOptions, LoadOptions, Model, RgbImage};
    /// let model = Model::load("models/shapes64/bundle", &LoadOptions::default())?;
    /// let image = RgbImage::load_png("scene.png")?;
    /// println!("{}", model.caption(&image, &GenerateOptions::default())?);
    /// # Ok::<(), transfusion_sdk::Error>(())
    /// ```
    pub fn caption(&self, image: &RgbImage, options: &GenerateOptions) -> Result<String> {
        let options = GenerateOptions {
            max_images: 0,
            previews: false,
            ..options.clone()
        };
        let out = self.generate(Request::Caption { image }, &options, |_| Control::Continue)?;
        Ok(out.text())
    }
}

fn empty_prompt() -> Error {
    Error::InvalidOption {
        name: "prompt".into(),
        message: "is empty (or only whitespace)".into(),
    }
}

impl Run<'_, '_> {
    fn special(&self) -> crate::config::SpecialTokens {
        self.model.manifest().special_tokens
    }

    /// Encodes `text`, failing on an empty prompt; unknown words are handled as
    /// [`GenerateOptions::unknown_words`] says. `None`: the callback cancelled.
    fn encode(&mut self, text: &str) -> Result<Option<Vec<u32>>> {
        let (ids, unknown) = self.model.tokenizer().encode_with_unknown(text)?;
        if ids.is_empty() {
            return Err(empty_prompt());
        }
        if !unknown.is_empty() {
            match self.options.unknown_words {
                UnknownWords::Allow => {}
                UnknownWords::Error => return Err(Error::UnknownWords { words: unknown }),
                UnknownWords::Warn => {
                    log::warn!(
                        "prompt words the model does not know (read as its unknown token): {}",
                        unknown.join(", ")
                    );
                    let event = Event::UnknownWords { words: &unknown };
                    if (self.on_event)(event) == Control::Cancel {
                        return Ok(None);
                    }
                }
            }
        }
        Ok(Some(ids))
    }

    /// Fits a prefix into the context, keeping `reserve` positions free after it.
    fn fit(&self, mut prefix: Vec<u32>, reserve: usize) -> Result<Vec<u32>> {
        let max = self.model.manifest().geometry.max_seq_len;
        let room = max.saturating_sub(reserve);
        if prefix.len() <= room {
            return Ok(prefix);
        }
        if !self.options.truncate_prompt || room < 2 {
            return Err(Error::Context {
                message: format!(
                    "the prompt is {} tokens; with {reserve} positions kept for the output the \
                     model's context of {max} leaves {room} (set truncate_prompt to cut it)",
                    prefix.len()
                ),
            });
        }
        let cut = prefix.len() - room;
        log::warn!("prompt truncated: dropped its first {cut} tokens to fit the context");
        // Keep BOS, drop the oldest prompt tokens.
        prefix.drain(1..1 + cut);
        Ok(prefix)
    }

    fn image_room(&self) -> usize {
        self.model.manifest().geometry.num_patches + 2
    }

    fn go(&mut self, request: Request) -> Result<StopReason> {
        // An image or edit request is complete with its image unless text is asked for.
        let draws = matches!(request, Request::Image { .. } | Request::Edit { .. });
        let max_tokens =
            self.options
                .max_tokens
                .unwrap_or(if draws { 0 } else { DEFAULT_MAX_TOKENS });
        let sp = self.special();
        let block = self.image_room();
        let latent = match request {
            Request::Text { prompt } => {
                let Some(ids) = self.encode(prompt)? else {
                    return Ok(StopReason::Cancelled);
                };
                let mut prefix = vec![sp.bos];
                prefix.extend(ids);
                let prefix = self.fit(prefix, 1)?;
                let hidden = self.session.append_tokens(&prefix)?;
                return self.text(hidden, max_tokens);
            }
            Request::Image { prompt } => {
                let Some(ids) = self.encode(prompt)? else {
                    return Ok(StopReason::Cancelled);
                };
                let mut prefix = vec![sp.bos];
                prefix.extend(ids);
                prefix.push(sp.boi);
                let prefix = self.fit(prefix, block - 1)?;
                self.session.append_tokens(&prefix)?;
                match self.image()? {
                    Some(latent) => latent,
                    None => return Ok(StopReason::Cancelled),
                }
            }
            Request::Caption { image } => {
                self.session.append_tokens(&[sp.bos, sp.boi])?;
                let hidden = self.context_image(image)?;
                return self.text(hidden, max_tokens);
            }
            Request::Edit { image, instruction } => {
                let Some(ids) = self.encode(instruction)? else {
                    return Ok(StopReason::Cancelled);
                };
                self.session.append_tokens(&[sp.bos, sp.boi])?;
                self.context_image(image)?;
                let mut rest = ids;
                rest.push(sp.boi);
                let max = self.model.manifest().geometry.max_seq_len;
                if self.session.len() + rest.len() + block - 1 > max {
                    return Err(Error::Context {
                        message: format!(
                            "the instruction is {} tokens; the image and the new image leave {}",
                            rest.len() - 1,
                            max.saturating_sub(self.session.len() + block)
                        ),
                    });
                }
                self.session.append_tokens(&rest)?;
                match self.image()? {
                    Some(latent) => latent,
                    None => return Ok(StopReason::Cancelled),
                }
            }
        };
        // The image ends the request unless text is asked for: then the clean block and EOI
        // join the context, and text continues from EOI.
        if max_tokens == 0 {
            return Ok(StopReason::Complete);
        }
        let hidden = self.session.append_image(&latent)?;
        self.text(hidden, max_tokens)
    }

    /// Puts a clean image into the context (BOI already appended); returns the hidden at EOI.
    fn context_image(&mut self, image: &RgbImage) -> Result<Vec<f32>> {
        let size = self.model.manifest().geometry.image_size;
        let resized;
        let image = if image.width() as usize != size || image.height() as usize != size {
            log::info!(
                "input image is {}x{}, resizing to the model's {size}x{size}",
                image.width(),
                image.height()
            );
            resized = image.resize(size as u32, size as u32)?;
            &resized
        } else {
            image
        };
        let latent = self.session.encode_image(&image.to_chw())?;
        self.session.append_image(&latent)
    }

    fn flush_text(&mut self) -> Result<()> {
        if !self.pending_text.is_empty() {
            let text = self.model.tokenizer().decode(&self.pending_text)?;
            self.pending_text.clear();
            self.segments.push(Segment::Text(text));
        }
        Ok(())
    }

    /// Text generation from `hidden` until EOS, `max_tokens`, a full context or cancellation.
    fn text(&mut self, mut hidden: Vec<f32>, max_tokens: usize) -> Result<StopReason> {
        let sp = self.special();
        let mut scratch = Vec::new();
        for _ in 0..max_tokens {
            if self.session.remaining() == 0 {
                return Ok(StopReason::ContextFull);
            }
            let logits = self.session.logits(&hidden)?;
            let image_ok = self.images < self.options.max_images
                && self.session.remaining() >= self.image_room() - 1;
            let allowed = |id: u32| {
                id != sp.pad
                    && id != sp.bos
                    && id != sp.unk
                    && id != sp.eoi
                    && (image_ok || id != sp.boi)
            };
            let id = sample_token_masked(
                &logits,
                &self.options.sampling,
                &mut self.rng,
                &mut scratch,
                allowed,
            )?;
            if id == sp.eos {
                return Ok(StopReason::EndOfSequence);
            }
            if id == sp.boi {
                self.flush_text()?;
                self.session.append_tokens(&[sp.boi])?;
                match self.image()? {
                    Some(latent) => hidden = self.session.append_image(&latent)?,
                    None => return Ok(StopReason::Cancelled),
                }
                continue;
            }
            let piece = self.model.tokenizer().decode_token(id).unwrap_or_default();
            if (self.on_event)(Event::Token { id, text: &piece }) == Control::Cancel {
                self.pending_text.push(id);
                return Ok(StopReason::Cancelled);
            }
            self.pending_text.push(id);
            hidden = self.session.append_tokens(&[id])?;
        }
        Ok(StopReason::MaxTokens)
    }

    /// Runs the sampler for one image block (BOI is the last position), decodes it and hands
    /// the image to the callback; returns the clean latent, or `None` when cancelled. The
    /// caller commits the latent and EOI to the context ([`Session::append_image`]) when text
    /// follows — after an image that ends the request, that backbone call would be wasted.
    fn image(&mut self) -> Result<Option<Vec<f32>>> {
        let m = self.model.manifest();
        let g = &m.geometry;
        let mut options = SamplerOptions::from_config(&m.diffusion);
        options.kind = self.options.sampler.unwrap_or(m.diffusion.sampler);
        options.steps = self.options.steps.unwrap_or(m.diffusion.steps);
        options.eta = self.options.eta;
        let mut sampler = Sampler::on_grid(&options, m.diffusion.grid(options.steps))?;
        let guidance = if m.diffusion.guidance_distilled {
            1.0
        } else {
            self.options.guidance.unwrap_or(m.diffusion.guidance)
        };
        // The unconditional branch: the sequence without its caption, as the trainer drops it.
        let mut uncond = if guidance > 1.0 {
            let mut s = Session::new(self.model)?;
            s.append_tokens(&[m.special_tokens.bos, m.special_tokens.boi])?;
            Some(s)
        } else {
            None
        };
        let index = self.images;
        let steps = sampler.steps();
        if (self.on_event)(Event::ImageStart { index, steps }) == Control::Cancel {
            return Ok(None);
        }
        let numel = g.latent_channels * g.latent_size * g.latent_size;
        let mut latent = vec![0f32; numel];
        sampler.init_noise(&mut latent, &mut self.rng);
        for step in 0..steps {
            let t = sampler.model_time(step)?;
            let mut prediction = self.session.denoise(&latent, t)?;
            if let Some(u) = uncond.as_mut() {
                let unconditional = u.denoise(&latent, t)?;
                guide(&unconditional, &mut prediction, guidance)?;
            }
            sampler.step(step, &mut latent, &prediction, &mut self.rng)?;
            let preview = match (self.options.previews, sampler.x0_estimate()) {
                (true, Some(x0)) => Some(RgbImage::preview_from_latent(
                    x0,
                    [g.latent_channels, g.latent_size, g.latent_size],
                    &m.preview.weight,
                    &m.preview.bias,
                )?),
                _ => None,
            };
            let event = Event::Step {
                index: step,
                total: steps,
                preview: preview.as_ref(),
            };
            if (self.on_event)(event) == Control::Cancel {
                return Ok(None);
            }
        }
        if let Some(u) = uncond {
            self.session.timings.add(&u.timings);
        }
        if latent.iter().any(|v| !v.is_finite()) {
            return Err(Error::Numerical {
                what: "latent".into(),
                message: "the sampled latent is not finite".into(),
            });
        }
        let rgb = self.session.decode_latent(&latent)?;
        let image = RgbImage::from_chw(&rgb, g.image_size, g.image_size)?;
        self.images += 1;
        let cancel = (self.on_event)(Event::Image {
            index,
            image: &image,
        }) == Control::Cancel;
        self.segments.push(Segment::Image(image));
        Ok(if cancel { None } else { Some(latent) })
    }
}
