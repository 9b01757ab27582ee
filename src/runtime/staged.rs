//! Weights staged on disk for a CPU session: a private folder holding the graph and its
//! external-data file, which ONNX Runtime maps instead of copying (an in-memory buffer it copies
//! whole, so a build held two copies at once). [`Staged::create`] makes it; dropping it removes
//! the folder (the session's mappings keep the data they still read until the session ends).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The graph file's name in a staging folder.
const GRAPH_FILE: &str = "model.onnx";

/// A staging folder: the graph, and the external-data file the caller fills.
pub struct Staged {
    dir: PathBuf,
}

impl Staged {
    /// Writes `graph` into a new folder under [`root`], and creates its external-data file
    /// `external_file` (a bare file name, as the graph names it), `len` bytes of zeroes that take
    /// no disk space until written. Returns the folder and the data file, open for writing.
    pub fn create(graph: &[u8], external_file: &str, len: u64) -> io::Result<(Staged, File)> {
        Staged::create_in(&root(), graph, external_file, len)
    }

    /// [`Staged::create`] under `root`.
    pub fn create_in(
        root: &Path,
        graph: &[u8],
        external_file: &str,
        len: u64,
    ) -> io::Result<(Staged, File)> {
        let bare = Path::new(external_file)
            .file_name()
            .is_some_and(|n| n == external_file)
            && external_file != GRAPH_FILE;
        if !bare {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the graph's external-data file {external_file:?} is not a bare file name"),
            ));
        }
        static NEXT: AtomicU64 = AtomicU64::new(0);
        std::fs::create_dir_all(root)?;
        remove_abandoned(root);
        let dir = root.join(format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir)?;
        // From here on the folder goes away with `staged`, whatever fails next.
        let staged = Staged { dir };
        std::fs::write(staged.graph_path(), graph)?;
        let data = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(staged.dir.join(external_file))?;
        data.set_len(len)?;
        Ok((staged, data))
    }

    /// The graph file, for `commit_from_file`: ONNX Runtime finds the data file beside it.
    pub fn graph_path(&self) -> PathBuf {
        self.dir.join(GRAPH_FILE)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // Unlinked files a session still maps live on until it unmaps them.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sessions built with their baked weights read from a staging file, since the process started.
static BAKED: AtomicU64 = AtomicU64::new(0);

/// How many sessions with baked weights were built from a staging file so far: the check that CPU
/// loads take this path (an in-memory build holds the weights two and a half times over).
pub fn baked_sessions() -> u64 {
    BAKED.load(Ordering::Relaxed)
}

/// Counts one session built by `bake` from a staging file.
pub(crate) fn count_baked() {
    BAKED.fetch_add(1, Ordering::Relaxed);
}

/// Removes the folders of processes that are gone (killed while building a session: their
/// folder, gigabytes, was never dropped). Folders are named `PID-N`.
fn remove_abandoned(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok());
        if let Some(pid) = pid {
            if pid != std::process::id() && !alive(pid) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Whether process `pid` exists (signal 0 checks without sending anything).
#[cfg(unix)]
fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    // SAFETY: kill with signal 0 sends nothing; it only reports whether the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(not(unix))]
fn alive(_: u32) -> bool {
    true
}

/// Whether sessions on `device` read their weights from a staging file: on the CPU and Unix only (a
/// GPU session copies them to the device anyway; Windows cannot remove a mapped file), unless
/// `STIPPLE_STAGE_WEIGHTS=0` (the in-memory path, for comparison); `STIPPLE_STAGE_WEIGHTS=1` stages
/// on a GPU too (a measuring knob: ONNX Runtime copies an in-memory file whole, zeroes included).
pub fn enabled(device: super::Device) -> bool {
    let knob = std::env::var_os("STIPPLE_STAGE_WEIGHTS");
    cfg!(unix)
        && match knob.as_deref().and_then(|v| v.to_str()) {
            Some("0") => false,
            Some("1") => true,
            _ => matches!(device, super::Device::Cpu),
        }
}

/// Where staging folders go: `STIPPLE_STAGING_DIR`, else `stipple/staging` in the user's cache
/// folder (on disk, so the kernel can write the pages out and drop them under memory pressure;
/// a tmpfs `/tmp` could not), else the temporary folder.
pub fn root() -> PathBuf {
    if let Some(dir) = std::env::var_os("STIPPLE_STAGING_DIR") {
        return PathBuf::from(dir);
    }
    use etcetera::app_strategy::{AppStrategy, AppStrategyArgs};
    etcetera::app_strategy::choose_app_strategy(AppStrategyArgs {
        top_level_domain: "org".into(),
        author: "stipple".into(),
        app_name: "stipple".into(),
    })
    .map(|s| s.cache_dir())
    .unwrap_or_else(|_| std::env::temp_dir().join("stipple"))
    .join("staging")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staging_folder_holds_the_graph_and_a_sized_data_file_and_goes_away_when_dropped() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (staged, data) =
            Staged::create_in(tmp.path(), b"graph", "weights.bin", 4096).expect("staged");
        let graph = staged.graph_path();
        assert_eq!(std::fs::read(&graph).expect("graph"), b"graph");
        assert_eq!(data.metadata().expect("meta").len(), 4096);
        let dir = graph.parent().expect("dir").to_path_buf();
        assert!(dir.join("weights.bin").exists());
        drop(staged);
        assert!(!dir.exists());
        // A folder left by a process that is gone goes at the next staging; a live one stays.
        let gone = tmp.path().join(format!("{}-0", i32::MAX));
        let live = tmp
            .path()
            .join(format!("{}-{}", std::process::id(), u64::MAX));
        std::fs::create_dir(&gone).expect("gone");
        std::fs::create_dir(&live).expect("live");
        let (again, _) = Staged::create_in(tmp.path(), b"g", "w", 1).expect("staged again");
        assert!(!gone.exists(), "an abandoned folder is removed");
        assert!(live.exists(), "this process's folders stay");
        drop(again);
        for bad in ["../x", "a/b", "model.onnx", ""] {
            assert!(
                Staged::create_in(tmp.path(), b"g", bad, 1).is_err(),
                "{bad:?}"
            );
        }
    }
}
