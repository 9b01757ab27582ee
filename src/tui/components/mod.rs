//! The panes of the screen. Each holds its own state, changes it through small methods the app
//! calls, and draws itself into a `Buffer` with the theme; none reads keys or talks to the engine.

pub mod editor;
pub mod gallery;
pub mod lora_browser;
pub mod preview;
pub mod prompt;
pub mod queue;
pub mod schedule;
pub mod settings;

/// A list selection moved by `delta` among `n` entries, wrapping at both ends (unchanged if empty).
pub fn wrap_select(selected: usize, delta: isize, n: usize) -> usize {
    if n == 0 {
        return selected;
    }
    (selected as isize + delta).rem_euclid(n as isize) as usize
}
