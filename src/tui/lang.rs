//! The TUI's view of the prompt language: `crate::prompt` parses (tags, errors, warnings) and prints
//! tags; this file adds what an editor needs on top: highlight tokens that exist even while the
//! prompt has an error, the `<lora:` completion context, and small helpers for curves.

use crate::prompt::{self, Position};
use std::ops::Range;

pub use crate::prompt::{Component, LoraTag, Strength};

/// The components in display order.
pub const COMPONENTS: [Component; 5] = [
    Component::Te,
    Component::Unet,
    Component::In,
    Component::Mid,
    Component::Out,
];

/// The key the tag syntax uses for a component.
pub fn component_key(c: Component) -> &'static str {
    match c {
        Component::Te => "te",
        Component::Unet => "unet",
        Component::In => "in",
        Component::Mid => "mid",
        Component::Out => "out",
    }
}

/// Whether the tag gives `c` a value of its own, rather than inheriting it from `unet`.
pub fn explicit(tag: &LoraTag, c: Component) -> bool {
    matches!(c, Component::Te | Component::Unet) || tag.get(c) != &tag.unet
}

/// The curve's points; a constant reads as a flat line over the whole run.
pub fn points(s: &Strength) -> Vec<(f32, Position)> {
    match s {
        Strength::Const(v) => vec![(*v, Position::Fraction(0.0)), (*v, Position::Fraction(1.0))],
        Strength::Schedule(p) => p.clone(),
    }
}

/// Where a position sits as a fraction of the run (0 = first step, 1 = last).
pub fn fraction(p: Position, steps: u32) -> f32 {
    match p {
        Position::Fraction(f) => f,
        Position::Step(s) => (s.saturating_sub(1)) as f32 / steps.saturating_sub(1).max(1) as f32,
    }
}

/// Numbers as people write them: `1`, `0.75`, `-0.5`.
pub fn fmt_num(v: f32) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

pub fn fmt_strength(s: &Strength) -> String {
    s.to_string()
}

/// The tag as the prompt printer writes it.
pub fn print(tag: &LoraTag) -> String {
    prompt::print_tag(tag)
}

/// What each byte range of the prompt is, for highlighting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    LoraTag,
    LoraName,
    LoraValue,
    Emphasis,
    Weight,
    Break,
    Escape,
}

/// A diagnostic with the byte span it is about.
#[derive(Debug, Clone, PartialEq)]
pub struct LangError {
    pub span: Range<usize>,
    pub message: String,
    pub hint: Option<String>,
}

/// Everything the editor needs from one parse.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Analysis {
    pub tokens: Vec<(Range<usize>, Token)>,
    /// Empty while the prompt has an error: the parser refuses the whole prompt.
    pub tags: Vec<LoraTag>,
    pub error: Option<LangError>,
    pub warning: Option<LangError>,
}

impl Analysis {
    /// The tag whose span contains (or touches) byte `at`.
    pub fn tag_at(&self, at: usize) -> Option<usize> {
        self.tags
            .iter()
            .position(|t| t.span.start <= at && at <= t.span.end)
    }
}

/// Highlight tokens from a lenient scan, tags and diagnostics from the real parser.
pub fn analyze(text: &str) -> Analysis {
    let mut a = Analysis {
        tokens: lex(text),
        ..Analysis::default()
    };
    match prompt::parse_with_warnings(text) {
        Ok((p, warnings)) => {
            a.tags = p.loras;
            a.warning = warnings.into_iter().next().map(|w| LangError {
                span: w.span,
                message: w.message,
                hint: w.hint,
            });
        }
        Err(e) => {
            a.error = Some(LangError {
                span: e.span,
                message: e.message,
                hint: e.hint,
            })
        }
    }
    a
}

/// Tokens for highlighting. Never fails: it only has to look right, the parser judges.
fn lex(text: &str) -> Vec<(Range<usize>, Token)> {
    let mut toks = Vec::new();
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => {
                let next = text[i + 1..].chars().next().map_or(0, char::len_utf8);
                toks.push((i..i + 1 + next, Token::Escape));
                i += 1 + next;
            }
            b'<' if text[i..].starts_with("<lora:") || text[i..].starts_with("<lyco:") => {
                let rest = &text[i..];
                let end = rest.find(['>', '\n']).map_or(text.len(), |e| {
                    i + e + usize::from(rest.as_bytes()[e] == b'>')
                });
                toks.push((i..end, Token::LoraTag));
                let inner_end = if text[..end].ends_with('>') {
                    end - 1
                } else {
                    end
                };
                let mut off = i + 6;
                for (n, field) in text[i + 6..inner_end].split(':').enumerate() {
                    let kind = if n == 0 {
                        Token::LoraName
                    } else {
                        Token::LoraValue
                    };
                    toks.push((off..off + field.len(), kind));
                    off += field.len() + 1;
                }
                i = end;
            }
            b'(' | b'[' => {
                depth += 1;
                toks.push((i..i + 1, Token::Emphasis));
                i += 1;
            }
            b')' | b']' => {
                depth = depth.saturating_sub(1);
                toks.push((i..i + 1, Token::Emphasis));
                i += 1;
            }
            b':' if depth > 0 => {
                let n = text[i + 1..]
                    .bytes()
                    .take_while(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b' '))
                    .count();
                if n > 0 && text[i + 1 + n..].starts_with([')', ']']) {
                    toks.push((i..i + 1 + n, Token::Weight));
                }
                i += 1 + n;
            }
            b'B' if text[i..].starts_with("BREAK")
                && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric())
                && !bytes.get(i + 5).is_some_and(u8::is_ascii_alphanumeric) =>
            {
                toks.push((i..i + 5, Token::Break));
                i += 5;
            }
            _ => i += text[i..].chars().next().map_or(1, char::len_utf8),
        }
    }
    toks
}

/// If the cursor is inside `<lora:NAME` (still typing the name), the range of the name so far.
pub fn completion_at(text: &str, cursor: usize) -> Option<Range<usize>> {
    let before = text.get(..cursor)?;
    let open = before.rfind("<lora:")?;
    let start = open + 6;
    if before[start..].contains([':', '>', '<', '\n']) {
        return None;
    }
    Some(start..cursor)
}

/// If the cursor ends a word that may be an embedding's name, its range and whether it follows
/// `embedding:` (ComfyUI's form). A plain word needs two characters; nothing inside a `<...>` tag.
pub fn embedding_completion_at(text: &str, cursor: usize) -> Option<(Range<usize>, bool)> {
    let before = text.get(..cursor)?;
    let is_name = |c: char| c.is_alphanumeric() || matches!(c, '_' | '-' | '.');
    if text[cursor..].starts_with(is_name) {
        return None;
    }
    if let Some(open) = before.rfind('<') {
        if before.rfind('>').is_none_or(|close| close < open) {
            return None;
        }
    }
    let start = before
        .char_indices()
        .rev()
        .take_while(|&(_, c)| is_name(c))
        .last()
        .map_or(cursor, |(i, _)| i);
    if before[..start].ends_with("embedding:") {
        return Some((start..cursor, true));
    }
    (before[start..].chars().count() >= 2).then_some((start..cursor, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_tags_and_errors() {
        let a = analyze("a fox <lora:ink:0.8> BREAK (red:1.2)");
        assert!(a.error.is_none(), "{:?}", a.error);
        assert_eq!(print(&a.tags[0]), "<lora:ink:0.8>");
        for t in [
            Token::Break,
            Token::Weight,
            Token::LoraName,
            Token::LoraValue,
        ] {
            assert!(a.tokens.iter().any(|x| x.1 == t), "{t:?}");
        }
        let text = "x <lora:ink:foo=1>";
        let a = analyze(text);
        let e = a.error.unwrap();
        assert!(text[e.span].contains("foo"));
        assert!(
            a.tokens.iter().any(|x| x.1 == Token::LoraName),
            "highlighting survives errors"
        );
    }

    #[test]
    fn completion_only_while_typing_a_name() {
        assert_eq!(completion_at("a <lora:in", 10), Some(8..10));
        assert_eq!(completion_at("a <lora:ink:1", 13), None);
    }

    #[test]
    fn embedding_completion_while_typing_a_word() {
        assert_eq!(
            embedding_completion_at("a fox, easy", 11),
            Some((7..11, false))
        );
        assert_eq!(
            embedding_completion_at("embedding:ea", 12),
            Some((10..12, true))
        );
        assert_eq!(
            embedding_completion_at("embedding:", 10),
            Some((10..10, true))
        );
        assert_eq!(embedding_completion_at("a e", 3), None, "one character");
        assert_eq!(
            embedding_completion_at("easy fox", 3),
            None,
            "inside a word"
        );
        assert_eq!(
            embedding_completion_at("a <lora:ink:1", 13),
            None,
            "inside a tag"
        );
        assert_eq!(
            embedding_completion_at("<lora:ink:1> ea", 15),
            Some((13..15, false))
        );
    }

    #[test]
    fn step_positions_map_to_fractions() {
        assert_eq!(fraction(Position::Step(1), 21), 0.0);
        assert_eq!(fraction(Position::Step(21), 21), 1.0);
        assert_eq!(fmt_num(1.050_000_1), "1.05");
    }
}
