//! The manifest: `results.jsonl` in the output folder, one line per finished job, appended only
//! after every image of the job is in place, so a listed result is always complete.
//!
//! [`Manifest::open`] / [`Manifest::append`] write it; [`finished`] reads every manifest of a folder
//! back into the set of job hashes that need not run again.

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot write the manifest {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the manifest {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One image of a finished job. `path` is relative to the output folder, so the folder can move.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub path: PathBuf,
    pub seed: u64,
    pub index: u32,
}

/// The manifest's name: one file per shard, because appends from several machines to one file on
/// a network file system can interleave.
pub fn file_name(shard: super::shard::Shard) -> String {
    if shard.is_all() {
        "results.jsonl".into()
    } else {
        format!("results.shard-{}-of-{}.jsonl", shard.index, shard.count)
    }
}

fn is_manifest(name: &str) -> bool {
    name == "results.jsonl" || (name.starts_with("results.shard-") && name.ends_with(".jsonl"))
}

/// An open manifest, appended to.
pub struct Manifest {
    path: PathBuf,
    file: File,
}

impl Manifest {
    /// Opens (or creates) `path` for appending. A last line cut short by a killed run is ended
    /// with a newline first, so it spoils only itself.
    pub fn open(path: &Path) -> Result<Manifest, ManifestError> {
        let err = |source| ManifestError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(err)?;
        let len = file.metadata().map_err(err)?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::Start(len - 1)).map_err(err)?;
            file.read_exact(&mut last).map_err(err)?;
            if last[0] != b'\n' {
                file.write_all(b"\n").map_err(err)?;
            }
        }
        Ok(Manifest {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record as a line, in a single write, and waits for the disk: the line is only
    /// written once the images it lists are, and must not be lost after we report it.
    pub fn append(&mut self, record: &impl Serialize) -> Result<(), ManifestError> {
        let err = |source| ManifestError::Write {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(record).map_err(|e| err(std::io::Error::other(e)))?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(err)?;
        self.file.sync_data().map_err(err)
    }
}

#[derive(Deserialize)]
struct Listed {
    hash: String,
    images: Vec<ImageRecord>,
}

/// What the manifests in `out_dir` say is done: the hashes of jobs whose listed images all exist
/// (a deleted image makes its job run again). Lines that do not parse are counted, not fatal.
pub fn finished(out_dir: &Path) -> Result<(HashSet<String>, usize), ManifestError> {
    let mut done = HashSet::new();
    let mut unreadable = 0;
    let Ok(rd) = std::fs::read_dir(out_dir) else {
        return Ok((done, 0));
    };
    let mut files: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(is_manifest))
        .map(|e| e.path())
        .collect();
    files.sort();
    for path in files {
        let err = |source| ManifestError::Read {
            path: path.clone(),
            source,
        };
        let f = File::open(&path).map_err(err)?;
        for line in BufReader::new(f).split(b'\n') {
            let line = line.map_err(err)?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<Listed>(&line) {
                Ok(l) if l.images.iter().all(|i| out_dir.join(&i.path).is_file()) => {
                    done.insert(l.hash);
                }
                Ok(_) => {}
                Err(_) => unreadable += 1,
            }
        }
    }
    Ok((done, unreadable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finished_jobs_are_those_whose_images_exist_and_torn_lines_are_survived() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        std::fs::write(out.join("a.png"), b"x").unwrap();
        let path = out.join("results.jsonl");
        {
            let mut m = Manifest::open(&path).unwrap();
            m.append(&json!({"hash": "A", "images": [{"path": "a.png", "seed": 1, "index": 0}]}))
                .unwrap();
            m.append(
                &json!({"hash": "B", "images": [{"path": "gone.png", "seed": 1, "index": 0}]}),
            )
            .unwrap();
        }
        // A run killed halfway through a line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"hash": "C", "ima"#).unwrap();
        drop(f);
        std::fs::write(out.join("c.png"), b"x").unwrap();
        let mut m = Manifest::open(&path).unwrap();
        m.append(&json!({"hash": "C", "images": [{"path": "c.png", "seed": 2, "index": 0}]}))
            .unwrap();
        // Another shard's manifest counts too; other files do not.
        std::fs::write(
            out.join(file_name("2/3".parse().unwrap())),
            "{\"hash\": \"D\", \"images\": []}\n",
        )
        .unwrap();
        std::fs::write(
            out.join("notes.jsonl"),
            "{\"hash\": \"E\", \"images\": []}\n",
        )
        .unwrap();
        let (done, unreadable) = finished(out).unwrap();
        let mut got: Vec<_> = done.into_iter().collect();
        got.sort();
        assert_eq!(got, vec!["A", "C", "D"]);
        assert_eq!(unreadable, 1);
    }

    #[test]
    fn an_unwritable_manifest_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let e = Manifest::open(&dir.path().join("no/such/dir/results.jsonl"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no/such/dir/results.jsonl"), "{e}");
    }
}
