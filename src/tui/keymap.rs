//! Key bindings: every binding names an action and carries a description, so the help overlay,
//! the status-bar hints and the command palette are all generated from this one table.
//! Users replace an action's keys in the config's `[keys]` table (`"queue.cancel" = ["x", "Delete"]`).

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use std::collections::BTreeMap;
use std::fmt;

/// Where a binding applies. `Global` is consulted after the focused context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Context {
    Global,
    Prompt,
    Queue,
    Gallery,
    Loras,
    Schedule,
    Settings,
    /// The picture shown full screen.
    Picture,
}

impl Context {
    pub const ALL: [Context; 8] = [
        Context::Global,
        Context::Prompt,
        Context::Queue,
        Context::Gallery,
        Context::Loras,
        Context::Schedule,
        Context::Settings,
        Context::Picture,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Context::Global => "global",
            Context::Prompt => "prompt",
            Context::Queue => "queue",
            Context::Gallery => "gallery",
            Context::Loras => "loras",
            Context::Schedule => "schedule",
            Context::Settings => "settings",
            Context::Picture => "picture",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Context::Global => "Everywhere",
            Context::Prompt => "Prompt editor",
            Context::Queue => "Queue",
            Context::Gallery => "Gallery",
            Context::Loras => "LoRA browser",
            Context::Schedule => "Schedule editor",
            Context::Settings => "Settings",
            Context::Picture => "Full-screen picture",
        }
    }
}

macro_rules! actions {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// Everything a key can do. The names are what `[keys]` in the config refers to.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Action { $($variant),* }
        impl Action {
            pub fn name(self) -> &'static str { match self { $(Action::$variant => $name),* } }
        }
    };
}

actions! {
    Submit => "submit", Interrupt => "interrupt", Skip => "skip", Help => "help", Palette => "palette",
    FocusNext => "focus_next", FocusPrev => "focus_prev", ViewGenerate => "view_generate",
    ViewLoras => "view_loras", ViewSchedule => "view_schedule", ViewSettings => "view_settings",
    Quit => "quit", Fullscreen => "fullscreen", Suspend => "suspend", Redraw => "redraw", Back => "back",
    Left => "left", Right => "right", Up => "up", Down => "down", WordLeft => "word_left",
    WordRight => "word_right", LineStart => "line_start", LineEnd => "line_end",
    Backspace => "backspace", Delete => "delete", DeleteWord => "delete_word", KillToEnd => "kill_to_end",
    KillToStart => "kill_to_start", Newline => "newline", Undo => "undo", Redo => "redo",
    HistoryPrev => "history_prev", HistoryNext => "history_next",
    StrengthUp => "strength_up", StrengthDown => "strength_down", EditSchedule => "edit_schedule",
    SelectPrev => "select_prev", SelectNext => "select_next", Cancel => "cancel", Show => "show",
    SendToPrompt => "send_to_prompt", Insert => "insert", Rescan => "rescan",
    PrevPoint => "prev_point", NextPoint => "next_point", ValueUp => "value_up", ValueDown => "value_down",
    ValueUpBig => "value_up_big", ValueDownBig => "value_down_big", MoveLeft => "move_left",
    MoveRight => "move_right", AddPoint => "add_point", DeletePoint => "delete_point",
    NextComponent => "next_component", PrevComponent => "prev_component", PrevTag => "prev_tag",
    NextTag => "next_tag", MakeConstant => "make_constant",
    Increase => "increase", Decrease => "decrease", Toggle => "toggle", RandomSeed => "random_seed",
    PickModel => "pick_model", SendToImg2img => "send_to_img2img", SendToInpaint => "send_to_inpaint",
    PromptSteps => "prompt_steps", OpenInit => "open_init_image",
}

/// A key with its modifiers, written `C-g`, `M-z`, `S-Up`, `F5`, `Enter`, `?`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyCombo {
    pub code: KeyCode,
    pub mods: KeyModifiers,
}

impl KeyCombo {
    /// Folds the ways terminals report the same key (Shift on a character, Shift on BackTab).
    pub fn from_event(ev: &KeyEvent) -> KeyCombo {
        let mut mods =
            ev.modifiers & (KeyModifiers::CONTROL | KeyModifiers::ALT | KeyModifiers::SHIFT);
        let code = match ev.code {
            KeyCode::Char(c) => {
                mods.remove(KeyModifiers::SHIFT);
                if mods.contains(KeyModifiers::CONTROL) {
                    KeyCode::Char(c.to_ascii_lowercase())
                } else {
                    KeyCode::Char(c)
                }
            }
            KeyCode::BackTab => {
                mods.remove(KeyModifiers::SHIFT);
                KeyCode::BackTab
            }
            other => other,
        };
        KeyCombo { code, mods }
    }

    pub fn parse(s: &str) -> Result<KeyCombo, KeyParseError> {
        let bad = || KeyParseError(s.to_string());
        let mut mods = KeyModifiers::NONE;
        let mut rest = s;
        while rest.len() > 2 && rest.as_bytes()[1] == b'-' {
            match rest.as_bytes()[0] {
                b'C' => mods |= KeyModifiers::CONTROL,
                b'M' | b'A' => mods |= KeyModifiers::ALT,
                b'S' => mods |= KeyModifiers::SHIFT,
                _ => return Err(bad()),
            }
            rest = &rest[2..];
        }
        let code = match rest {
            "Enter" => KeyCode::Enter,
            "Esc" => KeyCode::Esc,
            "Tab" => KeyCode::Tab,
            "BackTab" => KeyCode::BackTab,
            "Backspace" => KeyCode::Backspace,
            "Delete" => KeyCode::Delete,
            "Insert" => KeyCode::Insert,
            "Home" => KeyCode::Home,
            "End" => KeyCode::End,
            "PageUp" => KeyCode::PageUp,
            "PageDown" => KeyCode::PageDown,
            "Up" => KeyCode::Up,
            "Down" => KeyCode::Down,
            "Left" => KeyCode::Left,
            "Right" => KeyCode::Right,
            "Space" => KeyCode::Char(' '),
            f if f.len() > 1 && f.starts_with('F') => {
                KeyCode::F(f[1..].parse().map_err(|_| bad())?)
            }
            c if c.chars().count() == 1 => {
                let ch = c.chars().next().ok_or_else(bad)?;
                KeyCode::Char(if mods.contains(KeyModifiers::CONTROL) {
                    ch.to_ascii_lowercase()
                } else {
                    ch
                })
            }
            _ => return Err(bad()),
        };
        if matches!(code, KeyCode::Char(_)) {
            mods.remove(KeyModifiers::SHIFT);
        }
        Ok(KeyCombo { code, mods })
    }
}

impl fmt::Display for KeyCombo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mods.contains(KeyModifiers::CONTROL) {
            f.write_str("C-")?;
        }
        if self.mods.contains(KeyModifiers::ALT) {
            f.write_str("M-")?;
        }
        if self.mods.contains(KeyModifiers::SHIFT) {
            f.write_str("S-")?;
        }
        match self.code {
            KeyCode::Char(' ') => f.write_str("Space"),
            KeyCode::Char(c) => write!(f, "{c}"),
            KeyCode::F(n) => write!(f, "F{n}"),
            KeyCode::Enter => f.write_str("Enter"),
            KeyCode::Esc => f.write_str("Esc"),
            KeyCode::Tab => f.write_str("Tab"),
            KeyCode::BackTab => f.write_str("S-Tab"),
            KeyCode::Backspace => f.write_str("Bksp"),
            KeyCode::Delete => f.write_str("Del"),
            KeyCode::Insert => f.write_str("Ins"),
            KeyCode::Home => f.write_str("Home"),
            KeyCode::End => f.write_str("End"),
            KeyCode::PageUp => f.write_str("PgUp"),
            KeyCode::PageDown => f.write_str("PgDn"),
            KeyCode::Up => f.write_str("↑"),
            KeyCode::Down => f.write_str("↓"),
            KeyCode::Left => f.write_str("←"),
            KeyCode::Right => f.write_str("→"),
            other => write!(f, "{other:?}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read key {0:?}; write keys like C-g, M-z, S-Up, F5, Enter, x")]
pub struct KeyParseError(pub String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeymapError {
    #[error("[keys] {0:?}: no such action; write context.action, e.g. \"queue.cancel\"")]
    UnknownAction(String),
    #[error("[keys] {entry:?}: {source}")]
    BadKey {
        entry: String,
        source: KeyParseError,
    },
}

/// One line of the keymap: keys, what they do, and the words the help shows.
#[derive(Debug, Clone)]
pub struct Binding {
    pub ctx: Context,
    pub keys: Vec<KeyCombo>,
    pub action: Action,
    pub desc: &'static str,
    /// Short label for the status bar when its context has focus; empty for none.
    pub hint: &'static str,
}

#[derive(Debug, Clone)]
pub struct Keymap {
    pub bindings: Vec<Binding>,
}

/// `(context, keys, action, description, status-bar label)`; the single source of the defaults.
const DEFAULTS: &[(Context, &str, Action, &str, &str)] = {
    use Action::*;
    use Context::*;
    &[
        (
            Global,
            "F5 C-g",
            Submit,
            "submit the prompt to the queue",
            "submit",
        ),
        (
            Global,
            "C-c F6",
            Interrupt,
            "interrupt the running job",
            "interrupt",
        ),
        (Global, "F7", Skip, "skip the image being made", ""),
        (Global, "F1", Help, "show all key bindings", "help"),
        (Global, "C-p", Palette, "command palette", ""),
        (Global, "Tab", FocusNext, "focus the next pane", ""),
        (Global, "BackTab", FocusPrev, "focus the previous pane", ""),
        (
            Global,
            "M-1",
            ViewGenerate,
            "generate view (prompt, queue, preview)",
            "",
        ),
        (Global, "F2 M-2", ViewLoras, "LoRA browser", "LoRAs"),
        (
            Global,
            "F3 M-3",
            ViewSchedule,
            "schedule editor for the tag at the cursor",
            "schedule",
        ),
        (Global, "F4 M-4", ViewSettings, "settings", "settings"),
        (
            Global,
            "F9 M-m",
            PickModel,
            "choose the model (checkpoints and model folders)",
            "model",
        ),
        (
            Global,
            "M-o",
            OpenInit,
            "start the next jobs from a picture file (img2img)",
            "",
        ),
        (
            Global,
            "F10 M-s",
            PromptSteps,
            "the prompt's text at each step (prompt editing, alternation, AND)",
            "",
        ),
        (Global, "Esc", Back, "close / back to the generate view", ""),
        (
            Global,
            "F8",
            Fullscreen,
            "show the picture full screen",
            "full screen",
        ),
        (Global, "C-q", Quit, "quit (asks if jobs are running)", ""),
        (
            Global,
            "C-z",
            Suspend,
            "suspend to the shell (fg returns)",
            "",
        ),
        (Global, "C-l", Redraw, "redraw the screen", ""),
        (Prompt, "Left", Left, "cursor left", ""),
        (Prompt, "Right", Right, "cursor right", ""),
        (
            Prompt,
            "Up",
            Up,
            "cursor up (history at the first line)",
            "",
        ),
        (
            Prompt,
            "Down",
            Down,
            "cursor down (history at the last line)",
            "",
        ),
        (Prompt, "M-b C-Left", WordLeft, "word left", ""),
        (Prompt, "M-f C-Right", WordRight, "word right", ""),
        (Prompt, "Home C-a", LineStart, "start of line", ""),
        (Prompt, "End C-e", LineEnd, "end of line", ""),
        (
            Prompt,
            "Backspace",
            Backspace,
            "delete before the cursor",
            "",
        ),
        (Prompt, "Delete", Delete, "delete under the cursor", ""),
        (
            Prompt,
            "C-w M-Backspace",
            DeleteWord,
            "delete the word before the cursor",
            "",
        ),
        (
            Prompt,
            "C-k",
            KillToEnd,
            "delete to the end of the line",
            "",
        ),
        (
            Prompt,
            "C-u",
            KillToStart,
            "delete to the start of the line",
            "",
        ),
        (Prompt, "Enter", Newline, "new line", ""),
        (Prompt, "M-z", Undo, "undo", "undo"),
        (Prompt, "C-y M-Z", Redo, "redo", ""),
        (
            Prompt,
            "M-p PageUp",
            HistoryPrev,
            "previous prompt from history",
            "",
        ),
        (
            Prompt,
            "M-n PageDown",
            HistoryNext,
            "next prompt from history",
            "",
        ),
        (
            Prompt,
            "M-Up M-=",
            StrengthUp,
            "raise the strength of the tag at the cursor",
            "tag strength+",
        ),
        (
            Prompt,
            "M-Down M--",
            StrengthDown,
            "lower the strength of the tag at the cursor",
            "",
        ),
        (Queue, "Up k", SelectPrev, "previous job", ""),
        (Queue, "Down j", SelectNext, "next job", ""),
        (Queue, "Enter", Submit, "submit the prompt", "submit"),
        (
            Queue,
            "x Delete",
            Cancel,
            "cancel the selected job",
            "cancel",
        ),
        (
            Queue,
            "i",
            Interrupt,
            "interrupt the running job",
            "interrupt",
        ),
        (Queue, "s", Skip, "skip the image being made", "skip"),
        (Queue, "?", Help, "help", ""),
        (Gallery, "Up k", SelectPrev, "previous image", ""),
        (Gallery, "Down j", SelectNext, "next image", ""),
        (Gallery, "Enter", Show, "show in the preview", "show"),
        (
            Gallery,
            "i",
            SendToImg2img,
            "start the next jobs from this picture (img2img)",
            "img2img",
        ),
        (
            Gallery,
            "m",
            SendToInpaint,
            "draw a mask over this picture and inpaint it",
            "inpaint",
        ),
        (
            Gallery,
            "p",
            SendToPrompt,
            "send prompt and settings back to the editor",
            "to prompt",
        ),
        (Gallery, "?", Help, "help", ""),
        (Loras, "Up", SelectPrev, "previous adapter", ""),
        (Loras, "Down", SelectNext, "next adapter", ""),
        (Loras, "Enter", Insert, "insert into the prompt", "insert"),
        (
            Loras,
            "Right",
            StrengthUp,
            "raise its strength in the prompt",
            "strength+",
        ),
        (
            Loras,
            "Left",
            StrengthDown,
            "lower its strength in the prompt",
            "strength-",
        ),
        (Loras, "C-r", Rescan, "rescan the LoRA folders", ""),
        (Schedule, "Left h", PrevPoint, "previous point", "prev"),
        (Schedule, "Right l", NextPoint, "next point", "next"),
        (Schedule, "Up k", ValueUp, "value +0.05", "value+"),
        (Schedule, "Down j", ValueDown, "value -0.05", ""),
        (Schedule, "PageUp", ValueUpBig, "value +0.25", ""),
        (Schedule, "PageDown", ValueDownBig, "value -0.25", ""),
        (Schedule, "< ,", MoveLeft, "move the point earlier", "move"),
        (Schedule, "> .", MoveRight, "move the point later", ""),
        (
            Schedule,
            "a Insert",
            AddPoint,
            "add a point after this one",
            "add",
        ),
        (
            Schedule,
            "d Delete",
            DeletePoint,
            "delete the point",
            "delete",
        ),
        (
            Schedule,
            "Tab",
            NextComponent,
            "next component (te, unet, in, mid, out)",
            "component",
        ),
        (Schedule, "BackTab", PrevComponent, "previous component", ""),
        (Schedule, "[", PrevTag, "previous adapter in the prompt", ""),
        (Schedule, "]", NextTag, "next adapter in the prompt", ""),
        (Schedule, "c", MakeConstant, "make the curve constant", ""),
        (Settings, "Up k", SelectPrev, "previous setting", ""),
        (Settings, "Down j", SelectNext, "next setting", ""),
        (
            Settings,
            "Right l +",
            Increase,
            "increase / next choice",
            "more",
        ),
        (
            Settings,
            "Left h -",
            Decrease,
            "decrease / previous choice",
            "less",
        ),
        (Settings, "Enter Space", Toggle, "toggle / cycle", "toggle"),
        (Settings, "r", RandomSeed, "new random seed", ""),
        (
            Picture,
            "Esc F8 q Enter",
            Back,
            "back from the full-screen picture",
            "back",
        ),
    ]
};

impl Default for Keymap {
    fn default() -> Self {
        let bindings = DEFAULTS
            .iter()
            .map(|&(ctx, keys, action, desc, hint)| Binding {
                ctx,
                keys: keys
                    .split_whitespace()
                    .map(|k| KeyCombo::parse(k).unwrap_or_else(|e| panic!("built-in keymap: {e}")))
                    .collect(),
                action,
                desc,
                hint,
            })
            .collect();
        Keymap { bindings }
    }
}

impl Keymap {
    /// Defaults with the user's `[keys]` entries applied; each entry replaces that action's keys.
    pub fn with_overrides(
        overrides: &BTreeMap<String, Vec<String>>,
    ) -> Result<Keymap, KeymapError> {
        let mut map = Keymap::default();
        for (entry, keys) in overrides {
            let (ctx, action) = entry
                .split_once('.')
                .ok_or_else(|| KeymapError::UnknownAction(entry.clone()))?;
            let combos = keys
                .iter()
                .map(|k| KeyCombo::parse(k))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| KeymapError::BadKey {
                    entry: entry.clone(),
                    source,
                })?;
            let b = map
                .bindings
                .iter_mut()
                .find(|b| b.ctx.name() == ctx && b.action.name() == action)
                .ok_or_else(|| KeymapError::UnknownAction(entry.clone()))?;
            b.keys = combos;
        }
        Ok(map)
    }

    /// The action bound to `key` in `ctx`, else in `Global`.
    pub fn lookup(&self, ctx: Context, key: &KeyEvent) -> Option<Action> {
        let combo = KeyCombo::from_event(key);
        let find = |c: Context| {
            self.bindings
                .iter()
                .find(|b| b.ctx == c && b.keys.contains(&combo))
                .map(|b| b.action)
        };
        find(ctx).or_else(|| {
            if ctx == Context::Global {
                None
            } else {
                find(Context::Global)
            }
        })
    }

    /// The first key bound to `action` in `ctx` (for hints such as "F3 schedule").
    pub fn key_for(&self, ctx: Context, action: Action) -> Option<KeyCombo> {
        self.bindings
            .iter()
            .find(|b| b.ctx == ctx && b.action == action)
            .and_then(|b| b.keys.first().copied())
    }

    pub fn in_context(&self, ctx: Context) -> impl Iterator<Item = &Binding> {
        self.bindings.iter().filter(move |b| b.ctx == ctx)
    }

    /// Status-bar hints for the focused context, then the global ones.
    pub fn hints(&self, ctx: Context) -> Vec<(String, &'static str)> {
        let ctx_hints = self.in_context(ctx).filter(|b| !b.hint.is_empty());
        let global = self
            .in_context(Context::Global)
            .filter(|b| !b.hint.is_empty());
        ctx_hints
            .chain(global)
            .filter_map(|b| b.keys.first().map(|k| (k.to_string(), b.hint)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_print() {
        for s in ["C-g", "F5", "M-z", "Enter", "?", "S-Up", "C-Left"] {
            let k = KeyCombo::parse(s).unwrap();
            assert_eq!(
                KeyCombo::parse(&k.to_string().replace('↑', "Up").replace('←', "Left")).unwrap(),
                k,
                "{s}"
            );
        }
        assert!(KeyCombo::parse("X-q").is_err());
    }

    #[test]
    fn shifted_characters_match_their_binding() {
        let map = Keymap::default();
        let ev = KeyEvent::new(KeyCode::Char('?'), KeyModifiers::SHIFT);
        assert_eq!(map.lookup(Context::Queue, &ev), Some(Action::Help));
        let ev = KeyEvent::new(
            KeyCode::Char('G'),
            KeyModifiers::CONTROL | KeyModifiers::SHIFT,
        );
        assert_eq!(map.lookup(Context::Prompt, &ev), Some(Action::Submit));
    }

    #[test]
    fn overrides_replace_keys_and_reject_unknowns() {
        let mut o = BTreeMap::new();
        o.insert("queue.cancel".to_string(), vec!["c".to_string()]);
        let map = Keymap::with_overrides(&o).unwrap();
        let ev = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::NONE);
        assert_eq!(map.lookup(Context::Queue, &ev), Some(Action::Cancel));
        o.insert("queue.nope".to_string(), vec![]);
        assert!(Keymap::with_overrides(&o).is_err());
    }
}
