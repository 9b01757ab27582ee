//! Generated ONNX protobuf types (prost), from onnx.proto of the `onnx` Python package 1.23.2,
//! in parts: [`graph`] (models, graphs, nodes, attributes, functions), [`tensor`] (tensors,
//! shapes, types) and [`version`] (IR version enums), all re-exported here.
//!
//! Regenerate with `scripts/gen_onnx_proto.sh`; never edit by hand.

pub mod graph;
pub mod tensor;
pub mod version;

pub use graph::*;
pub use tensor::*;
pub use version::*;
