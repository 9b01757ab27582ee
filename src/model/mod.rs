//! A model: per component an ONNX graph with external weights, the base weights (memory-mapped
//! safetensors) and the weight map between them; plus the index, tokenizers and scheduler.
//!
//! [`Model::open`] takes a stipple folder, a diffusers folder or a single-file checkpoint (the
//! last two through an embedded architecture template, `template.rs`), checks it and gives
//! [`Component`]s.

pub mod assemble;
pub mod checkpoint;
pub mod diffusers_dir;
pub mod extra_tokens;
pub mod fold;
pub mod foldable;
pub mod fp32_graph;
pub mod graph;
pub mod hash;
pub mod index;
pub mod layout;
pub mod ldm;
pub mod models_root;
pub mod onnx_build;
#[allow(clippy::all)]
pub mod onnx_proto;
pub mod open;
pub mod prediction;
pub mod rgb_tail;
pub mod shards;
pub mod single_file;
pub mod template;
pub mod vae_cut;
pub mod vae_file;
pub mod weightmap;
pub mod widen;

pub use checkpoint::{Checkpoint, CheckpointError};
pub use graph::{ElemType, ExternalInit, Graph, GraphError};
pub use layout::{
    ComponentKind, Model, ModelError, ModelIndex, ModelSource, OpenOptions, TokenizerFiles,
};
pub use weightmap::{Transform, WeightMap, WeightMapEntry};
