//! Describe a PNG with a Transfusion bundle:
//!
//! ```sh
//! cargo run --release --example caption -- picture.png
//! ```

mod common;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use transfusion_sdk::{
    Control, Event, GenerateOptions, LoadOptions, Model, PartPrecisions, PrecisionChoice, Request,
    RgbImage,
};

#[derive(Parser)]
#[command(about = "Caption an image with a Transfusion bundle")]
struct Args {
    /// PNG to describe (resized to the model's size if needed).
    image: PathBuf,
    /// Bundle directory (default: models/shapes64/bundle).
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    #[arg(long, default_value = "auto")]
    precision: PrecisionChoice,
    #[arg(long)]
    threads: Option<usize>,
}

fn run(args: Args) -> Result<(), String> {
    // Everything the caller can get wrong is checked before the model loads.
    let options = GenerateOptions {
        max_tokens: Some(args.max_tokens),
        max_images: 0,
        ..Default::default()
    };
    options.validate().map_err(|e| e.to_string())?;
    let load = LoadOptions {
        precision: PartPrecisions::all(args.precision),
        threads: args.threads,
        ..Default::default()
    };
    load.validate().map_err(|e| e.to_string())?;
    let image = RgbImage::load_png(&args.image).map_err(|e| e.to_string())?;
    let dir = common::model_dir(args.model)?;
    let model = Model::load(&dir, &load).map_err(|e| e.to_string())?;
    let out = model
        .generate(Request::Caption { image: &image }, &options, |event| {
            if let Event::Token { text, .. } = event {
                eprint!("{text} ");
            }
            Control::Continue
        })
        .map_err(|e| e.to_string())?;
    eprintln!();
    println!("{}", out.text());
    eprintln!("{:.1} ms", out.timings.total.as_secs_f64() * 1e3);
    Ok(())
}

fn main() -> ExitCode {
    common::main_with(|| run(Args::parse()))
}
