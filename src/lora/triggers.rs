//! Trigger words, in order: `modelspec.trigger_phrase`, a Civitai sidecar (`NAME.civitai.info` or
//! `NAME.json` with `trainedWords`, or A1111's `activation text`), then `ss_tag_frequency` tags by count.
//!
//! De-duplicated, first occurrence kept; folder names of `ss_tag_frequency` are not tags.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde_json::Value;

/// Collects trigger words for the adapter at `path` with metadata `md`.
pub fn triggers(path: &Path, md: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(p) = md.get("modelspec.trigger_phrase") {
        out.extend(p.split(',').map(|s| s.trim().to_string()));
    }
    out.extend(sidecar_words(path));
    if let Some(tf) = md.get("ss_tag_frequency") {
        out.extend(tag_frequency(tf));
    }
    let mut seen = HashSet::new();
    out.retain(|w| !w.is_empty() && seen.insert(w.to_lowercase()));
    out
}

fn sidecar_words(path: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for ext in ["civitai.info", "json"] {
        let Ok(text) = std::fs::read_to_string(path.with_extension(ext)) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if let Some(words) = v.get("trainedWords").and_then(Value::as_array) {
            for w in words.iter().filter_map(Value::as_str) {
                out.extend(w.split(',').map(|s| s.trim().to_string()));
            }
        }
        if let Some(a) = v.get("activation text").and_then(Value::as_str) {
            out.extend(a.split(',').map(|s| s.trim().to_string()));
        }
    }
    out
}

/// Inner tags of `{dir: {tag: count}}`, summed over folders, by count (then name).
pub fn tag_frequency(json: &str) -> Vec<String> {
    let Ok(Value::Object(dirs)) = serde_json::from_str::<Value>(json) else {
        return Vec::new();
    };
    let mut counts: BTreeMap<String, f64> = BTreeMap::new();
    for (_, tags) in dirs {
        if let Value::Object(tags) = tags {
            for (tag, n) in tags {
                *counts.entry(tag.trim().to_string()).or_default() += n.as_f64().unwrap_or(0.0);
            }
        }
    }
    let mut v: Vec<(String, f64)> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.into_iter().map(|(t, _)| t).collect()
}
