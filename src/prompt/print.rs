//! Back to text: [`print`] writes a [`Prompt`] that parses back to an equal one, [`print_tag`] writes
//! one tag in its shortest form; [`rewrite_tag`], [`append_tag`] and [`remove_tag`] edit the user's
//! text in place, leaving every other byte as it was (the TUI uses them when a strength or schedule
//! is edited, or an adapter added or dropped from the browser).

use std::fmt::Write as _;

use super::editing::{ends_like_weight, print_nodes, Editing};
use super::emphasis::Fragment;
use super::error::PromptError;
use super::lora_tag::LoraTag;
use super::parse::Prompt;
use super::schedule::Strength;

/// The prompt's text with weights as `(text:W)`, `BREAK`s, then its tags.
pub fn print(p: &Prompt) -> String {
    let mut out = String::new();
    if let Some(e) = &p.editing {
        print_editing(e, &mut out);
    }
    let fragments = if p.editing.is_some() {
        &[][..]
    } else {
        &p.fragments[..]
    };
    for f in fragments {
        match f {
            Fragment::Break => out.push_str(" BREAK "),
            Fragment::Text { text, weight } if *weight == 1.0 => escape_into(&mut out, text),
            Fragment::Text { text, weight } => {
                out.push('(');
                escape_into(&mut out, text);
                // f64 Display is the shortest text that reads back to the same value, never in
                // exponent form, which A1111's `[.\d]+` would not take.
                let _ = write!(out, ":{weight})");
            }
        }
    }
    let mut out = out.trim().to_string();
    for tag in &p.loras {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&print_tag(tag));
    }
    out
}

/// The parts as written, ` AND ` between them; a part's weight when it is not 1 or its text
/// would read as one. No space after `AND`: the part's own leading whitespace is kept.
fn print_editing(e: &Editing, out: &mut String) {
    for (k, part) in e.parts.iter().enumerate() {
        if k > 0 {
            out.push_str(" AND");
        }
        let mut text = String::new();
        print_nodes(&part.nodes, &mut text);
        out.push_str(&text);
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        let many = e.parts.len() > 1;
        if many && (part.weight != 1.0 || ends_like_weight(&chars)) {
            let _ = write!(out, " :{}", part.weight);
        }
    }
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Escapes what the parser would read as syntax. A `BREAK` standing as a word is written `B\REAK`,
/// an `AND` `A\ND`: a backslash that escapes nothing is dropped (as in A1111) and keeps the word
/// from breaking or splitting the prompt. A word at the text's edge counts as standing (the
/// neighbouring fragment may print as `(...)`).
fn escape_into(out: &mut String, text: &str) {
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        match c {
            '(' | ')' | '[' | ']' | '\\' | '<' => {
                out.push('\\');
                out.push(c);
            }
            'R' if i >= 1
                && chars[i - 1..].starts_with(&['B', 'R', 'E', 'A', 'K'])
                && (i == 1 || !is_word(chars[i - 2]))
                && chars.get(i + 4).is_none_or(|c| !is_word(*c)) =>
            {
                out.push_str("\\R");
            }
            'N' if i >= 1
                && chars[i - 1..].starts_with(&['A', 'N', 'D'])
                && (i == 1 || !is_word(chars[i - 2]))
                && chars.get(i + 2).is_none_or(|c| !is_word(*c)) =>
            {
                out.push_str("\\N");
            }
            _ => out.push(c),
        }
    }
}

/// `<lora:NAME[:TE][:unet=..][:in=..][:mid=..][:out=..][:dyn=N][:lbw=..]>`, leaving out what the
/// defaults give (te 1, a component equal to the one it inherits from).
pub fn print_tag(t: &LoraTag) -> String {
    let mut out = format!("<lora:{}", t.name);
    if t.te != Strength::Const(1.0) {
        let _ = write!(out, ":{}", t.te);
    }
    if t.unet != t.te {
        let _ = write!(out, ":unet={}", t.unet);
    }
    for (key, s) in [("in", &t.in_), ("mid", &t.mid), ("out", &t.out)] {
        if *s != t.unet {
            let _ = write!(out, ":{key}={s}");
        }
    }
    if let Some(d) = t.dyn_ {
        let _ = write!(out, ":dyn={d}");
    }
    if let Some(l) = &t.lbw {
        let _ = write!(out, ":lbw={l}");
    }
    out.push('>');
    out
}

/// `text` with the tag at `tag.span` replaced by [`print_tag`]`(tag)`; every byte outside the span
/// is kept. Errs when the span is not a `<...>` tag of `text` (e.g. the text changed meanwhile).
pub fn rewrite_tag(text: &str, tag: &LoraTag) -> Result<String, PromptError> {
    let span = tag.span.clone();
    let valid = span.start < span.end
        && span.end <= text.len()
        && text.is_char_boundary(span.start)
        && text.is_char_boundary(span.end)
        && text[span.clone()].starts_with('<')
        && text[span.clone()].ends_with('>');
    if !valid {
        let clamped =
            span.start.min(text.len())..span.end.min(text.len()).max(span.start.min(text.len()));
        return Err(
            PromptError::new(clamped, "this is not where the tag is any more")
                .with_hint("parse the prompt again and edit the tag from that"),
        );
    }
    let mut out = String::with_capacity(text.len() + 16);
    out.push_str(&text[..span.start]);
    out.push_str(&print_tag(tag));
    out.push_str(&text[span.end..]);
    Ok(out)
}

/// `text` with `tag` added at the end (after one space), every existing byte kept.
pub fn append_tag(text: &str, tag: &LoraTag) -> String {
    let mut out = text.to_string();
    if !out.is_empty() && !out.ends_with(char::is_whitespace) {
        out.push(' ');
    }
    out.push_str(&print_tag(tag));
    out
}

/// `text` without the tag at `tag.span`, and without the whitespace right after it when whitespace
/// also precedes it (so `a <lora:x> b` becomes `a b`); every other byte is kept.
pub fn remove_tag(text: &str, tag: &LoraTag) -> Result<String, PromptError> {
    // Reuse the span check of `rewrite_tag`.
    rewrite_tag(text, tag)?;
    let (a, mut b) = (tag.span.start, tag.span.end);
    let before_ws = text[..a]
        .chars()
        .next_back()
        .is_none_or(char::is_whitespace);
    if before_ws {
        b += text[b..].len() - text[b..].trim_start().len();
    }
    Ok(format!("{}{}", &text[..a], &text[b..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::lora_tag::Component;
    use crate::prompt::parse::parse;
    use crate::prompt::schedule::Position;

    #[test]
    fn prints_weights_escapes_breaks_and_tags() {
        let p = parse("a (red:1.3) [hat] BREAK \\(x\\) <lora:y:0.5:out=0>").unwrap();
        assert_eq!(
            print(&p),
            "a (red:1.3) (hat:0.9090909090909091) BREAK \\(x\\) <lora:y:0.5:out=0>"
        );
        assert_eq!(parse(&print(&p)).unwrap(), p);
    }

    #[test]
    fn literal_break_word_survives() {
        // "BRE\AK": the lone backslash is dropped, leaving the word BREAK as text.
        let p = parse("BRE\\AK").unwrap();
        assert_eq!(
            p.fragments,
            vec![Fragment::Text {
                text: "BREAK".into(),
                weight: 1.0
            }]
        );
        assert_eq!(print(&p), "B\\REAK");
        assert_eq!(parse(&print(&p)).unwrap(), p);
    }

    /// Found by the `prompt` fuzz target: `A\ND` is the text "AND" (the backslash is dropped), which
    /// printed bare would split the prompt into `AND` parts.
    #[test]
    fn literal_and_word_survives() {
        let p = parse("cat A\\ND a dog").unwrap();
        assert!(p.editing.is_none());
        assert_eq!(print(&p), "cat A\\ND a dog");
        assert_eq!(parse(&print(&p)).unwrap(), p);
        let p = parse("[x] A\\ND (y:1.2)").unwrap();
        assert_eq!(parse(&print(&p)).unwrap(), p, "{}", print(&p));
        // The fuzzer's input, whole.
        let found = b"u<<<<<<<<<<<<<<<<<<<<<<a [\xff\xff\xff<<<<<<\x1b\xff\xff\xff(nclo\xffo\xff\xff\xff(\x8b(ouap0-:t=0n\xff\xff\xff\xff\xffcat o\0\0\0A\\ND a d\xff";
        let text = String::from_utf8_lossy(found);
        let p = parse(&text).unwrap();
        assert_eq!(parse(&print(&p)).unwrap(), p);
        // Words that only contain AND stay as they are.
        assert_eq!(print(&parse("ANDY BRAND").unwrap()), "ANDY BRAND");
    }

    #[test]
    fn tags_print_in_shortest_form() {
        let p = parse("<lora:a><lora:b:te=0.5:unet=1.5><lora:c:1.0:in=0:mid=1:out=0><lora:d:te=0.1@1,0.6@6:dyn=4:lbw=OUTALL>")
            .unwrap();
        let printed: Vec<String> = p.loras.iter().map(print_tag).collect();
        assert_eq!(
            printed,
            [
                "<lora:a>",
                "<lora:b:0.5:unet=1.5>",
                "<lora:c:in=0:out=0>",
                "<lora:d:0.1@1,0.6@6:dyn=4:lbw=OUTALL>"
            ]
        );
    }

    #[test]
    fn rewrite_changes_only_the_tag() {
        let text = "  (a  cat:1.2)\n<lora:x:0.5>  ,, <lora:y:te=1:out=0.3> tail \\[";
        let p = parse(text).unwrap();
        let mut y = p.loras[1].clone();
        y.set(
            Component::Unet,
            Strength::Schedule(vec![
                (0.0, Position::Fraction(0.0)),
                (1.0, Position::Fraction(1.0)),
            ]),
        );
        let new = rewrite_tag(text, &y).unwrap();
        let (a, b) = (y.span.start, y.span.end);
        assert_eq!(&new[..a], &text[..a]);
        assert_eq!(&new[new.len() - (text.len() - b)..], &text[b..]);
        assert_eq!(
            &new[a..new.len() - (text.len() - b)],
            "<lora:y:unet=0@0,1@1:out=0.3>"
        );
        let again = parse(&new).unwrap();
        assert_eq!(again.loras[1], y);
        assert_eq!(again.fragments, p.fragments);
    }

    #[test]
    fn append_and_remove() {
        let t = LoraTag::new("ink");
        assert_eq!(append_tag("a fox", &t), "a fox <lora:ink>");
        assert_eq!(append_tag("a fox\n", &t), "a fox\n<lora:ink>");
        assert_eq!(append_tag("", &t), "<lora:ink>");
        let text = "a <lora:x:0.5>  b<lora:y>c";
        let p = parse(text).unwrap();
        assert_eq!(remove_tag(text, &p.loras[0]).unwrap(), "a b<lora:y>c");
        assert_eq!(remove_tag(text, &p.loras[1]).unwrap(), "a <lora:x:0.5>  bc");
    }

    #[test]
    fn rewrite_refuses_a_stale_span() {
        let p = parse("a <lora:x>").unwrap();
        assert!(rewrite_tag("a b", &p.loras[0]).is_err());
        assert!(rewrite_tag("", &p.loras[0]).is_err());
    }
}
