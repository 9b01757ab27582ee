//! The real terminal: raw mode, alternate screen and bracketed paste on entry; restored on exit,
//! on panic (of the UI thread) and around Ctrl-Z. Frames are wrapped in synchronized updates so
//! terminals that support them never show half a frame.

use crate::tui::app::App;
use crate::tui::event_loop::Screen;
use crate::tui::view;
use crossterm::event::{DisableBracketedPaste, EnableBracketedPaste};
use crossterm::style::ResetColor;
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, BeginSynchronizedUpdate, Clear, ClearType,
    EndSynchronizedUpdate, EnterAlternateScreen, LeaveAlternateScreen,
};
use crossterm::{cursor, execute};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use std::io::{self, Stdout};

pub struct Term {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

fn setup() -> io::Result<()> {
    enable_raw_mode()?;
    execute!(io::stdout(), EnterAlternateScreen, EnableBracketedPaste)
}

/// Puts the terminal back as the shell expects it; safe to call twice. The alternate screen is
/// wiped before it is left: after a resize, tmux (3.3) carries lines of it over to the shell's
/// screen, and blank lines there are harmless where the workstation's were not.
pub fn restore() -> io::Result<()> {
    let r = disable_raw_mode();
    execute!(
        io::stdout(),
        DisableBracketedPaste,
        ResetColor,
        Clear(ClearType::All),
        cursor::MoveTo(0, 0),
        LeaveAlternateScreen,
        cursor::Show
    )?;
    r
}

/// Restores the terminal before the panic message is printed, but only for panics of this thread:
/// the engine thread's panics are caught and reported as failed jobs while the UI goes on.
pub fn install_panic_hook() {
    let ui = std::thread::current().id();
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() == ui {
            let _ = restore();
        }
        prev(info);
    }));
}

impl Term {
    pub fn enter() -> io::Result<Term> {
        setup()?;
        let mut terminal = Terminal::new(CrosstermBackend::new(io::stdout()))?;
        terminal.clear()?;
        Ok(Term { terminal })
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        let _ = restore();
    }
}

impl Screen for Term {
    fn draw(&mut self, app: &mut App) -> io::Result<()> {
        execute!(io::stdout(), BeginSynchronizedUpdate)?;
        let r = self.terminal.draw(|f| view::draw(f, app)).map(|_| ());
        execute!(io::stdout(), EndSynchronizedUpdate)?;
        r
    }

    fn suspend(&mut self) -> io::Result<()> {
        restore()?;
        // Raw mode turns Ctrl-Z into a key; stop ourselves the way the shell would have.
        #[cfg(unix)]
        unsafe {
            libc::raise(libc::SIGTSTP);
        }
        // Execution continues here after `fg`.
        setup()?;
        self.terminal.clear()
    }

    fn clear(&mut self) -> io::Result<()> {
        self.terminal.clear()
    }
}

/// Draws into ratatui's `TestBackend`; used by tests and snapshot tools.
pub struct TestScreen {
    pub terminal: Terminal<ratatui::backend::TestBackend>,
}

impl TestScreen {
    pub fn new(width: u16, height: u16) -> TestScreen {
        let terminal = Terminal::new(ratatui::backend::TestBackend::new(width, height))
            .unwrap_or_else(|e| match e {});
        TestScreen { terminal }
    }
}

impl Screen for TestScreen {
    fn draw(&mut self, app: &mut App) -> io::Result<()> {
        self.terminal
            .draw(|f| view::draw(f, app))
            .map(|_| ())
            .map_err(|e| match e {})
    }
    fn suspend(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn clear(&mut self) -> io::Result<()> {
        self.terminal.clear().map_err(|e| match e {})
    }
}
