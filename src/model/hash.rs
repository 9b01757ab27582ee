//! A1111's hashes, cached by path, size and modification time in `$XDG_CACHE_HOME/stipple/hashes.json`,
//! so a big file is hashed once: [`short_hash`] (a model's or VAE's: the first 10 hex digits of the
//! file's sha256) and [`addnet_short_hash`] (a LoRA's: the first 12 of the sha256 of a safetensors
//! file's data, its header skipped). Neither fails: an unreadable file has no hash.

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
    sha256_from(path, 0)
}

/// The sha256 of a safetensors file's data: what follows the 8-byte length and the header.
fn addnet_sha256_of(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)?;
    sha256_from(path, u64::from_le_bytes(len).saturating_add(8))
}

fn sha256_from(path: &Path, skip: u64) -> std::io::Result<String> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(skip))?;
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
    cached(path, "", sha256_of).map(|h| h.chars().take(10).collect())
}

/// The first 12 hex digits of the sha256 of a safetensors file's data (A1111's `Lora hashes`).
pub fn addnet_short_hash(path: &Path) -> Option<String> {
    cached(path, "addnet:", addnet_sha256_of).map(|h| h.chars().take(12).collect())
}

/// The full hex hash of `path` by `compute`, from the cache when the file is unchanged; `kind`
/// keeps hashes of different kinds of the same file apart.
fn cached(
    path: &Path,
    kind: &str,
    compute: fn(&Path) -> std::io::Result<String>,
) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let mtime_ns = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    let key = format!("{kind}{}", path.canonicalize().ok()?.display());
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
            let sha = compute(path).ok()?;
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
    Some(sha)
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
        // A header of 3 bytes, then "abc": the addnet hash skips the 8 + 3 bytes.
        let g = dir.path().join("l.safetensors");
        std::fs::write(&g, [&3u64.to_le_bytes()[..], b"{} ", b"abc"].concat()).unwrap();
        assert_eq!(addnet_short_hash(&g).as_deref(), Some("ba7816bf8f01"));
    }
}
