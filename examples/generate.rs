//! Generate an image (and any text after it) from a prompt:
//!
//! ```sh
//! cargo run --release --example generate -- "a red circle above a blue square"
//! ```
//!
//! Writes `generated.png`, prints generated text to stdout and timings to stderr.

mod common;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use transfusion_sdk::config::SamplerKind;
use transfusion_sdk::{
    Control, Device, Event, GenerateOptions, GraphId, LoadOptions, Model, PartPrecisions,
    PrecisionChoice, Request, SamplingOptions, Segment, UnknownWords,
};

#[derive(Parser)]
#[command(about = "Generate an image from a prompt with a Transfusion bundle")]
struct Args {
    /// What to draw.
    prompt: String,
    /// Bundle directory (default: models/shapes64/bundle).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Output PNG (further images get -1, -2, ... suffixes).
    #[arg(short, long, default_value = "generated.png")]
    output: PathBuf,
    /// Diffusion steps (default: the model's recommendation).
    #[arg(long)]
    steps: Option<usize>,
    /// Sampler: ddim, dpmpp_2m, euler, lcm (default: the model's recommendation).
    #[arg(long)]
    sampler: Option<SamplerKind>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Classifier-free guidance scale (ignored by guidance-distilled models).
    #[arg(long)]
    guidance: Option<f32>,
    /// auto, fp32, fp16 or int8 for every part.
    #[arg(long, default_value = "auto")]
    precision: PrecisionChoice,
    /// Threads for matrix products.
    #[arg(long)]
    threads: Option<usize>,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Text tokens to generate after the image (default: none, the image only).
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Prompt words the model does not know: warn, error or allow.
    #[arg(long, default_value = "warn")]
    unknown_words: UnknownWords,
    /// Sampling temperature for text (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
}

fn run(args: Args) -> Result<(), String> {
    // Everything the caller can get wrong is checked before the model loads (about a second).
    let options = GenerateOptions {
        seed: args.seed,
        max_tokens: args.max_tokens,
        sampling: SamplingOptions {
            temperature: args.temperature,
            ..Default::default()
        },
        steps: args.steps,
        sampler: args.sampler,
        guidance: args.guidance,
        unknown_words: args.unknown_words,
        ..Default::default()
    };
    options.validate().map_err(|e| e.to_string())?;
    let load = LoadOptions {
        precision: PartPrecisions::all(args.precision),
        threads: args.threads,
        device: args.device,
        ..Default::default()
    };
    load.validate().map_err(|e| e.to_string())?;
    let dir = common::model_dir(args.model)?;
    let model = Model::load(&dir, &load).map_err(|e| e.to_string())?;
    eprintln!(
        "loaded {} in {} ms ({})",
        dir.display(),
        model.load_time().as_millis(),
        model.precisions_line()
    );
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] step {pos}/{len} {elapsed}")
            .map_err(|e| e.to_string())?
            .progress_chars("=> "),
    );
    let output = model
        .generate(
            Request::Image {
                prompt: &args.prompt,
            },
            &options,
            |event| {
                match event {
                    Event::ImageStart { index, steps } => {
                        bar.set_prefix(format!("image {index}"));
                        bar.set_length(steps as u64);
                        bar.set_position(0);
                    }
                    Event::Step { index, .. } => bar.set_position(index as u64 + 1),
                    Event::Image { .. } => bar.finish_and_clear(),
                    Event::UnknownWords { words } => bar.suspend(|| {
                        eprintln!(
                            "warning: the model does not know {} (drawn as its unknown token)",
                            words.join(", ")
                        )
                    }),
                    _ => {}
                }
                Control::Continue
            },
        )
        .map_err(|e| e.to_string())?;
    let mut saved = 0;
    for segment in &output.segments {
        match segment {
            Segment::Text(text) => println!("{text}"),
            Segment::Image(image) => {
                let path = if saved == 0 {
                    args.output.clone()
                } else {
                    let stem = args.output.with_extension("");
                    PathBuf::from(format!("{}-{saved}.png", stem.display()))
                };
                image.save_png(&path).map_err(|e| e.to_string())?;
                eprintln!(
                    "wrote {} ({}x{})",
                    path.display(),
                    image.width(),
                    image.height()
                );
                saved += 1;
            }
        }
    }
    let t = &output.timings;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    eprintln!(
        "timings: total {:.1} ms | backbone {:.1} | patch {:.1} | vae {:.1} | text {:.1} | host {:.1}",
        ms(t.total),
        ms(t.graph(GraphId::Backbone)),
        ms(t.graph(GraphId::PatchIn) + t.graph(GraphId::PatchOut)),
        ms(t.graph(GraphId::VaeDecoder) + t.graph(GraphId::VaeEncoder)),
        ms(t.graph(GraphId::TextEmbed) + t.graph(GraphId::LmHead)),
        ms(t.host)
    );
    Ok(())
}

fn main() -> ExitCode {
    common::main_with(|| run(Args::parse()))
}
