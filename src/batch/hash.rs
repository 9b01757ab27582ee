//! Identities: [`job_hash`] (sha256 of the canonical JSON of a resolved job with its model and adapter
//! identities), [`model_identity`] and [`file_identity`] (content fingerprints that do not depend on
//! where the files live, so a job has the same hash on every machine of a cluster).

use crate::job::Job;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Files up to this size are hashed whole; larger ones (weights) by size and sampled blocks.
const WHOLE_FILE_LIMIT: u64 = 8 << 20;
const SAMPLES: u64 = 32;
const SAMPLE_LEN: u64 = 64 << 10;

/// Bumped when the hashed form changes, so old manifests stop matching instead of matching wrongly.
const HASH_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
#[error("cannot read {path} to fingerprint it: {source}")]
pub struct IdentityError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// A job's identity: 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobHash(pub String);

impl JobHash {
    /// What goes into file names: 12 hex digits (48 bits; collisions need ~16 million jobs).
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

/// JSON with object keys sorted at every level, no whitespace: one text per value.
pub fn canonical_json(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<&String, &Value> = m.iter().collect();
            let body: Vec<String> = sorted
                .into_iter()
                .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), canonical_json(v)))
                .collect();
            format!("{{{}}}", body.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical_json).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

/// sha256 over the resolved job, the model's identity and each adapter's (by tag name). The output
/// name and the job's place in the file are left out: they do not change the pixels.
pub fn job_hash(job: &Job, model: &str, adapters: &BTreeMap<String, String>) -> JobHash {
    let value = serde_json::json!({
        "format": HASH_FORMAT,
        "job": job,
        "model": model,
        "adapters": adapters,
    });
    JobHash(hex(&Sha256::digest(canonical_json(&value).as_bytes())))
}

/// A seed for a job line without one: taken from the job's other fields, so it is the same on every
/// rerun (a random seed would make resuming impossible). 32 bits, as A1111 seeds are.
pub fn derived_seed(job: &Job, model: &str) -> u64 {
    let mut j = job.clone();
    j.seed = 0;
    let h = job_hash(&j, model, &BTreeMap::new());
    u64::from_str_radix(&h.0[..8], 16).unwrap_or(0)
}

/// A file's content fingerprint: whole for small files; size plus evenly spaced blocks for large
/// ones, because reading gigabytes of weights per batch start costs more than the images.
pub fn file_identity(path: &Path) -> Result<String, IdentityError> {
    let err = |source| IdentityError {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(err)?;
    let len = f.metadata().map_err(err)?.len();
    let mut h = Sha256::new();
    h.update(len.to_le_bytes());
    if len <= WHOLE_FILE_LIMIT {
        let mut buf = Vec::with_capacity(len as usize);
        f.read_to_end(&mut buf).map_err(err)?;
        h.update(&buf);
    } else {
        let mut buf = vec![0u8; SAMPLE_LEN as usize];
        for i in 0..SAMPLES {
            let at = (len - SAMPLE_LEN) / (SAMPLES - 1) * i;
            f.seek(SeekFrom::Start(at)).map_err(err)?;
            f.read_exact(&mut buf).map_err(err)?;
            h.update(&buf);
        }
    }
    Ok(hex(&h.finalize()))
}

/// A model folder's identity: the index, the tokenizer, the scheduler and every file of the listed
/// components, by relative path and content. Copying the folder elsewhere keeps it.
/// A single-file checkpoint's identity is its own.
pub fn model_identity(dir: &Path, components: &[&str]) -> Result<String, IdentityError> {
    if dir.is_file() {
        return file_identity(dir);
    }
    let mut files = vec![PathBuf::from("model_index.json")];
    let subdirs = ["tokenizer", "tokenizer_2", "scheduler"]
        .into_iter()
        .chain(components.iter().copied());
    for sub in subdirs {
        collect_files(dir, Path::new(sub), &mut files)?;
    }
    files.sort();
    files.dedup();
    let mut h = Sha256::new();
    for rel in &files {
        h.update(rel.to_string_lossy().as_bytes());
        h.update([0]);
        h.update(file_identity(&dir.join(rel))?.as_bytes());
    }
    Ok(hex(&h.finalize()))
}

fn collect_files(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<(), IdentityError> {
    let dir = root.join(rel);
    if !dir.is_dir() {
        return Ok(());
    }
    let rd = std::fs::read_dir(&dir).map_err(|source| IdentityError {
        path: dir.clone(),
        source,
    })?;
    for entry in rd.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let child = rel.join(&name);
        let path = root.join(&child);
        if path.is_dir() {
            collect_files(root, &child, out)?;
        } else if path.is_file() {
            out.push(child);
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Sampler;

    fn job() -> Job {
        Job {
            prompt: "a fox".into(),
            negative: String::new(),
            sampler: Sampler::EulerA,
            schedule: Default::default(),
            sde_noise: Default::default(),
            zero_snr: false,
            sigmas: Default::default(),
            steps: 4,
            cfg: 7.0,
            width: 64,
            height: 64,
            seed: 1,
            batch: 1,
            init: None,
            hires: None,
        }
    }

    #[test]
    fn canonical_json_ignores_key_order() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"y":[1,2],"x":"s"}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":"s","y":[1,2]},"b":1}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(canonical_json(&a), r#"{"a":{"x":"s","y":[1,2]},"b":1}"#);
    }

    #[test]
    fn every_field_model_and_adapter_changes_the_hash() {
        let none = BTreeMap::new();
        let base = job_hash(&job(), "m", &none);
        assert_eq!(base, job_hash(&job(), "m", &none), "not deterministic");
        assert_eq!(base.0.len(), 64);
        let variants: Vec<Job> = vec![
            Job {
                prompt: "a cat".into(),
                ..job()
            },
            Job {
                negative: "blur".into(),
                ..job()
            },
            Job {
                sampler: Sampler::Ddim,
                ..job()
            },
            Job { steps: 5, ..job() },
            Job { cfg: 7.5, ..job() },
            Job { width: 72, ..job() },
            Job {
                height: 72,
                ..job()
            },
            Job { seed: 2, ..job() },
            Job { batch: 2, ..job() },
        ];
        for v in &variants {
            assert_ne!(job_hash(v, "m", &none), base, "{v:?}");
        }
        assert_ne!(job_hash(&job(), "other model", &none), base);
        let with = BTreeMap::from([("ink".to_string(), "abc".to_string())]);
        assert_ne!(job_hash(&job(), "m", &with), base);
    }

    #[test]
    fn derived_seeds_are_stable_and_follow_the_job() {
        let a = derived_seed(&job(), "m");
        assert_eq!(a, derived_seed(&Job { seed: 99, ..job() }, "m"));
        assert_ne!(
            a,
            derived_seed(
                &Job {
                    prompt: "b".into(),
                    ..job()
                },
                "m"
            )
        );
        assert!(a <= u64::from(u32::MAX));
    }

    #[test]
    fn large_files_are_fingerprinted_by_samples_that_see_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.bin");
        let mut data = vec![7u8; (WHOLE_FILE_LIMIT + 12345) as usize];
        std::fs::write(&p, &data).unwrap();
        let a = file_identity(&p).unwrap();
        data[0] = 8;
        std::fs::write(&p, &data).unwrap();
        let b = file_identity(&p).unwrap();
        assert_ne!(a, b);
        let moved = dir.path().join("elsewhere.bin");
        std::fs::rename(&p, &moved).unwrap();
        assert_eq!(
            file_identity(&moved).unwrap(),
            b,
            "identity follows content, not path"
        );
        let e = file_identity(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
    }
}
