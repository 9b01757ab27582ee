//! Image files of a batch: each PNG is written complete in a private staging folder and renamed to
//! its final name, so a name in the output folder always holds a whole image, even after SIGKILL.
//!
//! [`Store::new`] makes the staging folder (and removes those of dead runs on this host);
//! [`Store::save`] places one image. The staging folder goes away when the store is dropped.

use crate::image::save_png;
use crate::job::RgbImage;
use std::path::{Path, PathBuf};

/// Inside the output folder, so that the final rename never crosses file systems.
const STAGING: &str = ".stipple-staging";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot write to the output folder {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Png(#[from] crate::image::PngError),
}

pub struct Store {
    out_dir: PathBuf,
    staging: PathBuf,
}

impl Store {
    pub fn new(out_dir: &Path) -> Result<Store, StoreError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
        let root = out_dir.join(STAGING);
        remove_dead_staging(&root);
        // Host and pid: shards on several machines may share one output folder.
        let staging = root.join(format!("{}-{}", host_name(), std::process::id()));
        std::fs::create_dir_all(&staging).map_err(io(&staging))?;
        Ok(Store {
            out_dir: out_dir.to_path_buf(),
            staging,
        })
    }

    pub fn out_dir(&self) -> &Path {
        &self.out_dir
    }

    /// Writes `image` to `rel` (relative to the output folder). An existing file of that name is
    /// replaced: names hold the job hash, so it can only be this job's image from a run that died
    /// before listing it.
    pub fn save(
        &self,
        rel: &Path,
        image: &RgbImage,
        seed: u64,
        infotext: &str,
        job_json: &str,
    ) -> Result<PathBuf, StoreError> {
        let staged = save_png(&self.staging, image, seed, infotext, job_json)?;
        let dest = self.out_dir.join(rel);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        let parent = dest.parent().unwrap_or(&self.out_dir);
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        if let Err(e) = std::fs::rename(&staged.path, &dest) {
            let _ = std::fs::remove_file(&staged.path);
            return Err(io(&dest)(e));
        }
        // The rename must reach the disk before the manifest line that lists the file.
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
        Ok(dest)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.staging);
        let _ = std::fs::remove_dir(self.staging.parent().unwrap_or(&self.out_dir));
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|h| h.trim().replace(['/', '\\'], "_"))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}

/// Staging folders of runs on this host that are gone (killed): their half-written files are of
/// no use. Only where `/proc` tells whether a process lives; elsewhere they stay, hidden.
fn remove_dead_staging(root: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    let prefix = format!("{}-", host_name());
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(&prefix) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_land_under_their_name_and_staging_is_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let dead = out
            .join(STAGING)
            .join(format!("{}-{}", host_name(), u32::MAX - 1));
        std::fs::create_dir_all(&dead).unwrap();
        std::fs::write(dead.join("x.png.tmp"), b"half").unwrap();
        let store = Store::new(&out).unwrap();
        assert!(!dead.exists(), "a dead run's staging folder is removed");
        let image = RgbImage {
            width: 2,
            height: 2,
            pixels: vec![9; 12],
        };
        let p = store
            .save(Path::new("sub/a.png"), &image, 5, "p", "{}")
            .unwrap();
        assert_eq!(p, out.join("sub/a.png"));
        let again = store
            .save(Path::new("sub/a.png"), &image, 5, "p", "{}")
            .unwrap();
        assert_eq!(again, p);
        let chunks = crate::image::read_text_chunks(&p).unwrap();
        assert_eq!(chunks["parameters"], "p");
        drop(store);
        assert!(!out.join(STAGING).exists());
        let names: Vec<_> = std::fs::read_dir(out.join("sub"))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn an_output_folder_that_is_a_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        let e = Store::new(&f).err().unwrap().to_string();
        assert!(
            e.contains("cannot write to the output folder") && e.contains("file"),
            "{e}"
        );
    }
}
