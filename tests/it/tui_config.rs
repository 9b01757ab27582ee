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

fn config_error(file: &str, env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, file).unwrap();
    let env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match config::load_layers(Some(&path), Some(env), &[]) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn an_unknown_config_key_is_an_error_naming_the_closest_key() {
    let e = config_error("[generation]\nstesp = 30\n", &[]);
    assert!(e.contains("unknown key `generation.stesp`"), "{e}");
    assert!(e.contains("did you mean `generation.steps`?"), "{e}");
    assert!(e.contains("config.toml"), "says where: {e}");
    let e = config_error("lora_folder = []\n", &[]);
    assert!(e.contains("did you mean `lora_folders`?"), "{e}");
    let e = config_error("[genration]\nsteps = 3\n", &[]);
    assert!(e.contains("did you mean `generation`?"), "{e}");
    // From the environment, named as a variable.
    let e = config_error("", &[("STIPPLE_GENERATION__STESP", "3")]);
    assert!(e.contains("STIPPLE_GENERATION__STESP"), "{e}");
    assert!(
        e.contains("did you mean `STIPPLE_GENERATION__STEPS`?"),
        "{e}"
    );
    // Key bindings are free-form, and stipple's other variables are not config keys.
    let ok = config_error(
        "[keys]\n\"global.quit\" = [\"C-x\"]\n",
        &[("STIPPLE_LOG", "debug"), ("STIPPLE_LORA_DIRS", "/a")],
    );
    assert_eq!(ok, "");
}

#[test]
fn the_config_lora_method_and_the_flag_reach_the_engine_settings() {
    use stipple::cli::flags::EngineFlags;
    use stipple::cli::resolve;
    use stipple::live::LoraMethod;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "[generation]\nlora_method = \"refuse\"\n").unwrap();
    let c = config::load_layers(Some(&path), Some(Default::default()), &[]).unwrap();
    assert_eq!(c.generation.lora_method, LoraMethod::Refuse);
    let flags = EngineFlags::default();
    assert_eq!(
        resolve::engine(&flags, None, &c).unwrap().lora_method,
        LoraMethod::Refuse
    );
    let flags = EngineFlags {
        lora_method: Some(LoraMethod::Live),
        ..EngineFlags::default()
    };
    assert_eq!(
        resolve::engine(&flags, None, &c).unwrap().lora_method,
        LoraMethod::Live
    );
    // A flag given before the subcommand fills the subcommand's, which wins.
    let outer = EngineFlags {
        lora_method: Some(LoraMethod::Refuse),
        threads: Some(3),
        ..EngineFlags::default()
    };
    let merged = flags.under(&outer);
    assert_eq!(merged.lora_method, Some(LoraMethod::Live));
    assert_eq!(merged.threads, Some(3));
}

#[test]
fn the_settings_toggle_sets_the_method_of_the_next_job() {
    use crate::tui_support::services;
    use crate::tui_support::{app, catalog, press, type_text, ScriptedRunner};
    use crossterm::event::KeyCode;
    use stipple::live::LoraMethod;
    use stipple::tui::event_loop::perform;
    use stipple::tui::terminal::TestScreen;
    let mut app = app();
    let sink: stipple::tui::MethodSink = Default::default();
    app.method_sink = Some(sink.clone());
    assert_eq!(app.settings.lora_method, LoraMethod::Fuse);
    type_text(&mut app, "a fox");
    // F4 opens Settings; the ninth field is the LoRA method; Enter cycles it.
    press(&mut app, KeyCode::F(4));
    for _ in 0..8 {
        press(&mut app, KeyCode::Down);
    }
    press(&mut app, KeyCode::Enter);
    assert_eq!(app.settings.lora_method, LoraMethod::Live);
    let (engine, _rx) = stipple::engine::Engine::spawn(ScriptedRunner::free());
    let cat = catalog();
    let svc = services(&engine, &cat, None);
    let job = app.build_job().unwrap();
    let mut screen = TestScreen::new(80, 24);
    perform(
        &mut app,
        vec![stipple::tui::app::Effect::Submit(job)],
        &svc,
        &mut screen,
    )
    .unwrap();
    assert_eq!(*sink.lock().unwrap(), LoraMethod::Live);
    engine.shutdown_and_wait();
}
