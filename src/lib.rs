//! Examples for the Transfusion edge runtime live in `examples/`; this crate only re-exports the SDK.
pub use transfusion_sdk as sdk;
