//! Reads an ONNX `model.onnx` and indexes its external-data initializers (name, type, dims, offset).
//!
//! [`Graph::read`] keeps the serialized bytes (handed to ONNX Runtime unchanged) and the index.

use super::onnx_proto::{tensor_proto::DataLocation, ModelProto};
use prost::Message;
use std::path::{Path, PathBuf};

/// Element types stipple reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElemType {
    F32,
    F16,
    Bf16,
    Other(i32),
}

impl ElemType {
    pub fn from_onnx(code: i32) -> Self {
        match code {
            1 => ElemType::F32,
            10 => ElemType::F16,
            16 => ElemType::Bf16,
            c => ElemType::Other(c),
        }
    }

    pub fn size(self) -> Option<usize> {
        match self {
            ElemType::F32 => Some(4),
            ElemType::F16 | ElemType::Bf16 => Some(2),
            ElemType::Other(_) => None,
        }
    }

    /// The name the weight map uses (numpy's).
    pub fn name(self) -> String {
        match self {
            ElemType::F32 => "float32".into(),
            ElemType::F16 => "float16".into(),
            ElemType::Bf16 => "bfloat16".into(),
            ElemType::Other(c) => format!("onnx-type-{c}"),
        }
    }
}

/// An initializer whose data lives in an external file.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalInit {
    pub name: String,
    pub elem: ElemType,
    pub dims: Vec<usize>,
    pub location: String,
    pub offset: usize,
    pub length: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid ONNX model: {source}")]
    Decode {
        path: PathBuf,
        source: prost::DecodeError,
    },
    #[error("{path} has no graph")]
    NoGraph { path: PathBuf },
    #[error("{path}: initializer {name:?}: {problem}")]
    BadInitializer {
        path: PathBuf,
        name: String,
        problem: String,
    },
}

/// A decoded graph: the bytes for ONNX Runtime and the index of external initializers.
#[derive(Clone)]
pub struct Graph {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub externals: Vec<ExternalInit>,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

impl Graph {
    pub fn read(path: &Path) -> Result<Graph, GraphError> {
        let bytes = std::fs::read(path).map_err(|source| GraphError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Graph::from_bytes(path, bytes)
    }

    /// Indexes the ONNX model `bytes` (`path` names it in errors).
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Graph, GraphError> {
        let model = ModelProto::decode(bytes.as_slice()).map_err(|source| GraphError::Decode {
            path: path.to_path_buf(),
            source,
        })?;
        let graph = model.graph.ok_or_else(|| GraphError::NoGraph {
            path: path.to_path_buf(),
        })?;
        let mut externals = Vec::new();
        for init in &graph.initializer {
            if init.data_location() != DataLocation::External {
                continue;
            }
            let bad = |problem: String| GraphError::BadInitializer {
                path: path.to_path_buf(),
                name: init.name().to_string(),
                problem,
            };
            let mut location = None;
            let mut offset = 0usize;
            let mut length = None;
            for kv in &init.external_data {
                let value = kv.value();
                match kv.key() {
                    "location" => location = Some(value.to_string()),
                    "offset" => {
                        offset = value
                            .parse()
                            .map_err(|_| bad(format!("offset {value:?} is not a number")))?
                    }
                    "length" => {
                        length = Some(
                            value
                                .parse()
                                .map_err(|_| bad(format!("length {value:?} is not a number")))?,
                        )
                    }
                    _ => {}
                }
            }
            let dims = init
                .dims
                .iter()
                .map(|&d| usize::try_from(d).map_err(|_| bad(format!("negative dimension {d}"))))
                .collect::<Result<Vec<_>, _>>()?;
            let elem = ElemType::from_onnx(init.data_type());
            let numel: usize = dims.iter().product();
            let expected = elem.size().map(|s| s * numel);
            let length = match (length, expected) {
                (Some(l), Some(e)) if l != e => {
                    return Err(bad(format!(
                        "length {l} but {numel} elements need {e} bytes"
                    )))
                }
                (Some(l), _) => l,
                (None, Some(e)) => e,
                (None, None) => return Err(bad("no length and an unknown element type".into())),
            };
            externals.push(ExternalInit {
                name: init.name().to_string(),
                elem,
                dims,
                location: location.ok_or_else(|| bad("no location".into()))?,
                offset,
                length,
            });
        }
        Ok(Graph {
            path: path.to_path_buf(),
            bytes,
            externals,
            inputs: graph.input.iter().map(|v| v.name().to_string()).collect(),
            outputs: graph.output.iter().map(|v| v.name().to_string()).collect(),
        })
    }
}

/// Which of a component's graphs a session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GraphKind {
    /// `model.onnx`: every execution provider.
    #[default]
    Plain,
    /// `model.cuda.onnx`: ONNX Runtime's fused operators, CUDA only (the UNet); the fp16 graph of
    /// the VAE and the text encoders (standard operators).
    Cuda,
    /// `model.fused.onnx`: the VAE decoder's fused fp16 graph (ONNX Runtime's contrib operators,
    /// CUDA only).
    Fused,
    /// The VAE decoder's fused graph made f32 by stipple at load ([`super::fp32_graph`]): what an
    /// fp32 VAE runs on CUDA (SDXL's own VAE, `--vae-precision fp32`, the fp16 overflow fallback).
    /// No file of its own.
    Fused32,
}
