//! Patching: the in-memory external-data buffer ONNX Runtime reads the weights from, assembled from the
//! pristine base weights plus adapter deltas (`base ⊕ Σ strength·ΔW`, f32 accumulation, one rounding).

pub mod buffer;
mod inflight;
pub mod lowrank;
pub mod program;

#[cfg(unix)]
pub use buffer::assemble_graph_to;
pub use buffer::{
    assemble, assemble_graph, fill_each, fill_each_in, graph_of, pristine, return_freed_memory,
    zeroed_buffer, DeltaSource, Elems, Filled, PatchError, PatchStats, SourceTerm, TermOrigin,
};
