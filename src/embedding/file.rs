//! One embedding file: [`Embedding::read`] reads a `.safetensors` textual inversion (A1111's
//! `emb_params`, a `string_to_param` or any single tensor; SDXL's `clip_l` + `clip_g` pair), with
//! every shape and value checked, and its sha256 (A1111 hashes the whole file).

use super::EmbeddingError;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Larger than this is no embedding (real ones are a few KB; a LoRA or checkpoint is MBs).
const MAX_BYTES: u64 = 16 * 1024 * 1024;

/// An embedding has at most one chunk's worth of vectors (A1111 keeps one inside a chunk).
pub const MAX_VECTORS: usize = crate::prompt::CHUNK_LEN;

/// What the file holds, by text encoder.
#[derive(Debug, Clone, PartialEq)]
pub enum Vectors {
    /// One text encoder (SD 1.x: 768 wide, SD 2.x: 1024): `[n, width]` row-major.
    Single { width: usize, data: Vec<f32> },
    /// SDXL: CLIP-L (`clip_l`) and OpenCLIP-bigG (`clip_g`) rows, the same count of each.
    Pair {
        l_width: usize,
        l: Vec<f32>,
        g_width: usize,
        g: Vec<f32>,
    },
}

/// A textual-inversion embedding read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// The file stem: the word that stands for it in prompts.
    pub name: String,
    pub path: PathBuf,
    /// How many tokens it takes in a prompt.
    pub count: usize,
    pub vectors: Vectors,
    /// sha256 of the whole file, hex.
    pub sha256: String,
}

impl Embedding {
    /// A1111's short hash (`TI hashes`): the first 12 hex digits of the file's sha256.
    pub fn short_hash(&self) -> &str {
        &self.sha256[..12.min(self.sha256.len())]
    }

    /// What the file is, for messages: "an SD 1.x embedding (768 wide)", "an SDXL embedding".
    pub fn kind(&self) -> String {
        match &self.vectors {
            Vectors::Single { width, .. } => match family_of_width(*width) {
                Some(f) => format!("an {f} embedding ({width} wide)"),
                None => format!("a one-encoder embedding ({width} wide)"),
            },
            Vectors::Pair {
                l_width, g_width, ..
            } => format!("an SDXL embedding (clip_l {l_width} wide, clip_g {g_width} wide)"),
        }
    }

    /// The rows for each text encoder of a model whose encoders have `widths`; an error naming the
    /// embedding's kind and the model's family (`family`) when they do not fit.
    pub fn rows_for(&self, widths: &[usize], family: &str) -> Result<Vec<&[f32]>, EmbeddingError> {
        let fits = match (&self.vectors, widths) {
            (Vectors::Single { width, data }, [w]) if width == w => Some(vec![data.as_slice()]),
            (
                Vectors::Pair {
                    l_width,
                    l,
                    g_width,
                    g,
                },
                [wl, wg],
            ) if l_width == wl && g_width == wg => Some(vec![l.as_slice(), g.as_slice()]),
            _ => None,
        };
        fits.ok_or_else(|| EmbeddingError::WrongFamily {
            name: self.name.clone(),
            path: self.path.clone(),
            kind: self.kind(),
            family: family.to_string(),
            widths: widths
                .iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
                .join(" + "),
        })
    }

    /// Reads and checks `path` (named `name` in prompts).
    pub fn read(path: &Path, name: &str) -> Result<Embedding, EmbeddingError> {
        let bad = |why: String| EmbeddingError::Malformed {
            path: path.to_path_buf(),
            why,
        };
        let io = |source| EmbeddingError::Io {
            path: path.to_path_buf(),
            source,
        };
        let size = std::fs::metadata(path).map_err(io)?.len();
        if size > MAX_BYTES {
            return Err(bad(format!(
                "{size} bytes is too large for an embedding (a LoRA or a checkpoint?)"
            )));
        }
        let bytes = std::fs::read(path).map_err(io)?;
        if let Some(what) = crate::lora::file::pickle_kind(path, &bytes[..bytes.len().min(8)]) {
            return Err(EmbeddingError::Pickle {
                path: path.to_path_buf(),
                what,
            });
        }
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
            bad(match crate::model::checkpoint::text_start(&bytes) {
                Some(t) => format!("not a safetensors file: it begins with text ({t:?})"),
                None => format!("not a safetensors file: {e}"),
            })
        })?;
        let names = st.names();
        let read = |key: &str| -> Result<(usize, usize, Vec<f32>), EmbeddingError> {
            let t = st
                .tensor(key)
                .map_err(|e| bad(format!("tensor {key:?}: {e}")))?;
            let (rows, width) = match t.shape() {
                [w] => (1, *w),
                [n, w] => (*n, *w),
                s => {
                    return Err(bad(format!(
                        "tensor {key:?} has shape {s:?}; an embedding is [vectors, width]"
                    )))
                }
            };
            let data = to_f32(t.dtype(), t.data())
                .ok_or_else(|| bad(format!("tensor {key:?} is {:?}, not a float", t.dtype())))?;
            if rows == 0 || width == 0 {
                return Err(bad(format!("tensor {key:?} is empty")));
            }
            if rows > MAX_VECTORS {
                return Err(bad(format!(
                    "tensor {key:?} holds {rows} vectors; at most {MAX_VECTORS} fit in a prompt chunk"
                )));
            }
            if data.iter().any(|x| !x.is_finite()) {
                return Err(bad(format!("tensor {key:?} holds NaN or infinite values")));
            }
            Ok((rows, width, data))
        };
        let has = |k: &str| names.contains(&k);
        let (count, vectors) = if has("clip_l") && has("clip_g") {
            let (nl, l_width, l) = read("clip_l")?;
            let (ng, g_width, g) = read("clip_g")?;
            if nl != ng {
                return Err(bad(format!(
                    "clip_l holds {nl} vectors but clip_g {ng}; an SDXL embedding has as many of each"
                )));
            }
            (
                nl,
                Vectors::Pair {
                    l_width,
                    l,
                    g_width,
                    g,
                },
            )
        } else {
            let key = match names.as_slice() {
                [one] => one.to_string(),
                _ if has("emb_params") => "emb_params".to_string(),
                _ => {
                    let star: Vec<&&str> = names
                        .iter()
                        .filter(|n| n.starts_with("string_to_param"))
                        .collect();
                    match star.as_slice() {
                        [one] => one.to_string(),
                        _ => {
                            let mut shown: Vec<&str> = names.iter().take(4).copied().collect();
                            shown.sort_unstable();
                            return Err(bad(format!(
                                "{} tensors ({}{}) and no `emb_params`, `clip_l`/`clip_g` pair or single vector tensor: \
                                 not a textual-inversion embedding",
                                names.len(),
                                shown.join(", "),
                                if names.len() > 4 { ", ..." } else { "" }
                            )));
                        }
                    }
                }
            };
            let (n, width, data) = read(&key)?;
            (n, Vectors::Single { width, data })
        };
        Ok(Embedding {
            name: name.to_string(),
            path: path.to_path_buf(),
            count,
            vectors,
            sha256: Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        })
    }
}

/// The family an embedding of one tensor `width` wide was made for.
pub(super) fn family_of_width(width: usize) -> Option<&'static str> {
    match width {
        768 => Some("SD 1.x"),
        1024 => Some("SD 2.x"),
        _ => None,
    }
}

fn to_f32(dtype: safetensors::Dtype, data: &[u8]) -> Option<Vec<f32>> {
    use safetensors::Dtype as D;
    Some(match dtype {
        D::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        D::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        D::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        D::F64 => data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors image of F32 tensors (name, shape, values) or raw (name, dtype, shape, bytes).
    fn file(tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> tempfile::NamedTempFile {
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, dtype, shape, bytes) in tensors {
            let start = data.len();
            data.extend_from_slice(bytes);
            header.insert(
                name.to_string(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
            );
        }
        let h = serde_json::to_vec(&header).unwrap();
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend(h);
        out.extend(data);
        let f = tempfile::Builder::new()
            .suffix(".safetensors")
            .tempfile()
            .unwrap();
        std::fs::write(f.path(), out).unwrap();
        f
    }

    fn f32s(n: usize, v: f32) -> Vec<u8> {
        std::iter::repeat_n(v, n)
            .flat_map(f32::to_le_bytes)
            .collect()
    }

    fn read_err(f: &tempfile::NamedTempFile) -> String {
        Embedding::read(f.path(), "x").unwrap_err().to_string()
    }

    #[test]
    fn formats_are_read_with_their_vector_counts() {
        let one = file(&[("emb_params", "F32", vec![8], f32s(8, 0.5))]);
        let e = Embedding::read(one.path(), "one").unwrap();
        assert_eq!(e.count, 1);
        assert_eq!(e.rows_for(&[8], "SD1.x").unwrap()[0], &[0.5; 8]);
        assert!(e.rows_for(&[8, 8], "SDXL").is_err());
        let star = file(&[
            ("string_to_param.*", "F32", vec![3, 8], f32s(24, 1.0)),
            ("string_to_token.*", "F32", vec![1], f32s(1, 265.0)),
        ]);
        assert_eq!(Embedding::read(star.path(), "s").unwrap().count, 3);
        let xl = file(&[
            ("clip_g", "F32", vec![2, 12], f32s(24, 1.0)),
            ("clip_l", "F32", vec![2, 8], f32s(16, 2.0)),
        ]);
        let e = Embedding::read(xl.path(), "xl").unwrap();
        let rows = e.rows_for(&[8, 12], "SDXL").unwrap();
        assert_eq!((rows[0].len(), rows[1].len()), (16, 24));
        assert!(e.rows_for(&[768], "SD1.x").is_err());
        // The hash is the whole file's.
        let bytes = std::fs::read(xl.path()).unwrap();
        let want: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(e.short_hash(), &want[..12]);
    }

    #[test]
    fn shapes_counts_and_types_that_are_no_embedding_are_refused() {
        let uneven = file(&[
            ("clip_g", "F32", vec![3, 8], f32s(24, 1.0)),
            ("clip_l", "F32", vec![2, 8], f32s(16, 1.0)),
        ]);
        assert!(read_err(&uneven).contains("as many of each"));
        let long = file(&[("emb_params", "F32", vec![76, 2], f32s(152, 1.0))]);
        assert!(read_err(&long).contains("76 vectors"));
        let cube = file(&[("emb_params", "F32", vec![2, 2, 2], f32s(8, 1.0))]);
        assert!(read_err(&cube).contains("shape [2, 2, 2]"));
        let ints = file(&[("emb_params", "I32", vec![2], vec![0; 8])]);
        assert!(read_err(&ints).contains("not a float"));
        let empty = file(&[("emb_params", "F32", vec![0, 8], Vec::new())]);
        assert!(read_err(&empty).contains("empty"));
        let text = tempfile::Builder::new()
            .suffix(".safetensors")
            .tempfile()
            .unwrap();
        std::fs::write(text.path(), "hello, this is text").unwrap();
        assert!(read_err(&text).contains("begins with text"));
    }
}
