//! Transfusion edge runtime: loads a converted bundle (see `docs/bundle.md`) and runs it with
//! tract — text, images inside the sequence (BOI … EOI) with a few-step sampler over the latent
//! patches, captioning and editing.
//!
//! ```no_run
//! use transfusion_sdk::{Control, Event, GenerateOptions, LoadOptions, Model, Request};
//! let model = Model::load("models/shapes64/bundle", &LoadOptions::default())?;
//! // One call per image:
//! model
//!     .generate_image("a red circle above a blue square", &GenerateOptions::default())?
//!     .save_png("generated.png")?;
//! // Or streamed, with progress and cancellation:
//! let out = model.generate(
//!     Request::Image { prompt: "three green squares" },
//!     &GenerateOptions::default(),
//!     |event| {
//!         if let Event::Step { index, total, .. } = event {
//!             eprintln!("step {}/{total}", index + 1);
//!         }
//!         Control::Continue
//!     },
//! )?;
//! out.images()[0].save_png("squares.png")?;
//! # Ok::<(), transfusion_sdk::Error>(())
//! ```
//!
//! The API carries no type of the engine underneath (tract, pinned): an engine update is not
//! a breaking change for apps. The `engine` feature opens that layer for this project's own
//! tools (the `engine` module, unstable). The C ABI over this API is the `transfusion-ffi` crate.
//! docs/api.md covers options, errors, threading and the C API.

// Input reaches most of this crate (bundles, prompts, images, options): no panicking shortcuts
// outside tests, and no indexing that can panic (iterators, `get`, `chunks_exact` instead).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

#[cfg(feature = "cuda")]
extern crate tract_cuda; // links tract-cuda so its `cuda` runtime registers itself

pub mod config;
pub mod diffusion;
#[cfg(feature = "engine")]
pub mod engine;
pub mod error;
mod fused;
pub mod generate;
mod graph;
pub mod graph_id;
/// RGB8 images (the `transfusion-image` crate, re-exported): what generation returns and
/// captioning reads.
pub mod image {
    pub use transfusion_image::{rgb_len, Error as ImageError, RgbImage, DEFAULT_MAX_PIXELS};
}
pub mod limits;
pub mod manifest;
mod model;
pub mod options;
pub mod platform;
pub mod sampling;
pub mod session;
pub mod text;

pub use config::Config;
pub use error::{Error, Result};
pub use generate::{Control, Event, Output, Request, Segment, StopReason};
pub use graph::KernelSummary;
pub use graph_id::{GraphId, ModelPart, PerGraph};
pub use image::RgbImage;
pub use manifest::Precision;
pub use model::{native_fp16, Model};
pub use options::{
    Device, GenerateOptions, LoadOptions, PartPrecisions, PrecisionChoice, UnknownWords,
};
pub use sampling::SamplingOptions;

/// The README's SDK snippet, compiled as a doctest so it can not go stale.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// The Rust example of docs/api.md, compiled as a doctest too.
#[cfg(doctest)]
#[doc = include_str!("../../docs/api.md")]
pub struct ApiDocDoctests;
pub use session::{Session, Timings};
