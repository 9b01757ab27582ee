//! Hugging Face shard sets: a component's weights split over `STEM-00001-of-0000N.safetensors`
//! files, with `STEM.safetensors.index.json` (`.index.fp16.json` for the fp16 variant) whose
//! `weight_map` says which shard holds each tensor.
//!
//! [`index_names`] gives the index file names of a weights stem; [`open`] checks an index against
//! its shards and maps them as one [`Checkpoint`], read in place like a single file.

use super::checkpoint::{Checkpoint, CheckpointError};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid shard index: {why}")]
    Index { path: PathBuf, why: String },
    #[error("{index} names shard {shard}, which is missing; re-download the model")]
    MissingShard { index: PathBuf, shard: PathBuf },
    #[error("{index}: tensor {name:?} is listed in two shards, {first} and {second}")]
    ListedTwice {
        index: PathBuf,
        name: String,
        first: String,
        second: String,
    },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// The index file names of the shard sets of `stem` (`diffusion_pytorch_model`, `model`): the
/// full-precision one, then the `fp16` variant, as diffusers and transformers name them.
pub fn index_names(stem: &str) -> [String; 2] {
    [
        format!("{stem}.safetensors.index.json"),
        format!("{stem}.safetensors.index.fp16.json"),
    ]
}

/// The `weight_map` entries in file order, duplicates kept (a JSON object read into a map would
/// silently keep the last of a name listed twice).
struct Entries(Vec<(String, String)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Entries, D::Error> {
        struct Collect;
        impl<'de> Visitor<'de> for Collect {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map from tensor name to shard file name")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, String>()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(Collect)
    }
}

#[derive(Deserialize)]
struct Index {
    weight_map: Entries,
}

/// Reads the index at `index`, checks that each shard it names is a file beside it and that no
/// tensor is listed twice, and maps the shards (headers only) as one checkpoint.
pub fn open(index: &Path) -> Result<Checkpoint, ShardError> {
    let text = std::fs::read_to_string(index).map_err(|source| ShardError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let bad = |why: String| ShardError::Index {
        path: index.to_path_buf(),
        why,
    };
    let parsed: Index = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut shards: Vec<PathBuf> = Vec::new();
    let mut shard_of: HashMap<String, usize> = HashMap::new();
    let mut listed: HashMap<String, String> = HashMap::new();
    let mut weight_map = Vec::new();
    for (name, file) in parsed.weight_map.0 {
        if let Some(first) = listed.get(&name) {
            return Err(ShardError::ListedTwice {
                index: index.to_path_buf(),
                name,
                first: first.clone(),
                second: file,
            });
        }
        // A shard is a file beside its index: a path elsewhere is not one diffusers writes.
        let plain = Path::new(&file)
            .file_name()
            .is_some_and(|n| n == file.as_str());
        if !plain || file == ".." {
            return Err(bad(format!(
                "shard {file:?} (of tensor {name:?}) is not a file name in the index's folder"
            )));
        }
        let next = shards.len();
        let shard = *shard_of.entry(file.clone()).or_insert(next);
        if shard == next {
            let path = dir.join(&file);
            if !path.is_file() {
                return Err(ShardError::MissingShard {
                    index: index.to_path_buf(),
                    shard: path,
                });
            }
            shards.push(path);
        }
        listed.insert(name.clone(), file);
        weight_map.push((name, shard));
    }
    if shards.is_empty() {
        return Err(bad("its weight_map lists no tensor".into()));
    }
    Ok(Checkpoint::open_sharded(index, &shards, &weight_map)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_shard(path: &Path, names: &[&str]) {
        let data = [0u8, 60, 0, 64];
        let views: Vec<(String, safetensors::tensor::TensorView)> = names
            .iter()
            .map(|n| {
                let v =
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F16, vec![2], &data)
                        .unwrap();
                (n.to_string(), v)
            })
            .collect();
        safetensors::serialize_to_file(views, None, path).unwrap();
    }

    fn error(index_json: &str, shards: &[(&str, &[&str])]) -> String {
        let dir = tempfile::tempdir().unwrap();
        for (file, names) in shards {
            write_shard(&dir.path().join(file), names);
        }
        let index = dir.path().join("m.safetensors.index.json");
        std::fs::write(&index, index_json).unwrap();
        match open(&index) {
            Ok(_) => "opened".into(),
            Err(e) => e.to_string(),
        }
    }

    const A: &str = "m-00001-of-00002.safetensors";
    const B: &str = "m-00002-of-00002.safetensors";

    #[test]
    fn shards_read_as_one_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        write_shard(&dir.path().join(A), &["x"]);
        write_shard(&dir.path().join(B), &["y", "z"]);
        let index = dir.path().join("m.safetensors.index.json");
        let json = format!(
            r#"{{"metadata": {{}}, "weight_map": {{"x": "{A}", "y": "{B}", "z": "{B}"}}}}"#
        );
        std::fs::write(&index, json).unwrap();
        let ck = open(&index).unwrap();
        let mut names: Vec<String> = ck.shapes().into_keys().collect();
        names.sort();
        assert_eq!(names, ["x", "y", "z"]);
        assert_eq!(ck.tensor("z").unwrap().to_f32(), [1.0, 2.0]);
        assert!(ck.tensor("w").is_none());
    }

    /// Each broken set: its index, its shards (file, tensors) and what the error must say.
    #[test]
    fn broken_sets_name_the_files_at_fault() {
        let both = format!(r#"{{"weight_map": {{"x": "{A}", "y": "{B}"}}}}"#);
        let twice = format!(r#"{{"weight_map": {{"x": "{A}", "x": "{B}"}}}}"#);
        type Shards<'a> = &'a [(&'a str, &'a [&'a str])];
        let cases: [(&str, Shards, &[&str]); 4] = [
            // A shard the index names is missing.
            (
                &both,
                &[(A, &["x"])],
                &["names shard ", B, "which is missing"],
            ),
            // One tensor listed for two shards.
            (
                &twice,
                &[(A, &["x"]), (B, &["y"])],
                &["tensor \"x\" is listed in two shards", A, B],
            ),
            // Two shards hold the same tensor.
            (
                &both,
                &[(A, &["x"]), (B, &["x", "y"])],
                &["tensor \"x\" is in two shards", A, B],
            ),
            // A shard lacks a tensor listed for it.
            (
                &both,
                &[(A, &["x"]), (B, &["z"])],
                &["tensor \"y\" is listed in shard", B, "does not hold it"],
            ),
        ];
        for (index, shards, needles) in cases {
            let e = error(index, shards);
            for n in needles {
                assert!(e.contains(n), "{n:?} not in {e}");
            }
        }
    }

    #[test]
    fn a_shard_outside_the_folder_is_refused() {
        let e = error(r#"{"weight_map": {"x": "../m.safetensors"}}"#, &[]);
        assert!(
            e.contains("is not a file name in the index's folder"),
            "{e}"
        );
        let e = error(r#"{"weight_map": {}}"#, &[]);
        assert!(e.contains("lists no tensor"), "{e}");
        let e = error(r#"{"weight_map": ["x"]}"#, &[]);
        assert!(e.contains("not a valid shard index"), "{e}");
    }
}
