//! The smallest device app: load a bundle, draw one prompt, save the PNG.
//!
//! ```sh
//! cargo run --release --example embed -- models/shapes64/bundle "three green squares"
//! ```

use transfusion_sdk::{Control, GenerateOptions, LoadOptions, Model, Request};

fn main() -> Result<(), transfusion_sdk::Error> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .unwrap_or_else(|| "models/shapes64/bundle".into());
    let prompt = args.next().unwrap_or_else(|| "a red circle".into());
    let model = Model::load(&dir, &LoadOptions::default())?;
    let request = Request::Image { prompt: &prompt };
    let out = model.generate(request, &GenerateOptions::default(), |_| Control::Continue)?;
    for (i, image) in out.images().iter().enumerate() {
        image.save_png(format!("embed-{i}.png"))?;
    }
    println!("{} image(s) in {:?}", out.images().len(), out.timings.total);
    Ok(())
}
