//! Diagnostics for prompt text: [`PromptError`] (the prompt is refused) and [`PromptWarning`] (it runs,
//! but something looks unintended). Both carry a byte span into the original text and render as the
//! message, the offending line, a caret line under the span, and an optional hint.

use std::fmt::Write as _;
use std::ops::Range;

/// Why a prompt is refused. A prompt with an error is never run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PromptError {
    /// Byte range in the original prompt text, always on char boundaries.
    pub span: Range<usize>,
    pub message: String,
    pub hint: Option<String>,
}

/// Something the parser accepted (to stay compatible with A1111) but that is probably a mistake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptWarning {
    pub span: Range<usize>,
    pub message: String,
    pub hint: Option<String>,
}

impl PromptError {
    pub fn new(span: Range<usize>, message: impl Into<String>) -> Self {
        PromptError {
            span,
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub(crate) fn hint_opt(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }

    /// `error: message`, the line holding the span, carets under it, and `hint: ...`.
    pub fn render(&self, text: &str) -> String {
        render(
            "error",
            &self.message,
            &self.span,
            self.hint.as_deref(),
            text,
        )
    }
}

impl PromptWarning {
    pub fn render(&self, text: &str) -> String {
        render(
            "warning",
            &self.message,
            &self.span,
            self.hint.as_deref(),
            text,
        )
    }
}

fn floor_boundary(text: &str, mut i: usize) -> usize {
    i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The most characters of a line shown under a message.
const MAX_SHOWN: usize = 100;

/// Never panics, whatever the span: the renderer is also used on spans from edited text.
fn render(
    kind: &str,
    message: &str,
    span: &Range<usize>,
    hint: Option<&str>,
    text: &str,
) -> String {
    let start = floor_boundary(text, span.start);
    let end = floor_boundary(text, span.end.max(start));
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = &text[line_start..line_end];
    let line_no = text[..line_start].matches('\n').count() + 1;
    let col = text[line_start..start].chars().count() + 1;
    // A span running past the line is underlined to the line's end.
    let underline_end = end.min(line_end);
    let width = text[start..underline_end].chars().count().max(1);

    // A long line (a pasted text) is shown as a window around the span, `…` where it is cut.
    let chars: Vec<char> = line.chars().collect();
    let at = col - 1;
    let (from, to) = if chars.len() > MAX_SHOWN {
        let to = (at.saturating_sub(MAX_SHOWN / 2) + MAX_SHOWN).min(chars.len());
        (to - MAX_SHOWN, to)
    } else {
        (0, chars.len())
    };
    let shown: String = chars[from..to].iter().collect();
    let (open, close) = (
        if from > 0 { "…" } else { "" },
        if to < chars.len() { "…" } else { "" },
    );
    let width = width.min(to.saturating_sub(at)).max(1);

    let gutter = line_no.to_string();
    let pad = " ".repeat(gutter.len());
    let mut out = String::new();
    let _ = writeln!(out, "{kind}: {message}");
    let _ = writeln!(out, "{pad}--> line {line_no}, column {col}");
    let _ = writeln!(out, "{pad} |");
    let _ = writeln!(out, "{gutter} | {open}{shown}{close}");
    // Tabs are copied so that the carets line up under tab-indented text.
    let lead: String = (if from > 0 { " " } else { "" })
        .chars()
        .chain(
            chars[from..at]
                .iter()
                .map(|&c| if c == '\t' { '\t' } else { ' ' }),
        )
        .collect();
    let _ = writeln!(out, "{pad} | {lead}{}", "^".repeat(width));
    if let Some(h) = hint {
        let _ = writeln!(out, "{pad} = hint: {h}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_points_at_span_on_its_line() {
        let text = "first line\na <lora:x:tee=1> b";
        // "tee" starts after "a <lora:x:" (11 bytes) on line 2.
        let start = text.find("tee").unwrap();
        let e =
            PromptError::new(start..start + 3, "unknown key `tee`").with_hint("did you mean `te`?");
        let r = e.render(text);
        let lines: Vec<&str> = r.lines().collect();
        assert_eq!(lines[0], "error: unknown key `tee`");
        assert_eq!(lines[1], " --> line 2, column 11");
        assert_eq!(lines[3], "2 | a <lora:x:tee=1> b");
        assert_eq!(lines[4], "  |           ^^^");
        assert_eq!(lines[5], "  = hint: did you mean `te`?");
    }

    #[test]
    fn render_counts_columns_in_chars_and_survives_bad_spans() {
        let text = "épée <lora:x>";
        let at = text.find('<').unwrap();
        let r = PromptError::new(at..text.len(), "m").render(text);
        assert!(r.contains("column 6"), "{r}");
        assert!(r.contains("|      ^^^^^^^^\n"), "{r}");
        // Span inside a multi-byte char, and past the end: clamped, no panic.
        let _ = PromptError::new(1..2, "m").render(text);
        let _ = PromptError::new(100..200, "m").render(text);
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = 5..1;
        let _ = PromptError::new(backwards, "m").render(text);
    }

    #[test]
    fn a_long_line_is_shown_as_a_window_around_the_span() {
        let text = format!("{}<lora:x:tee=1>{}", "a".repeat(500), "b".repeat(500));
        let start = text.find("tee").unwrap();
        let r = PromptError::new(start..start + 3, "unknown key `tee`").render(&text);
        let lines: Vec<&str> = r.lines().collect();
        assert_eq!(lines[1], " --> line 1, column 509");
        let shown = lines[3].strip_prefix("1 | ").unwrap();
        assert!(shown.starts_with('…') && shown.ends_with('…'), "{shown}");
        assert_eq!(shown.chars().count(), MAX_SHOWN + 2);
        let carets = lines[4].strip_prefix("  | ").unwrap();
        let under = carets.find('^').unwrap();
        assert_eq!(
            &shown[shown.char_indices().nth(under).unwrap().0..][..3],
            "tee"
        );
        assert_eq!(carets.trim(), "^^^");
    }
}
