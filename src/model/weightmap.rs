//! `weightmap.json`: for each external ONNX initializer, the base parameter it is made from and how.
//!
//! Written by `scripts/export_model.py` (`weightmap.json` for the plain graph, `weightmap.cuda.json`
//! for ONNX Runtime's SD-fused graph); the patch step follows it to assemble the weights buffer.

use serde::{Deserialize, Serialize};

/// How an initializer is made from its source parameter (torch layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    Identity,
    /// A 2-D weight stored as its transpose (third-party exports' `onnx::MatMul_*`).
    Transpose,
    /// A Conv weight `[out, in, kh, kw]` stored as `[out, kh, kw, in]` (ONNX Runtime's NhwcConv).
    Nhwc,
    /// Several Linear weights `[heads*dim, in]` (Q, K, V or K, V: the entry's `parts`) packed as
    /// `[in, heads*k*dim]`, interleaved per head: column `(n*k + i)*dim + d` is row `n*dim + d` of
    /// part `i` (ONNX Runtime's packed QKV/KV for MultiHeadAttention). With one head, the weights'
    /// transposes side by side (the Attention operator's QKV weight). Biases `[heads*dim]` pack the
    /// same way into `[heads*k*dim]`.
    PackHeads,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightMapEntry {
    /// ONNX initializer name.
    pub name: String,
    /// Parameter name in `weights.safetensors` (diffusers naming, torch layout).
    pub source: String,
    pub transform: Transform,
    /// The packed parameters of a `pack_heads` entry, in order (`source` is the first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<String>,
    /// Attention heads of a `pack_heads` entry.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub heads: usize,
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

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl WeightMapEntry {
    /// The parameters this initializer is built from.
    pub fn sources(&self) -> Vec<&str> {
        if self.parts.is_empty() {
            vec![self.source.as_str()]
        } else {
            self.parts.iter().map(String::as_str).collect()
        }
    }
}
