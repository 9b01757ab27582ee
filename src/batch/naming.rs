//! Output names: a job line's `out` template (`"fox/{seed}"`), checked once and rendered per image.
//!
//! [`OutName::parse`] refuses unknown placeholders and names that leave the output folder;
//! [`OutName::render`] gives the path relative to the output folder, always holding the job hash.

use std::path::{Path, PathBuf};

/// When a line has no `out`: the job hash and the image's seed.
pub const DEFAULT_TEMPLATE: &str = "{hash}-{seed}";

const PLACEHOLDERS: [&str; 5] = ["hash", "seed", "index", "line", "item"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("out {template:?}: unknown placeholder {{{name}}}; known: {{hash}} {{seed}} {{index}} {{line}} {{item}} and sweep variables")]
    Unknown { template: String, name: String },
    #[error("out {template:?}: unbalanced `{{` or `}}`")]
    Unbalanced { template: String },
    #[error("out {template:?}: {reason}")]
    Path {
        template: String,
        reason: &'static str,
    },
}

/// What a placeholder stands for in one image's name.
#[derive(Debug, Clone, Copy)]
pub struct NameFields<'a> {
    pub hash: &'a str,
    pub seed: u64,
    pub index: u32,
    pub line: usize,
    pub item: usize,
}

/// A checked template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutName {
    template: String,
}

impl OutName {
    /// The name must stay inside the output folder and tell the images of a job apart, so `{hash}`
    /// is appended when missing (two jobs never share a name and a rerun finds its own file), and
    /// `{index}` too when a batch of several images names neither `{seed}` nor `{index}`.
    pub fn parse(template: Option<&str>, batch: u32) -> Result<OutName, NameError> {
        let given = template
            .filter(|t| !t.is_empty())
            .unwrap_or(DEFAULT_TEMPLATE);
        // `"out": "foxes/"` names a folder: the default name goes inside it.
        let folder_default = format!("{given}{DEFAULT_TEMPLATE}");
        let given = if given.ends_with('/') {
            &folder_default
        } else {
            given
        };
        let mut t = given
            .strip_suffix(".png")
            .or_else(|| given.strip_suffix(".PNG"))
            .unwrap_or(given)
            .to_string();
        let names = placeholders(&t).ok_or_else(|| NameError::Unbalanced {
            template: given.to_string(),
        })?;
        if let Some(bad) = names.iter().find(|n| !PLACEHOLDERS.contains(&n.as_str())) {
            return Err(NameError::Unknown {
                template: given.to_string(),
                name: bad.clone(),
            });
        }
        if !names.iter().any(|n| n == "hash") {
            t.push_str("-{hash}");
        }
        if batch > 1 && !names.iter().any(|n| n == "seed" || n == "index") {
            t.push_str("-{index}");
        }
        let name = OutName { template: t };
        let sample = name.render(&NameFields {
            hash: "0123456789ab",
            seed: 1,
            index: 0,
            line: 1,
            item: 0,
        });
        check_path(&sample).map_err(|reason| NameError::Path {
            template: given.to_string(),
            reason,
        })?;
        Ok(name)
    }

    /// The image's path relative to the output folder, ending in `.png`.
    pub fn render(&self, f: &NameFields<'_>) -> PathBuf {
        let text = self
            .template
            .replace("{hash}", f.hash)
            .replace("{seed}", &f.seed.to_string())
            .replace("{index}", &f.index.to_string())
            .replace("{line}", &f.line.to_string())
            .replace("{item}", &f.item.to_string());
        PathBuf::from(format!("{text}.png"))
    }
}

/// Names inside `{...}`, or None when braces do not pair up.
fn placeholders(t: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return None;
        }
        let after = &rest[open + 1..];
        let close = after.find('}')?;
        let name = &after[..close];
        if name.contains('{') {
            return None;
        }
        out.push(name.to_string());
        rest = &after[close + 1..];
    }
    Some(out)
}

fn check_path(p: &Path) -> Result<(), &'static str> {
    let text = p.to_string_lossy();
    if text.chars().any(|c| c.is_control()) {
        return Err("control characters in a file name");
    }
    if text.contains('\\') {
        return Err("use `/` between folders");
    }
    if p.is_absolute() || text.starts_with('/') || p.has_root() {
        return Err("must be relative to the output folder (--out)");
    }
    // By text, not Path::components, which silently drops `.` and empty parts.
    for part in text.split('/') {
        match part {
            ".." => return Err("`..` would leave the output folder"),
            "." => return Err("`.` folders are not allowed"),
            "" | ".png" => return Err("an empty folder or file name"),
            s if s.starts_with(".stipple") => {
                return Err("names starting with .stipple are stipple's own")
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> NameFields<'static> {
        NameFields {
            hash: "abcdef012345",
            seed: 42,
            index: 1,
            line: 7,
            item: 3,
        }
    }

    #[test]
    fn default_and_custom_templates_render() {
        let n = OutName::parse(None, 1).unwrap();
        assert_eq!(n.render(&fields()), PathBuf::from("abcdef012345-42.png"));
        let n = OutName::parse(Some("foxes/"), 1).unwrap();
        assert_eq!(
            n.render(&fields()),
            PathBuf::from("foxes/abcdef012345-42.png")
        );
        let n = OutName::parse(Some("fox/{line}-{item}-{seed}-{hash}.png"), 1).unwrap();
        assert_eq!(
            n.render(&fields()),
            PathBuf::from("fox/7-3-42-abcdef012345.png")
        );
    }

    #[test]
    fn the_hash_and_the_index_are_added_when_missing() {
        let n = OutName::parse(Some("fox"), 1).unwrap();
        assert_eq!(n.render(&fields()), PathBuf::from("fox-abcdef012345.png"));
        let n = OutName::parse(Some("fox"), 2).unwrap();
        assert_eq!(n.render(&fields()), PathBuf::from("fox-abcdef012345-1.png"));
        let n = OutName::parse(Some("fox-{seed}"), 2).unwrap();
        assert_eq!(
            n.render(&fields()),
            PathBuf::from("fox-42-abcdef012345.png")
        );
    }

    #[test]
    fn names_that_escape_or_make_no_sense_are_refused() {
        for (t, want) in [
            ("../x", "leave the output folder"),
            ("/tmp/x", "relative"),
            ("a/./b", "`.` folders"),
            ("{nope}", "unknown placeholder {nope}"),
            ("a{seed", "unbalanced"),
            ("a}b", "unbalanced"),
            ("a//b", "empty"),
            (".stipple-staging/x", "stipple's own"),
            ("a\\b", "use `/`"),
        ] {
            let e = OutName::parse(Some(t), 1).unwrap_err().to_string();
            assert!(e.contains(want), "{t}: {e}");
        }
    }
}
