//! The tract layer under the SDK, for the project's own tools (the converter's `verify`,
//! `inspect`, `bench --profile`) and fuzz harnesses: single graphs loaded and run with tract
//! tensors, the GPU runtime, the SDK's load-time operator rewrites.
//!
//! Only with the `engine` feature, and outside the SDK's stability promise: these signatures
//! carry tract types (pinned at `=0.23.9`) and change with every tract release. Apps use
//! [`Model`](crate::Model) and [`Session`](crate::Session), which carry none.

pub use crate::fused::{apply as apply_fused_ops, DynamicQuantizeU8, Rewrites};
pub use crate::graph::{eval_node, tensor_to_f32, Graph};
pub use crate::model::{float_tensor, gpu_runtime, output_f32, GraphLoader};
/// The tract version these signatures use.
pub use tract_onnx;
