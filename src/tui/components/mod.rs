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
