//! A1111's short model hash (the first 10 hex digits of a file's sha256), cached by path, size and
//! modification time in `$XDG_CACHE_HOME/stipple/hashes.json`, so a big file is hashed once.
//!
//! [`short_hash`] never fails: an unreadable file has no hash, an unwritable cache is skipped.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(serde::Serialize, serde::Deserialize, Clone, PartialEq)]
struct Entry {
    size: u64,
    mtime_ns: u128,
    sha256: String,
}

fn cache_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("stipple").join("hashes.json"))
}

fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The first 10 hex digits of `path`'s sha256 (what A1111 writes as `Model hash`).
pub fn short_hash(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let mtime_ns = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    let key = path.canonicalize().ok()?.to_string_lossy().into_owned();
    let cache = cache_file();
    let mut entries: BTreeMap<String, Entry> = cache
        .as_ref()
        .and_then(|c| std::fs::read_to_string(c).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let fresh = |e: &Entry| e.size == meta.len() && e.mtime_ns == mtime_ns;
    let sha = match entries.get(&key).filter(|e| fresh(e)) {
        Some(e) => e.sha256.clone(),
        None => {
            let sha = sha256_of(path).ok()?;
            entries.insert(
                key,
                Entry {
                    size: meta.len(),
                    mtime_ns,
                    sha256: sha.clone(),
                },
            );
            if let Some(c) = &cache {
                // A cache that cannot be written costs a re-hash next time, nothing else.
                let _ = save(c, &entries);
            }
            sha
        }
    };
    Some(sha.chars().take(10).collect())
}

/// Writes the cache atomically (temporary file, then rename).
fn save(path: &Path, entries: &BTreeMap<String, Entry>) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec(entries).unwrap_or_default())?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_hash_is_the_sha256_prefix_and_is_cached() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.safetensors");
        std::fs::write(&f, b"abc").unwrap();
        // sha256("abc") is ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad.
        assert_eq!(sha256_of(&f).unwrap()[..10], *"ba7816bf8f");
        assert_eq!(short_hash(&f).as_deref(), Some("ba7816bf8f"));
        assert_eq!(short_hash(&f).as_deref(), Some("ba7816bf8f"));
    }
}
