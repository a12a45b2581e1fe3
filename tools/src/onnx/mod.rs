//! ONNX export: a small graph builder, the model's layers, and the seven bundle graphs.

pub mod builder;
pub mod graphs;
pub mod layers;
pub mod quant;

pub use graphs::{build_graph, Graph};
pub use quant::{Int8Parts, QuantGroup};
