//! Base weights: a memory-mapped safetensors file, never written.
//!
//! [`Checkpoint::open`] validates the header (offsets inside the file, no overlap); [`Checkpoint::tensor`]
//! gives a borrowed view, [`Tensor::to_f32`] a converted copy. [`Checkpoint::view`] shows a file
//! under other names (a single-file checkpoint's LDM keys as diffusers parameters): whole tensors,
//! row ranges of packed ones, reshaped or transposed ones, over the same mapping.
//! [`Checkpoint::open_sharded`] shows several files (a Hugging Face shard set) as one.

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot open {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid safetensors file ({}); re-export or re-download it", text.as_ref().map_or_else(|| source.to_string(), |t| format!("it begins with text: {t:?}")))]
    Format {
        path: PathBuf,
        source: safetensors::SafeTensorError,
        /// The file's first characters when it is text (a renamed text file).
        text: Option<String>,
    },
    #[error("{path}: tensor {name:?} has dtype {dtype:?}, which stipple cannot use as a weight")]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: Dtype,
    },
    /// Boxed: the error type travels in every `Result` of the model code.
    #[error(transparent)]
    View(Box<ViewError>),
    #[error(
        "{index}: tensor {name:?} is in two shards, {first} and {second}; re-download the model"
    )]
    TwoShards {
        index: PathBuf,
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("{index}: tensor {name:?} is listed in shard {shard}, which does not hold it; re-download the model")]
    NotInShard {
        index: PathBuf,
        name: String,
        shard: PathBuf,
    },
}

/// A name of a [`Checkpoint::view`] its source cannot give.
#[derive(Debug, thiserror::Error)]
#[error("{path}: tensor {key:?} (shape {shape:?}) cannot be read as {name} {want:?}: {why}")]
pub struct ViewError {
    pub path: PathBuf,
    pub key: String,
    pub name: String,
    pub shape: Vec<usize>,
    pub want: Vec<usize>,
    pub why: &'static str,
}

/// How one name of a [`Checkpoint::view`] is read from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The tensor `key`, reshaped to the wanted shape (same element count: a 1×1 conv as linear).
    Whole { key: String },
    /// Rows `start..end` of the 2-D or 1-D tensor `key` (a packed `in_proj` split into q, k, v).
    Rows {
        key: String,
        start: usize,
        end: usize,
    },
    /// The 2-D tensor `key` transposed (OpenCLIP's `text_projection`); copied once at open.
    Transposed { key: String },
}

impl Source {
    pub fn key(&self) -> &str {
        match self {
            Source::Whole { key } | Source::Rows { key, .. } | Source::Transposed { key } => key,
        }
    }
}

/// A name of a view, resolved: where its bytes are and the shape it has.
#[derive(Clone)]
struct Resolved {
    /// Which of the checkpoint's files holds it.
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range in the mapping.
    range: (usize, usize),
    /// The values, when they are not a range of the file (transposed).
    owned: Option<Vec<u8>>,
}

/// A borrowed tensor of a checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct Tensor<'a> {
    pub dtype: Dtype,
    pub shape: &'a [usize],
    pub data: &'a [u8],
}

impl Tensor<'_> {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Converts to f32 (F32, F16 and BF16 are supported; the caller checked the dtype on open).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.numel()];
        self.read_f32_into(&mut out);
        out
    }

    /// Writes the values as f32 into `out` (length `numel`).
    pub fn read_f32_into(&self, out: &mut [f32]) {
        match self.dtype {
            Dtype::F32 => {
                for (o, c) in out.iter_mut().zip(self.data.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            Dtype::F16 => match bytemuck::try_cast_slice::<u8, half::f16>(self.data) {
                // Whole slices at once: the conversion runs in SIMD lanes (F16C where the CPU has
                // it); stored data not aligned to 2 bytes takes the element-wise path.
                Ok(h) => {
                    use half::slice::HalfFloatSliceExt;
                    let n = h.len().min(out.len());
                    h[..n].convert_to_f32_slice(&mut out[..n]);
                }
                Err(_) => {
                    for (o, c) in out.iter_mut().zip(self.data.chunks_exact(2)) {
                        *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
                    }
                }
            },
            Dtype::BF16 => {
                for (o, c) in out.iter_mut().zip(self.data.chunks_exact(2)) {
                    *o = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            _ => out.fill(f32::NAN),
        }
    }
}

/// One memory-mapped safetensors file and its parsed header.
struct Mapped {
    path: PathBuf,
    map: Mmap,
    header_len: usize,
    meta: Metadata,
}

impl Mapped {
    fn open(path: &Path) -> Result<Mapped, CheckpointError> {
        let io = |source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let map = map_file(&file).map_err(io)?;
        let (header_len, meta) =
            SafeTensors::read_metadata(&map).map_err(|source| CheckpointError::Format {
                path: path.to_path_buf(),
                source,
                text: text_start(&map),
            })?;
        Ok(Mapped {
            path: path.to_path_buf(),
            map,
            header_len,
            meta,
        })
    }

    /// Byte range of a tensor in the mapping.
    fn range(&self, info: &TensorInfo) -> (usize, usize) {
        (
            8 + self.header_len + info.data_offsets.0,
            8 + self.header_len + info.data_offsets.1,
        )
    }
}

/// Memory-mapped safetensors weights (one file, or the shards of one component) with their parsed
/// headers, optionally seen under other names. A clone shares the mappings.
#[derive(Clone)]
pub struct Checkpoint {
    /// The file, or a shard set's index.
    path: PathBuf,
    files: Arc<Vec<Mapped>>,
    /// A shard set: which file holds each tensor. Empty: the one file holds them all.
    owner: Arc<HashMap<String, usize>>,
    /// For a view: every name it shows. `None`: the file's own names.
    names: Option<HashMap<String, Resolved>>,
}

/// Maps `file` read-only.
///
/// # Safety contract
/// The mapping is undefined behaviour if another process truncates or rewrites the file while it is
/// mapped. stipple never writes a file it has mapped (writes go to a temporary file and a rename,
/// which leaves the mapped inode intact); a user truncating weights under a running stipple can crash
/// it with SIGBUS, as with any memory-mapped reader.
fn map_file(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: see the contract above.
    unsafe { Mmap::map(file) }
}

impl Checkpoint {
    /// Opens a weights file whose every tensor must be a weight (F32, F16 or BF16).
    pub fn open(path: &Path) -> Result<Checkpoint, CheckpointError> {
        let ck = Checkpoint::open_any(path)?;
        for (name, info) in ck.files[0].meta.tensors() {
            check_dtype(path, &name, info.dtype)?;
        }
        Ok(ck)
    }

    /// Opens a safetensors file checking only its header: a single-file checkpoint also holds
    /// integer buffers and tensors no component reads; [`Checkpoint::view`] checks what is used.
    pub fn open_any(path: &Path) -> Result<Checkpoint, CheckpointError> {
        Ok(Checkpoint {
            path: path.to_path_buf(),
            files: Arc::new(vec![Mapped::open(path)?]),
            owner: Arc::new(HashMap::new()),
            names: None,
        })
    }

    /// Opens the shards of one set as one checkpoint, headers only (as [`Checkpoint::open_any`]).
    /// `weight_map` is the index's: each tensor and the shard (an index into `shards`) that holds
    /// it. A listed tensor its shard lacks, or a tensor two shards hold, is an error naming them.
    pub fn open_sharded(
        index: &Path,
        shards: &[PathBuf],
        weight_map: &[(String, usize)],
    ) -> Result<Checkpoint, CheckpointError> {
        let files = shards
            .iter()
            .map(|p| Mapped::open(p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut holder: HashMap<String, usize> = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            for (name, _) in f.meta.tensors() {
                if let Some(&j) = holder.get(&name) {
                    return Err(CheckpointError::TwoShards {
                        index: index.to_path_buf(),
                        name,
                        first: files[j].path.clone(),
                        second: f.path.clone(),
                    });
                }
                holder.insert(name, i);
            }
        }
        let mut owner = HashMap::new();
        for (name, shard) in weight_map {
            if holder.get(name) != Some(shard) {
                return Err(CheckpointError::NotInShard {
                    index: index.to_path_buf(),
                    name: name.clone(),
                    shard: files[*shard].path.clone(),
                });
            }
            owner.insert(name.clone(), *shard);
        }
        Ok(Checkpoint {
            path: index.to_path_buf(),
            files: Arc::new(files),
            owner: Arc::new(owner),
            names: None,
        })
    }

    /// The file holding one of the checkpoint's own tensors and its header entry.
    fn find(&self, key: &str) -> Option<(usize, &TensorInfo)> {
        let file = if self.owner.is_empty() {
            0
        } else {
            *self.owner.get(key)?
        };
        self.files[file].meta.info(key).map(|info| (file, info))
    }

    /// The same file under other names: `names` maps each name the view shows to where it is read
    /// from and the shape it must have. Fails on a missing key, a shape the source cannot give or
    /// a dtype that is not a weight; nothing is read but the (small) transposed tensors.
    pub fn view(
        &self,
        names: impl IntoIterator<Item = (String, Source, Vec<usize>)>,
    ) -> Result<Checkpoint, CheckpointError> {
        let mut table = HashMap::new();
        for (name, source, want) in names {
            let resolved = self.resolve(&name, &source, want, true)?;
            table.insert(name, resolved);
        }
        Ok(Checkpoint {
            path: self.path.clone(),
            files: Arc::clone(&self.files),
            owner: Arc::clone(&self.owner),
            names: Some(table),
        })
    }

    /// Whether `source` gives `name` with shape `want` (the check [`Checkpoint::view`] makes).
    pub fn probe(
        &self,
        name: &str,
        source: &Source,
        want: &[usize],
    ) -> Result<(), CheckpointError> {
        self.resolve(name, source, want.to_vec(), false).map(|_| ())
    }

    /// Where `name` is read from; `copy`: make the transposed copy (a probe only checks shapes).
    fn resolve(
        &self,
        name: &str,
        source: &Source,
        want: Vec<usize>,
        copy: bool,
    ) -> Result<Resolved, CheckpointError> {
        let key = source.key();
        let (file, info) = self.find(key).ok_or_else(|| {
            CheckpointError::View(Box::new(ViewError {
                path: self.path.clone(),
                key: key.to_string(),
                name: name.to_string(),
                shape: vec![],
                want: want.clone(),
                why: "the file has no such tensor",
            }))
        })?;
        let mapped = &self.files[file];
        check_dtype(&mapped.path, key, info.dtype)?;
        let bad = |why| {
            CheckpointError::View(Box::new(ViewError {
                path: mapped.path.clone(),
                key: key.to_string(),
                name: name.to_string(),
                shape: info.shape.clone(),
                want: want.clone(),
                why,
            }))
        };
        let esize = info.dtype.bitsize() / 8;
        let (start, end) = mapped.range(info);
        let numel: usize = want.iter().product();
        match source {
            Source::Whole { .. } => {
                if info.shape.iter().product::<usize>() != numel
                    || !same_but_ones(&info.shape, &want)
                {
                    return Err(bad("the shapes differ"));
                }
                Ok(Resolved {
                    file,
                    dtype: info.dtype,
                    shape: want,
                    range: (start, end),
                    owned: None,
                })
            }
            Source::Rows {
                start: r0, end: r1, ..
            } => {
                let rows = *info
                    .shape
                    .first()
                    .ok_or_else(|| bad("a scalar has no rows"))?;
                let row: usize = info.shape[1..].iter().product();
                if r0 >= r1
                    || *r1 > rows
                    || (r1 - r0) * row != numel
                    || want.first() != Some(&(r1 - r0))
                {
                    return Err(bad("the rows do not make that shape"));
                }
                let from = start + r0 * row * esize;
                Ok(Resolved {
                    file,
                    dtype: info.dtype,
                    shape: want,
                    range: (from, from + (r1 - r0) * row * esize),
                    owned: None,
                })
            }
            Source::Transposed { .. } => {
                let [r, c] = info.shape[..] else {
                    return Err(bad("only a matrix can be transposed"));
                };
                if want != [c, r] {
                    return Err(bad("the transposed shape differs"));
                }
                let data = mapped
                    .map
                    .get(start..end)
                    .ok_or_else(|| bad("data past the end"))?;
                let mut out = Vec::new();
                if copy {
                    out = vec![0u8; data.len()];
                    for i in 0..r {
                        for j in 0..c {
                            let from = (i * c + j) * esize;
                            let to = (j * r + i) * esize;
                            out[to..to + esize].copy_from_slice(&data[from..from + esize]);
                        }
                    }
                }
                Ok(Resolved {
                    file,
                    dtype: info.dtype,
                    shape: want,
                    range: (start, end),
                    owned: Some(out),
                })
            }
        }
    }

    /// The file's own tensor names and shapes, whatever names a view shows.
    pub fn file_shapes(&self) -> HashMap<String, Vec<usize>> {
        let mut out = HashMap::new();
        for (i, f) in self.files.iter().enumerate() {
            for (k, v) in f.meta.tensors() {
                if self.owner.is_empty() || self.owner.get(&k) == Some(&i) {
                    out.insert(k, v.shape.clone());
                }
            }
        }
        out
    }

    /// The dtype of one of the file's own tensors.
    pub fn file_dtype(&self, key: &str) -> Option<Dtype> {
        self.find(key).map(|(_, i)| i.dtype)
    }

    /// The dtype holding most of the file's bytes (what a download calls "fp16" or "fp32").
    pub fn dominant_dtype(&self) -> Option<Dtype> {
        let mut bytes: Vec<(Dtype, usize)> = Vec::new();
        for (_, info) in self.files.iter().flat_map(|f| f.meta.tensors()) {
            let n = info.data_offsets.1 - info.data_offsets.0;
            match bytes.iter_mut().find(|(d, _)| *d == info.dtype) {
                Some((_, b)) => *b += n,
                None => bytes.push((info.dtype, n)),
            }
        }
        bytes.into_iter().max_by_key(|(_, b)| *b).map(|(d, _)| d)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Drops the mapped pages from this process's resident set once a buffer has been assembled:
    /// they are file-backed, so a later read faults them back in from the page cache. Without it
    /// every weight counts twice in RSS (the mapping and ONNX Runtime's copy).
    pub fn release_pages(&self) {
        if let Some(names) = &self.names {
            // A view shares the mapping with the other components' views: release its own ranges.
            for r in names.values() {
                self.release_range(r.file, r.range);
            }
            return;
        }
        // SAFETY: MADV_DONTNEED on a read-only, file-backed shared mapping only discards the
        // process's page-table entries; contents are re-read from the file on the next access, so
        // no borrowed slice can observe different data (stipple never writes a mapped file).
        #[cfg(unix)]
        for f in self.files.iter() {
            let _ = unsafe { f.map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        }
    }

    /// [`Checkpoint::release_pages`] for one tensor, once it has been read: a patch that reads
    /// weights one after another then holds only those in flight. Pages it shares with a
    /// neighbour are dropped too, which costs that neighbour a fault from the page cache.
    pub fn release_tensor(&self, name: &str) {
        if let Some((file, range)) = self.range_of(name) {
            self.release_range(file, range);
        }
    }

    /// The file and byte range of a shown name in its mapping.
    fn range_of(&self, name: &str) -> Option<(usize, (usize, usize))> {
        match &self.names {
            Some(names) => names.get(name).map(|r| (r.file, r.range)),
            None => self
                .find(name)
                .map(|(file, info)| (file, self.files[file].range(info))),
        }
    }

    fn release_range(&self, file: usize, (start, end): (usize, usize)) {
        let map = &self.files[file].map;
        #[cfg(unix)]
        {
            // SAFETY: sysconf has no preconditions.
            let page =
                usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
            let from = start - start % page.max(1);
            if end > from && end <= map.len() {
                // SAFETY: as in `release_pages`: the range lies in a read-only, file-backed
                // mapping.
                let _ = unsafe {
                    map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, end - from)
                };
            }
        }
        #[cfg(not(unix))]
        let _ = (map, start, end);
    }

    pub fn tensor(&self, name: &str) -> Option<Tensor<'_>> {
        if let Some(names) = &self.names {
            let r = names.get(name)?;
            let data = match &r.owned {
                Some(v) => v.as_slice(),
                None => self.files[r.file].map.get(r.range.0..r.range.1)?,
            };
            return Some(Tensor {
                dtype: r.dtype,
                shape: &r.shape,
                data,
            });
        }
        let (file, info) = self.find(name)?;
        let (start, end) = self.files[file].range(info);
        Some(Tensor {
            dtype: info.dtype,
            shape: &info.shape,
            data: self.files[file].map.get(start..end)?,
        })
    }

    /// Names and shapes of every tensor it shows.
    pub fn shapes(&self) -> HashMap<String, Vec<usize>> {
        match &self.names {
            Some(names) => names
                .iter()
                .map(|(k, r)| (k.clone(), r.shape.clone()))
                .collect(),
            None => self.file_shapes(),
        }
    }

    /// The `__metadata__` map of the header (of the first shard of a shard set).
    pub fn metadata(&self) -> Option<&HashMap<String, String>> {
        self.files[0].meta.metadata().as_ref()
    }
}

/// The first characters of `buf` when it starts like a text file (8 printable bytes), so an error
/// can say what the file is instead of quoting the header length those bytes make.
pub fn text_start(buf: &[u8]) -> Option<String> {
    let head = buf.get(..8)?;
    let printable = |b: &u8| b.is_ascii_graphic() || b.is_ascii_whitespace();
    if !head.iter().all(printable) {
        return None;
    }
    let n = buf.iter().take(32).take_while(|b| printable(b)).count();
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn check_dtype(path: &Path, name: &str, dtype: Dtype) -> Result<(), CheckpointError> {
    if matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
        Ok(())
    } else {
        Err(CheckpointError::Dtype {
            path: path.to_path_buf(),
            name: name.to_string(),
            dtype,
        })
    }
}

/// Whether two shapes are equal once their dimensions of size 1 are dropped.
fn same_but_ones(a: &[usize], b: &[usize]) -> bool {
    let strip = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
    strip(a) == strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_file_is_not_a_safetensors_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, "these are my notes about models\n").unwrap();
        let e = Checkpoint::open(&path).err().expect("refused").to_string();
        assert!(e.contains("is not a valid safetensors file"), "{e}");
        assert!(e.contains("begins with text: \"these are my notes"), "{e}");
    }

    #[test]
    fn released_pages_read_back_the_same_weights() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tiny-sd15/unet/weights.safetensors");
        let ck = Checkpoint::open(&path).unwrap();
        let mut names: Vec<String> = ck.shapes().into_keys().collect();
        names.sort();
        assert!(names.len() > 10);
        let before: Vec<Vec<u8>> = names
            .iter()
            .map(|n| ck.tensor(n).unwrap().data.to_vec())
            .collect();
        // Every other tensor, so released ranges sit next to ones still mapped.
        for n in names.iter().step_by(2) {
            ck.release_tensor(n);
        }
        ck.release_tensor("no such tensor");
        for (n, b) in names.iter().zip(&before) {
            assert_eq!(ck.tensor(n).unwrap().data, &b[..], "{n}");
        }
        ck.release_pages();
        for (n, b) in names.iter().zip(&before) {
            assert_eq!(ck.tensor(n).unwrap().data, &b[..], "{n}");
        }
    }
}
