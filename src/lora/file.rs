//! Adapter files: a defensive `.safetensors` reader over a memory map, keeping `__metadata__` leniently.
//!
//! Every offset, shape and dtype in the header is checked against the file before a byte is read;
//! pickle formats are refused because loading them can run code.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use serde_json::Value;
use thiserror::Error;

use super::tensor::Tensor;

/// A header larger than this is not a LoRA (the real limit of the format is 100 MB).
const MAX_HEADER: u64 = 100 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum FileError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: this is a pickle-based file ({what}); loading it can run arbitrary code, so stipple refuses it. \
         Convert it to .safetensors first (e.g. with a trusted Python: torch.load + safetensors.torch.save_file)"
    )]
    Pickle { path: PathBuf, what: String },
    #[error("{path}: not a safetensors file: {why}")]
    Malformed { path: PathBuf, why: String },
    #[error("{path}: tensor {name}: {why}")]
    BadTensor {
        path: PathBuf,
        name: String,
        why: String,
    },
    #[error("{path}: no tensor named {name}")]
    Missing { path: PathBuf, name: String },
}

/// Element types we decode. Integers appear only as scalars (alpha written by svd_merge, IA3 `on_input`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum StoredDtype {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
}

impl StoredDtype {
    fn parse(s: &str) -> Option<StoredDtype> {
        Some(match s {
            "F32" => StoredDtype::F32,
            "F16" => StoredDtype::F16,
            "BF16" => StoredDtype::BF16,
            "F64" => StoredDtype::F64,
            "I64" => StoredDtype::I64,
            "I32" => StoredDtype::I32,
            _ => return None,
        })
    }
    pub fn size(self) -> usize {
        match self {
            StoredDtype::F16 | StoredDtype::BF16 => 2,
            StoredDtype::F32 | StoredDtype::I32 => 4,
            StoredDtype::F64 | StoredDtype::I64 => 8,
        }
    }
}

/// Where one tensor lives in the data section.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub dtype: StoredDtype,
    pub shape: Vec<usize>,
    /// Byte range inside the data section (after the 8-byte length and the header).
    pub start: usize,
    pub end: usize,
}

enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// An opened adapter file. Tensors are decoded to f32 on demand.
pub struct Adapter {
    path: PathBuf,
    bytes: Bytes,
    data_start: usize,
    tensors: BTreeMap<String, TensorInfo>,
    metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adapter")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Maps `file` read-only.
///
/// Contract: the mapping is only ever read through `&[u8]`; it stays valid as long as the returned `Mmap`
/// lives. Another process truncating or rewriting the file while it is mapped is undefined behaviour
/// in Rust terms (in practice SIGBUS or changed bytes); adapter folders are not written while stipple
/// runs, and every offset is validated against the length seen at map time.
fn map_file(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: see the contract above; we never create a mutable view.
    unsafe { Mmap::map(file) }
}

pub(crate) fn pickle_kind(path: &Path, head: &[u8]) -> Option<String> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    if let Some(e) = ext.as_deref() {
        if matches!(e, "ckpt" | "pt" | "pth" | "bin" | "pkl" | "pickle") {
            return Some(format!(".{e}"));
        }
    }
    if head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
        return Some("pickle stream".into());
    }
    if head.starts_with(b"PK\x03\x04") {
        return Some("zip archive (torch.save)".into());
    }
    None
}

impl Adapter {
    /// Opens and validates a `.safetensors` adapter, memory-mapping its data.
    pub fn open(path: impl AsRef<Path>) -> Result<Adapter, super::LoraError> {
        Ok(Self::open_file(path.as_ref())?)
    }

    /// [`Adapter::open`] with this module's own error type.
    pub fn open_file(path: &Path) -> Result<Adapter, FileError> {
        let path = path.to_path_buf();
        let io = |source| FileError::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io)?;
        let map = map_file(&file).map_err(io)?;
        if let Some(what) = pickle_kind(&path, &map[..map.len().min(8)]) {
            return Err(FileError::Pickle { path, what });
        }
        Self::parse(path, Bytes::Mapped(map))
    }

    /// Parses an in-memory safetensors image (benchmarks, tests).
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Adapter, FileError> {
        Self::parse(name.into(), Bytes::Owned(bytes))
    }

    fn parse(path: PathBuf, bytes: Bytes) -> Result<Adapter, FileError> {
        let bad = |why: String| FileError::Malformed {
            path: path.clone(),
            why,
        };
        let buf = bytes.as_slice();
        if buf.len() < 8 {
            return Err(bad(format!(
                "{} bytes, shorter than the 8-byte header length",
                buf.len()
            )));
        }
        let mut len8 = [0u8; 8];
        len8.copy_from_slice(&buf[..8]);
        let hlen = u64::from_le_bytes(len8);
        let avail = buf.len() as u64 - 8;
        if hlen > MAX_HEADER || hlen > avail {
            return Err(bad(match crate::model::checkpoint::text_start(buf) {
                Some(text) => format!("it begins with text ({text:?}), not a header length"),
                None => format!(
                    "its first 8 bytes say the header is {hlen} bytes, which runs past the end of the file ({avail} bytes follow)"
                ),
            }));
        }
        let data_start = 8 + hlen as usize;
        let header = std::str::from_utf8(&buf[8..data_start])
            .map_err(|e| bad(format!("header is not UTF-8: {e}")))?;
        let root: serde_json::Map<String, Value> = serde_json::from_str(header.trim_end())
            .map_err(|e| bad(format!("header is not a JSON object: {e}")))?;
        let data_len = buf.len() - data_start;
        let mut tensors = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        for (name, v) in root {
            if name == "__metadata__" {
                // Lenient: other writers put numbers or objects here; keep them as their JSON text.
                if let Value::Object(m) = v {
                    for (k, val) in m {
                        let s = match val {
                            Value::String(s) => s,
                            other => other.to_string(),
                        };
                        metadata.insert(k, s);
                    }
                }
                continue;
            }
            let tbad = |why: String| FileError::BadTensor {
                path: path.clone(),
                name: name.clone(),
                why,
            };
            let dtype_s = v
                .get("dtype")
                .and_then(Value::as_str)
                .ok_or_else(|| tbad("no dtype".into()))?;
            let dtype = StoredDtype::parse(dtype_s)
                .ok_or_else(|| tbad(format!("unsupported dtype {dtype_s}")))?;
            let shape: Vec<usize> = v
                .get("shape")
                .and_then(Value::as_array)
                .ok_or_else(|| tbad("no shape".into()))?
                .iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect::<Option<_>>()
                .ok_or_else(|| tbad("shape is not a list of sizes".into()))?;
            let offs: Vec<usize> = v
                .get("data_offsets")
                .and_then(Value::as_array)
                .ok_or_else(|| tbad("no data_offsets".into()))?
                .iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect::<Option<_>>()
                .ok_or_else(|| tbad("data_offsets are not sizes".into()))?;
            let [start, end] = offs[..] else {
                return Err(tbad("data_offsets must have two entries".into()));
            };
            if start > end || end > data_len {
                return Err(tbad(format!(
                    "bytes {start}..{end} lie outside the data section ({data_len} bytes)"
                )));
            }
            let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            let want = numel.and_then(|n| n.checked_mul(dtype.size()));
            if want != Some(end - start) {
                return Err(tbad(format!(
                    "shape {shape:?} of {dtype_s} needs {} bytes but the offsets give {}",
                    want.map_or("too many".to_string(), |w| w.to_string()),
                    end - start
                )));
            }
            tensors.insert(
                name,
                TensorInfo {
                    dtype,
                    shape,
                    start,
                    end,
                },
            );
        }
        let mut spans: Vec<(&String, &TensorInfo)> =
            tensors.iter().filter(|(_, t)| t.end > t.start).collect();
        spans.sort_by_key(|(_, t)| (t.start, t.end));
        for w in spans.windows(2) {
            if w[1].1.start < w[0].1.end {
                return Err(bad(format!(
                    "tensors {} and {} overlap in the data section",
                    w[0].0, w[1].0
                )));
            }
        }
        Ok(Adapter {
            path,
            bytes,
            data_start,
            tensors,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// File name without extension, as a display name.
    pub fn name(&self) -> String {
        self.path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The whole file, for hashing.
    pub fn raw_bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// Offset of the tensor data (8 + header length): AutoV3 and `sshs_model_hash` hash from here.
    pub fn data_start(&self) -> usize {
        self.data_start
    }

    /// Decodes a tensor to f32.
    pub fn tensor(&self, name: &str) -> Result<Tensor, FileError> {
        let info = self.tensors.get(name).ok_or_else(|| FileError::Missing {
            path: self.path.clone(),
            name: name.to_string(),
        })?;
        let raw = &self.bytes.as_slice()[self.data_start + info.start..self.data_start + info.end];
        let data: Vec<f32> = match info.dtype {
            StoredDtype::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            StoredDtype::F16 => raw
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            StoredDtype::BF16 => raw
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            StoredDtype::F64 => raw
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(arr8(c)) as f32)
                .collect(),
            StoredDtype::I64 => raw
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(arr8(c)) as f32)
                .collect(),
            StoredDtype::I32 => raw
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
                .collect(),
        };
        Ok(Tensor::new(info.shape.clone(), data))
    }
}

fn arr8(c: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(c);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_file_is_not_a_safetensors_file() {
        let e = Adapter::from_bytes(
            "notes.safetensors",
            b"hello world, these are notes\n".to_vec(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a safetensors file"), "{e}");
        assert!(e.contains("begins with text (\"hello world"), "{e}");
        assert!(!e.contains("header is"), "{e}");
        // Binary junk still gets the length it claims.
        let mut junk = u64::MAX.to_le_bytes().to_vec();
        junk.extend_from_slice(&[0, 1, 2]);
        let e = Adapter::from_bytes("junk.safetensors", junk)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not a safetensors file") && e.contains("runs past the end"),
            "{e}"
        );
    }
}
