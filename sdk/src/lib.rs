//! Transfusion edge runtime: loads a converted bundle (see `docs/bundle.md`) and runs it with
//! tract — text, images inside the sequence (BOI … EOI) with a few-step sampler over the latent
//! patches, captioning and editing.
//!
//! ```no_run
//! use transfusion_sdk::{GenerateOptions, LoadOptions, Model, Request, Control};
//! let model = Model::load("models/shapes64/bundle", &LoadOptions::default())?;
//! let out = model.generate(
//!     Request::Image { prompt: "a red circle above a blue square" },
//!     &GenerateOptions::default(),
//!     |_event| Control::Continue,
//! )?;
//! out.images()[0].save_png("generated.png")?;
//! # Ok::<(), transfusion_sdk::Error>(())
//! ```

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
pub mod image;
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
pub use session::{Session, Timings};
