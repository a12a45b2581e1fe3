//! Transfusion edge runtime: loads a converted bundle (see `docs/bundle.md`) and runs it with tract.

pub mod config;
pub mod diffusion;
pub mod error;
pub mod graph;
pub mod image;
pub mod manifest;
pub mod sampling;
pub mod text;

pub use config::Config;
pub use error::{Error, Result};
