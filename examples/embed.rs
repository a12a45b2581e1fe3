//! The smallest device app: load a bundle, draw one prompt, save the PNG.
//!
//! ```sh
//! cargo run --release --example embed -- "three green squares"
//! cargo run --release --example embed -- "a red circle" path/to/bundle
//! ```
//!
//! Without a bundle argument it uses the shipped default model (converted from its checkpoint
//! on first use, as every example does). An app on a device passes its bundle directory and
//! needs only `transfusion_sdk`.

mod common;

use std::process::ExitCode;

use transfusion_sdk::{GenerateOptions, LoadOptions, Model};

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let prompt = args.next().unwrap_or_else(|| "a red circle".into());
    let dir = common::model_dir(args.next().map(Into::into))?;
    let model = Model::load(&dir, &LoadOptions::default()).map_err(|e| e.to_string())?;
    let image = model
        .generate_image(&prompt, &GenerateOptions::default())
        .map_err(|e| e.to_string())?;
    image.save_png("embed.png").map_err(|e| e.to_string())?;
    println!("wrote embed.png ({}x{})", image.width(), image.height());
    Ok(())
}

fn main() -> ExitCode {
    common::main_with(run)
}
