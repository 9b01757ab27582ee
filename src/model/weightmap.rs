//! `weightmap.json`: for each external ONNX initializer, the base parameter it is made from and how.
//!
//! Written by `scripts/export_model.py`; the patch step follows it to assemble the weights buffer.

use serde::{Deserialize, Serialize};

/// How an initializer is made from its source parameter (torch layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transform {
    Identity,
    /// A 2-D weight stored as its transpose (third-party exports' `onnx::MatMul_*`).
    Transpose,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightMapEntry {
    /// ONNX initializer name.
    pub name: String,
    /// Parameter name in `weights.safetensors` (diffusers naming, torch layout).
    pub source: String,
    pub transform: Transform,
    /// Element type of the initializer (numpy name), which may differ from the stored weights'.
    pub dtype: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub length: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightMap {
    pub format: u32,
    /// The external-data file name the graph refers to; it is assembled in memory, never read.
    pub external_file: String,
    pub initializers: Vec<WeightMapEntry>,
}
