//! A one-line prompt for a file path (`o` in the mask editor, `M-o` for an init image): typed or
//! pasted (surrounding quotes
//! dropped, `~/` the home folder). The app reads the file on Enter and keeps the prompt open, its
//! text intact, when that fails. [`PathPrompt::path`] is the path as typed.

use super::centered;
use crate::tui::theme::Theme;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Widget, Wrap};
use std::path::PathBuf;

/// What the path is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathFor {
    /// A mask for the mask editor below the prompt.
    Mask,
    /// The init image of the next jobs, as `--init-image` reads it.
    Init,
}

#[derive(Debug, Clone)]
pub struct PathPrompt {
    pub purpose: PathFor,
    pub text: String,
}

impl PathPrompt {
    pub fn new(purpose: PathFor) -> PathPrompt {
        PathPrompt {
            purpose,
            text: String::new(),
        }
    }

    pub fn type_char(&mut self, c: char) {
        self.text.push(c);
    }

    pub fn backspace(&mut self) {
        self.text.pop();
    }

    /// A pasted path: its first line (a drag and drop may quote it).
    pub fn paste(&mut self, text: &str) {
        self.text.push_str(text.lines().next().unwrap_or(""));
    }

    /// The file named, or `None` while nothing is typed.
    pub fn path(&self) -> Option<PathBuf> {
        let t = self.text.trim();
        let t = ['\'', '"']
            .iter()
            .find_map(|q| t.strip_prefix(*q).and_then(|r| r.strip_suffix(*q)))
            .unwrap_or(t);
        if t.is_empty() {
            return None;
        }
        let home = std::env::var_os("HOME").map(PathBuf::from);
        match (t.strip_prefix("~/"), home) {
            (Some(rest), Some(home)) => Some(home.join(rest)),
            _ => Some(PathBuf::from(t)),
        }
    }

    pub fn render(&self, area: Rect, buf: &mut Buffer, theme: &Theme) {
        let rect = centered(area, 72, 6);
        Clear.render(rect, buf);
        let title = match self.purpose {
            PathFor::Mask => " Mask from a file (PNG, JPEG, WebP; white repaints) ",
            PathFor::Init => " Init image from a file (PNG, JPEG, WebP) ",
        };
        let block = Block::default()
            .borders(Borders::ALL)
            .border_style(theme.get("ui.popup.border"))
            .style(theme.get("ui.popup"))
            .title(title);
        let inner = block.inner(rect);
        block.render(rect, buf);
        // The end of a long path stays in view: that is where one types.
        let room = usize::from(inner.width.saturating_sub(3));
        let n = self.text.chars().count();
        let shown: String = if n > room {
            let tail: String = self.text.chars().skip(n - room + 1).collect();
            format!("…{tail}")
        } else {
            self.text.clone()
        };
        let lines = vec![
            Line::from(vec![
                Span::raw(format!(" {shown}")),
                Span::styled("▏", theme.get("ui.title.focused")),
            ]),
            Line::raw(""),
            Line::styled(
                " Enter load · Esc cancel · ~/ is the home folder",
                theme.get("ui.text.muted"),
            ),
        ];
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .render(inner, buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_and_blanks_are_dropped_and_home_is_expanded() {
        let mut p = PathPrompt::new(PathFor::Mask);
        assert_eq!(p.path(), None);
        p.paste("  '/tmp/a mask.png' \nsecond line");
        assert_eq!(p.path(), Some(PathBuf::from("/tmp/a mask.png")));
        p.text.clear();
        p.type_char('x');
        p.type_char('y');
        p.backspace();
        assert_eq!(p.path(), Some(PathBuf::from("x")));
        if let Some(home) = std::env::var_os("HOME") {
            p.text = "~/m.png".into();
            assert_eq!(p.path(), Some(PathBuf::from(home).join("m.png")));
        }
    }
}
