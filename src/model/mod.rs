//! A stipple model folder: per component an ONNX graph with external weights, the base weights
//! (memory-mapped safetensors) and the weight map between them; plus `model_index.json` and the tokenizer.
//!
//! [`Model::open`] checks the folder and gives [`Component`]s; [`Model::check`] is what `doctor` prints.

pub mod checkpoint;
pub mod fold;
pub mod graph;
pub mod layout;
#[allow(clippy::all)]
pub mod onnx_proto;
pub mod weightmap;

pub use checkpoint::{Checkpoint, CheckpointError};
pub use graph::{ElemType, ExternalInit, Graph, GraphError};
pub use layout::{ComponentKind, Model, ModelError, ModelIndex};
pub use weightmap::{Transform, WeightMap, WeightMapEntry};
