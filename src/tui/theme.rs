//! Themes: TOML files with a `[palette]` of named colours and `[styles]` keyed by dotted semantic
//! names (`prompt.lora.name` falls back to `prompt.lora`, then `prompt`), optionally `inherits`.
//! Built-ins are embedded; a file of the same name in the user's themes folder wins.

use ratatui::style::{Color, Modifier, Style};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

/// The built-in themes, embedded so the binary needs no files next to it.
pub const BUILTIN: &[(&str, &str)] = &[
    ("dark", include_str!("../../themes/dark.toml")),
    ("light", include_str!("../../themes/light.toml")),
    ("base16", include_str!("../../themes/base16.toml")),
];

/// Every style key the code asks for. A theme must define each one (or a dotted prefix of it).
pub const KEYS: &[&str] = &[
    "ui",
    "ui.border",
    "ui.border.focused",
    "ui.title",
    "ui.title.focused",
    "ui.selection",
    "ui.statusbar",
    "ui.statusbar.key",
    "ui.tab",
    "ui.tab.active",
    "ui.popup",
    "ui.popup.border",
    "ui.text.muted",
    "ui.message.info",
    "ui.message.error",
    "prompt.text",
    "prompt.lora",
    "prompt.lora.name",
    "prompt.lora.value",
    "prompt.emphasis",
    "prompt.weight",
    "prompt.break",
    "prompt.escape",
    "prompt.error",
    "prompt.error.message",
    "prompt.completion",
    "prompt.completion.selected",
    "queue.queued",
    "queue.running",
    "queue.done",
    "queue.failed",
    "queue.cancelled",
    "progress.bar",
    "progress.empty",
    "lora.incompatible",
    "lora.in_prompt",
    "schedule.curve",
    "schedule.point",
    "schedule.point.selected",
    "schedule.axis",
    "schedule.inherited",
    "help.key",
    "help.section",
    "settings.value",
];

#[derive(Debug, thiserror::Error)]
pub enum ThemeError {
    #[error("no theme named {0:?} (built in: dark, light, base16)")]
    NotFound(String),
    #[error("theme {name:?}: {source}")]
    Toml {
        name: String,
        source: toml::de::Error,
    },
    #[error("theme {name:?}: {message}")]
    Invalid { name: String, message: String },
    #[error("reading theme {name:?}: {source}")]
    Io {
        name: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ThemeFile {
    inherits: Option<String>,
    #[serde(default)]
    palette: BTreeMap<String, String>,
    #[serde(default)]
    styles: BTreeMap<String, StyleSpec>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
enum StyleSpec {
    Fg(String),
    Full {
        fg: Option<String>,
        bg: Option<String>,
        #[serde(default)]
        modifiers: Vec<String>,
    },
}

/// A resolved theme: every style computed once.
#[derive(Debug, Clone, Default)]
pub struct Theme {
    pub name: String,
    styles: BTreeMap<String, Style>,
}

impl Theme {
    /// The style for `key`, falling back along its dotted prefixes; unknown keys get the default style.
    pub fn get(&self, key: &str) -> Style {
        debug_assert!(
            KEYS.contains(&key),
            "style key {key:?} is not listed in theme::KEYS"
        );
        let mut k = key;
        loop {
            if let Some(s) = self.styles.get(k) {
                return *s;
            }
            match k.rfind('.') {
                Some(dot) => k = &k[..dot],
                None => return Style::default(),
            }
        }
    }

    /// Whether `key` or one of its prefixes is defined.
    pub fn defines(&self, key: &str) -> bool {
        let mut k = key;
        loop {
            if self.styles.contains_key(k) {
                return true;
            }
            match k.rfind('.') {
                Some(dot) => k = &k[..dot],
                None => return false,
            }
        }
    }

    /// Loads `name`: the user's themes folder first, then the built-ins.
    pub fn load(name: &str, user_dir: Option<&Path>) -> Result<Theme, ThemeError> {
        let mut chain = Vec::new();
        let mut next = Some(name.to_string());
        while let Some(n) = next.take() {
            if chain.iter().any(|(c, _): &(String, ThemeFile)| *c == n) || chain.len() > 8 {
                return Err(ThemeError::Invalid {
                    name: name.into(),
                    message: format!("`inherits` loops through {n:?}"),
                });
            }
            let text = source(&n, user_dir)?;
            let file: ThemeFile = toml::from_str(&text).map_err(|source| ThemeError::Toml {
                name: n.clone(),
                source,
            })?;
            next = file.inherits.clone();
            chain.push((n, file));
        }
        let mut palette = BTreeMap::new();
        let mut specs = BTreeMap::new();
        for (_, file) in chain.into_iter().rev() {
            palette.extend(file.palette);
            specs.extend(file.styles);
        }
        let mut styles = BTreeMap::new();
        for (key, spec) in specs {
            let style = resolve(&spec, &palette).map_err(|message| ThemeError::Invalid {
                name: name.into(),
                message: format!("style {key:?}: {message}"),
            })?;
            styles.insert(key, style);
        }
        Ok(Theme {
            name: name.into(),
            styles,
        })
    }

    /// Names of the built-ins and of the user's themes, sorted, without duplicates.
    pub fn available(user_dir: Option<&Path>) -> Vec<String> {
        let mut names: Vec<String> = BUILTIN.iter().map(|(n, _)| n.to_string()).collect();
        if let Some(entries) = user_dir.and_then(|d| std::fs::read_dir(d).ok()) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "toml") {
                    if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                        names.push(stem.to_string());
                    }
                }
            }
        }
        names.sort();
        names.dedup();
        names
    }
}

fn source(name: &str, user_dir: Option<&Path>) -> Result<String, ThemeError> {
    if let Some(dir) = user_dir {
        let path = dir.join(format!("{name}.toml"));
        match std::fs::read_to_string(&path) {
            Ok(text) => return Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ThemeError::Io {
                    name: name.into(),
                    source,
                })
            }
        }
    }
    BUILTIN
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| t.to_string())
        .ok_or_else(|| ThemeError::NotFound(name.into()))
}

fn color(s: &str, palette: &BTreeMap<String, String>) -> Result<Color, String> {
    let s = palette.get(s).map_or(s, String::as_str);
    Color::from_str(s).map_err(|_| format!("{s:?} is neither a palette name nor a colour"))
}

fn resolve(spec: &StyleSpec, palette: &BTreeMap<String, String>) -> Result<Style, String> {
    match spec {
        StyleSpec::Fg(fg) => Ok(Style::default().fg(color(fg, palette)?)),
        StyleSpec::Full { fg, bg, modifiers } => {
            let mut style = Style::default();
            if let Some(fg) = fg {
                style = style.fg(color(fg, palette)?);
            }
            if let Some(bg) = bg {
                style = style.bg(color(bg, palette)?);
            }
            for m in modifiers {
                let m = match m.as_str() {
                    "bold" => Modifier::BOLD,
                    "dim" => Modifier::DIM,
                    "italic" => Modifier::ITALIC,
                    "underlined" => Modifier::UNDERLINED,
                    "reversed" => Modifier::REVERSED,
                    "crossed_out" => Modifier::CROSSED_OUT,
                    other => return Err(format!("unknown modifier {other:?}")),
                };
                style = style.add_modifier(m);
            }
            Ok(style)
        }
    }
}
