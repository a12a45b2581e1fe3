//! Transfusion edge runtime: loads a converted bundle (see `docs/bundle.md`) and runs it with tract.

pub mod config;
pub mod error;
pub mod graph;
pub mod manifest;

pub use config::Config;
pub use error::{Error, Result};
