//! Base weights: a memory-mapped `weights.safetensors`, never written.
//!
//! [`Checkpoint::open`] validates the header (offsets inside the file, no overlap); [`Checkpoint::tensor`]
//! gives a borrowed view, [`Tensor::to_f32`] a converted copy.

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot open {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid safetensors file ({source}); re-export or re-download it")]
    Format {
        path: PathBuf,
        source: safetensors::SafeTensorError,
    },
    #[error("{path}: tensor {name:?} has dtype {dtype:?}, which stipple cannot use as a weight")]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: Dtype,
    },
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

/// A memory-mapped safetensors file with its parsed header.
pub struct Checkpoint {
    path: PathBuf,
    map: Mmap,
    header_len: usize,
    meta: Metadata,
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
    pub fn open(path: &Path) -> Result<Checkpoint, CheckpointError> {
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
            })?;
        for (name, info) in meta.tensors() {
            if !matches!(info.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
                return Err(CheckpointError::Dtype {
                    path: path.to_path_buf(),
                    name,
                    dtype: info.dtype,
                });
            }
        }
        Ok(Checkpoint {
            path: path.to_path_buf(),
            map,
            header_len,
            meta,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Drops the mapped pages from this process's resident set once a buffer has been assembled:
    /// they are file-backed, so a later read faults them back in from the page cache. Without it
    /// every weight counts twice in RSS (the mapping and ONNX Runtime's copy).
    pub fn release_pages(&self) {
        // SAFETY: MADV_DONTNEED on a read-only, file-backed shared mapping only discards the
        // process's page-table entries; contents are re-read from the file on the next access, so
        // no borrowed slice can observe different data (stipple never writes a mapped file).
        #[cfg(unix)]
        let _ = unsafe {
            self.map
                .unchecked_advise(memmap2::UncheckedAdvice::DontNeed)
        };
    }

    /// [`Checkpoint::release_pages`] for one tensor, once it has been read: a patch that reads
    /// weights one after another then holds only those in flight. Pages it shares with a
    /// neighbour are dropped too, which costs that neighbour a fault from the page cache.
    pub fn release_tensor(&self, name: &str) {
        #[cfg(unix)]
        if let Some(info) = self.meta.info(name) {
            let start = 8 + self.header_len + info.data_offsets.0;
            let end = 8 + self.header_len + info.data_offsets.1;
            // SAFETY: sysconf has no preconditions.
            let page =
                usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
            let from = start - start % page.max(1);
            if end > from && end <= self.map.len() {
                // SAFETY: as in `release_pages`: the range lies in a read-only, file-backed
                // mapping.
                let _ = unsafe {
                    self.map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        from,
                        end - from,
                    )
                };
            }
        }
        #[cfg(not(unix))]
        let _ = name;
    }

    pub fn tensor(&self, name: &str) -> Option<Tensor<'_>> {
        let info = self.meta.info(name)?;
        let start = 8 + self.header_len + info.data_offsets.0;
        let end = 8 + self.header_len + info.data_offsets.1;
        Some(Tensor {
            dtype: info.dtype,
            shape: &info.shape,
            data: self.map.get(start..end)?,
        })
    }

    /// Names and shapes of every tensor.
    pub fn shapes(&self) -> HashMap<String, Vec<usize>> {
        self.meta
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, v.shape.clone()))
            .collect()
    }

    /// The `__metadata__` map of the header.
    pub fn metadata(&self) -> Option<&HashMap<String, String>> {
        self.meta.metadata().as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
