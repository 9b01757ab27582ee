//! Writing `.safetensors` files: header with `__metadata__`, tensors in the order given, and an atomic
//! variant (temporary sibling, then rename) so a reader never sees half a file.
//!
//! Shared by `bake` (model weights) and `lora merge`/`extract` (adapter files).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Element types this writer emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
}

impl Dtype {
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
        }
    }

    /// Little-endian bytes of `values` in this dtype (round to nearest).
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            Dtype::F32 => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dtype::F16 => values
                .iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect(),
            Dtype::BF16 => values
                .iter()
                .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                .collect(),
        }
    }
}

/// One tensor to write: its bytes are already in `dtype`.
pub struct OutTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// Writes `tensors` and `metadata` to `dest` (created or truncated).
pub fn write(
    dest: &Path,
    tensors: &[OutTensor],
    metadata: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    let mut obj = serde_json::Map::new();
    if !metadata.is_empty() {
        let meta = metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        obj.insert("__metadata__".into(), serde_json::Value::Object(meta));
    }
    let mut offset = 0usize;
    for t in tensors {
        let n: usize = t.shape.iter().product();
        let size = match t.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
        };
        if n * size != t.bytes.len() {
            return Err(std::io::Error::other(format!(
                "tensor {}: shape {:?} needs {} bytes, got {}",
                t.name,
                t.shape,
                n * size,
                t.bytes.len()
            )));
        }
        obj.insert(
            t.name.clone(),
            serde_json::json!({
                "dtype": t.dtype.name(),
                "shape": t.shape,
                "data_offsets": [offset, offset + t.bytes.len()],
            }),
        );
        offset += t.bytes.len();
    }
    let mut head =
        serde_json::to_vec(&serde_json::Value::Object(obj)).map_err(std::io::Error::other)?;
    // The format pads the header with spaces to keep the data 8-byte aligned.
    while head.len() % 8 != 0 {
        head.push(b' ');
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(dest)?);
    f.write_all(&(head.len() as u64).to_le_bytes())?;
    f.write_all(&head)?;
    for t in tensors {
        f.write_all(&t.bytes)?;
    }
    f.flush()?;
    f.get_ref().sync_all()
}

/// [`write`] through a temporary sibling and a rename: `dest` is either the old file or the new one.
pub fn write_atomic(
    dest: &Path,
    tensors: &[OutTensor],
    metadata: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    let tmp = temp_sibling(dest);
    let result = write(&tmp, tensors, metadata).and_then(|()| std::fs::rename(&tmp, dest));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn temp_sibling(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.writing-{}", std::process::id()))
}
