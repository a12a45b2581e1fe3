//! The synthetic "shapes" domain of the `shapes64` model: one specification ([`spec`]) read by
//! the dataset generator and the evaluator, scenes drawn from a seed ([`scene`]), their captions
//! ([`caption`]), a flat-colour rasteriser ([`render`]) and the dataset file ([`dataset`]).
//!
//! `docs/dataset.md` describes the grammar, the held-out split and the file byte by byte.

pub mod caption;
pub mod dataset;
pub mod render;
pub mod scene;
pub mod spec;

pub use dataset::{write_dataset, DatasetOptions, DatasetSummary};
pub use scene::{sample, Object, Sample, Scene, SceneKind, Split};
pub use spec::{Colour, Position, Relation, Shape, Size};
