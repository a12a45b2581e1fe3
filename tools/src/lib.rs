//! Host-side Transfusion tools: checkpoint presets and initialisation, loading and saving,
//! conversion to ONNX bundles (FP32/FP16/INT8), inspection and verification against PyTorch.
// Checkpoints, bundles and datasets come from elsewhere: no panicking shortcuts outside tests.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod bench;
pub mod checkpoint;
pub mod convert;
pub mod devices;
pub mod error;
pub mod eval;
pub mod init;
pub mod inspect;
pub mod onnx;
pub mod presets;
pub mod publish;
pub mod shapes;
pub mod tensors;
pub mod verify;
pub mod vocab;
