//! Weights staged on disk for a CPU session: a private folder holding the graph and its
//! external-data file, which ONNX Runtime maps instead of copying (an in-memory buffer it copies
//! whole, so a build held two copies at once). [`Staged::create`] makes it; dropping it removes
//! the folder (the session's mappings keep the data they still read until the session ends).
//! The data file is a [`StagingFile`], whose writes a test hook can make fail as a full disk does
//! (`STIPPLE_STAGING_FAIL_AFTER`, see [`StagingFile`]).

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
    pub fn create(
        graph: &[u8],
        external_file: &str,
        len: u64,
    ) -> io::Result<(Staged, StagingFile)> {
        Staged::create_in(&root(), graph, external_file, len)
    }

    /// [`Staged::create`] under `root`.
    pub fn create_in(
        root: &Path,
        graph: &[u8],
        external_file: &str,
        len: u64,
    ) -> io::Result<(Staged, StagingFile)> {
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
        let number = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = root.join(format!("{}-{number}", std::process::id()));
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
        let fault = fault_budget(number);
        Ok((
            staged,
            StagingFile {
                file: data,
                fault: fault.map(|budget| (budget, AtomicU64::new(0))),
            },
        ))
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

/// A staging data file. Its writes go through [`StagingFile::write_all_at`] so that a test can
/// fill the disk without root: `STIPPLE_STAGING_FAIL_AFTER=BYTES[@K]` (a test hook, read only
/// here) makes the writes into each staging file fail with `ENOSPC` once `BYTES` bytes went in
/// (the write that crosses the mark is written in part, as a full disk leaves it), for the
/// process's staging folders numbered `K` (from 0, default 0) and after; a load stages one per
/// session, so `@K` spares the first `K` (a swap's re-bake comes after the load's).
pub struct StagingFile {
    file: File,
    /// The bytes this file may take before writes fail, and the bytes written so far.
    fault: Option<(u64, AtomicU64)>,
}

impl From<File> for StagingFile {
    /// A file of the caller's, written without the test hook.
    fn from(file: File) -> Self {
        StagingFile { file, fault: None }
    }
}

impl StagingFile {
    /// Writes all of `bytes` at `offset` (safe to call from several threads at once).
    #[cfg(unix)]
    pub fn write_all_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let Some((budget, written)) = &self.fault else {
            return self.file.write_all_at(bytes, offset);
        };
        let len = bytes.len() as u64;
        let before = written.fetch_add(len, Ordering::Relaxed);
        let room = budget.saturating_sub(before).min(len);
        self.file.write_all_at(&bytes[..room as usize], offset)?;
        if room < len {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    #[cfg(not(unix))]
    pub fn write_all_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::Error::other("staging is for Unix"))
    }

    /// Sets the file's length (a sparse file: this takes no disk space).
    pub fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    /// The file, to read back.
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// The test hook's budget for the staging folder numbered `number`, if any (see [`StagingFile`]).
/// A value that does not parse is ignored: the hook is for tests, never a user's setting.
fn fault_budget(number: u64) -> Option<u64> {
    let v = std::env::var("STIPPLE_STAGING_FAIL_AFTER").ok()?;
    let (bytes, from) = match v.split_once('@') {
        Some((b, k)) => (b, k.trim().parse::<u64>().ok()?),
        None => (v.as_str(), 0),
    };
    let bytes = bytes.trim().parse::<u64>().ok()?;
    (number >= from).then_some(bytes)
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

/// Whether sessions on `device` that bake their weights read them from a staging file: on the CPU
/// and Unix only (a GPU session copies them to the device anyway; Windows cannot remove a mapped
/// file), unless `STIPPLE_STAGE_WEIGHTS=0` (the in-memory path, for comparison);
/// `STIPPLE_STAGE_WEIGHTS=1` stages on a GPU too.
pub fn enabled(device: super::Device) -> bool {
    knob().unwrap_or(cfg!(unix) && matches!(device, super::Device::Cpu))
}

/// Whether a session with resident weights reads its external-data file from a staging file: on
/// every device (Unix only), unless `STIPPLE_STAGE_WEIGHTS=0`. The file holds only the few pinned
/// weights and otherwise holes, which a mapped file costs nothing for, while ONNX Runtime copies an
/// in-memory file whole, zeroes included (SDXL's UNet on an H100: 3.7 s of its 9.3 s build).
pub fn enabled_resident() -> bool {
    knob().unwrap_or(cfg!(unix))
}

/// `STIPPLE_STAGE_WEIGHTS`: `0` never stages, `1` stages wherever Unix allows; unset: the default.
fn knob() -> Option<bool> {
    match std::env::var_os("STIPPLE_STAGE_WEIGHTS")?.to_str()? {
        "0" => Some(false),
        "1" => Some(cfg!(unix)),
        _ => None,
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
        assert_eq!(data.file().metadata().expect("meta").len(), 4096);
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

    #[cfg(unix)]
    #[test]
    fn the_fault_hook_writes_up_to_its_budget_then_fails_as_a_full_disk() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (_staged, mut data) =
            Staged::create_in(tmp.path(), b"graph", "weights.bin", 16).expect("staged");
        data.fault = Some((6, AtomicU64::new(0)));
        data.write_all_at(&[1; 4], 0).expect("within the budget");
        let err = data.write_all_at(&[2; 4], 8).expect_err("past the budget");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        assert!(
            data.write_all_at(&[3; 2], 12).is_err(),
            "a full disk stays full"
        );
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut data.file(), &mut bytes).expect("read");
        // The crossing write went in part: two of its four bytes.
        assert_eq!(bytes, [1, 1, 1, 1, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 0, 0]);
    }
}
