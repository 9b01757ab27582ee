//! Shipped data must load: every built-in theme parses and defines every style the code asks for,
//! user themes override by name and inherit, the default config parses, the keymap is consistent.

use std::collections::HashSet;
use stipple::config::{self, Config};
use stipple::tui::keymap::{Context, Keymap};
use stipple::tui::theme::{Theme, BUILTIN, KEYS};

#[test]
fn every_builtin_theme_defines_every_style() {
    for (name, _) in BUILTIN {
        let theme = Theme::load(name, None).unwrap_or_else(|e| panic!("{name}: {e}"));
        let missing: Vec<&&str> = KEYS.iter().filter(|k| !theme.defines(k)).collect();
        assert!(missing.is_empty(), "theme {name} lacks {missing:?}");
    }
}

#[test]
fn user_themes_override_and_inherit() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mine.toml"),
        "inherits = \"light\"\n[palette]\naccent = \"#ff0000\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("dark.toml"), "inherits = \"base16\"\n").unwrap();
    let mine = Theme::load("mine", Some(dir.path())).unwrap();
    assert_eq!(
        mine.get("ui.border.focused").fg,
        Some(ratatui::style::Color::Rgb(255, 0, 0))
    );
    let dark = Theme::load("dark", Some(dir.path())).unwrap();
    assert_eq!(
        dark.get("ui.border").fg,
        Some(ratatui::style::Color::DarkGray),
        "user file wins by name"
    );
    std::fs::write(dir.path().join("loop.toml"), "inherits = \"loop\"\n").unwrap();
    assert!(Theme::load("loop", Some(dir.path())).is_err());
    std::fs::write(
        dir.path().join("bad.toml"),
        "[styles]\n\"ui\" = \"nocolour\"\n",
    )
    .unwrap();
    assert!(Theme::load("bad", Some(dir.path()))
        .unwrap_err()
        .to_string()
        .contains("nocolour"));
    assert!(Theme::available(Some(dir.path())).contains(&"mine".to_string()));
}

#[test]
fn shipped_default_config_parses() {
    let c: Config = config::load_layers(None, Some(Default::default()), &[]).unwrap();
    c.validate().unwrap();
    assert_eq!(c.theme, "dark");
    Theme::load(&c.theme, None).unwrap();
    Keymap::with_overrides(&c.keys).unwrap();
}

#[test]
fn keymap_has_descriptions_and_no_clashes() {
    let map = Keymap::default();
    for ctx in Context::ALL {
        let mut seen = HashSet::new();
        for b in map.in_context(ctx) {
            assert!(!b.desc.is_empty() && !b.keys.is_empty(), "{:?}", b.action);
            for k in &b.keys {
                assert!(seen.insert(*k), "{} bound twice in {}", k, ctx.name());
            }
        }
    }
    assert!(!map.hints(Context::Prompt).is_empty());
}
