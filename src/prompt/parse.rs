//! The entry point: [`parse`] / [`parse_with_warnings`] turn prompt text into a [`Prompt`] — LoRA
//! tags taken out (with the whitespace around them tidied), the rest split into weighted fragments.
//! Syntax only; names are resolved against the LoRA folders by `resolve`. Size is bounded here, before
//! any tokenizer or model sees the text: at most [`MAX_PROMPT_BYTES`] bytes and [`MAX_CHUNKS`] chunks
//! from `BREAK`s (the chunker bounds the tokens).

use super::chunk::{too_long, MAX_CHUNKS, SHORTEN};
use super::editing::{self, Editing};
use super::emphasis::{attention, Fragment};
use super::error::{PromptError, PromptWarning};
use super::lora_tag::{parse_tag_args, LoraTag};
use super::suggest::did_you_mean;
use crate::family::Family;

/// A parsed prompt. Equality compares meaning (tag spans are not compared).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Prompt {
    /// What the tokenizer sees, in order.
    pub fragments: Vec<Fragment>,
    /// The LoRA tags, in the order written.
    pub loras: Vec<LoraTag>,
    /// Prompt editing, alternation and `AND` parts; `None` when the prompt has none. With them,
    /// `fragments` is the first part at step 1 only, and [`Editing::schedule`] gives each step's.
    pub editing: Option<Editing>,
}

impl Prompt {
    /// The fragments' text without weights, `BREAK` written out: for display and prompt history.
    pub fn plain_text(&self) -> String {
        let mut out = String::new();
        for f in &self.fragments {
            match f {
                Fragment::Text { text, .. } => out.push_str(text),
                Fragment::Break => out.push_str(" BREAK "),
            }
        }
        out.trim().to_string()
    }

    /// Errs at the first tag whose `lbw=` vector is laid out for another model family.
    pub fn check_family(&self, family: Family) -> Result<(), PromptError> {
        for tag in &self.loras {
            if let Some(lbw) = &tag.lbw {
                lbw.check_family(family).map_err(|m| {
                    PromptError::new(tag.span.clone(), m)
                        .with_hint("see the block layouts in the prompt docs")
                })?;
            }
        }
        Ok(())
    }
}

/// The longest prompt text accepted, in bytes: well past [`MAX_CHUNKS`] chunks of English (about
/// 10 KB), and it keeps parsing and tokenizing a pasted file quick.
pub const MAX_PROMPT_BYTES: usize = 32 * 1024;

/// Parses prompt text. Any error refuses the whole prompt.
pub fn parse(text: &str) -> Result<Prompt, PromptError> {
    parse_with_warnings(text).map(|(p, _)| p)
}

/// As [`parse`], plus warnings for what A1111 accepts but is probably a typo (unbalanced brackets).
pub fn parse_with_warnings(text: &str) -> Result<(Prompt, Vec<PromptWarning>), PromptError> {
    read(text, true)
}

/// Parses a negative prompt: as [`parse`], but `AND` is text, as A1111 reads the negative prompt
/// (prompt editing and alternation still apply; there is one conditioning per step).
pub fn parse_negative(text: &str) -> Result<Prompt, PromptError> {
    parse_negative_with_warnings(text).map(|(p, _)| p)
}

/// As [`parse_negative`], with warnings.
pub fn parse_negative_with_warnings(
    text: &str,
) -> Result<(Prompt, Vec<PromptWarning>), PromptError> {
    read(text, false)
}

fn read(text: &str, split_and: bool) -> Result<(Prompt, Vec<PromptWarning>), PromptError> {
    if text.len() > MAX_PROMPT_BYTES {
        let mut at = MAX_PROMPT_BYTES;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let message = format!(
            "prompt too long: {} bytes; the limit is {MAX_PROMPT_BYTES} bytes",
            text.len()
        );
        return Err(PromptError::new(at..text.len(), message).with_hint(SHORTEN));
    }
    let all: Vec<(usize, char)> = text.char_indices().collect();
    let mut kept: Vec<(usize, char)> = Vec::with_capacity(all.len());
    let mut loras = Vec::new();
    let mut i = 0;
    while i < all.len() {
        let c = all[i].1;
        if c == '\\' {
            // An escaped char never starts a tag: `\<lora:x>` is text.
            kept.extend_from_slice(&all[i..(i + 2).min(all.len())]);
            i += 2;
            continue;
        }
        if c == '<' {
            if let Some((tag, next)) = tag_at(text, &all, i)? {
                loras.push(tag);
                i = take_tag_group(text, &all, next, &mut kept, &mut loras)?;
                continue;
            }
        }
        kept.push(all[i]);
        i += 1;
    }
    let mut warnings = Vec::new();
    let editing = editing::read(text, &kept, split_and)?;
    let fragments = match &editing {
        None => attention(text, &kept, &mut warnings)?,
        Some(e) => e.first_fragments(text, &mut warnings)?,
    };
    check_breaks(&fragments, &kept)?;
    let prompt = Prompt {
        fragments,
        loras,
        editing,
    };
    Ok((prompt, warnings))
}

/// Errs when the `BREAK`s alone make more than [`MAX_CHUNKS`] chunks, pointing at the first `BREAK`
/// past the limit (found in `kept`, the text without tags, as emphasis reads it).
fn check_breaks(fragments: &[Fragment], kept: &[(usize, char)]) -> Result<(), PromptError> {
    let breaks = fragments
        .iter()
        .filter(|f| matches!(f, Fragment::Break))
        .count();
    if breaks < MAX_CHUNKS {
        return Ok(());
    }
    let word = |c: Option<&(usize, char)>| c.is_some_and(|c| c.1.is_alphanumeric() || c.1 == '_');
    let span = (0..kept.len())
        .filter(|&i| {
            kept[i..].iter().map(|c| c.1).take(5).eq("BREAK".chars())
                && (i == 0 || !word(kept.get(i - 1)))
                && !word(kept.get(i + 5))
        })
        .nth(MAX_CHUNKS - 1)
        .map_or(0..0, |i| kept[i].0..kept[i].0 + 5);
    let found = format!("{} chunks from {breaks} BREAKs", breaks + 1);
    Err(PromptError::new(span, too_long(&found)).with_hint(SHORTEN))
}

/// After a tag (ending before `all[next]`): takes any further tags separated only by whitespace, and
/// leaves one whitespace char where the group and its surrounding whitespace were, if there was any.
fn take_tag_group(
    text: &str,
    all: &[(usize, char)],
    mut next: usize,
    kept: &mut Vec<(usize, char)>,
    loras: &mut Vec<LoraTag>,
) -> Result<usize, PromptError> {
    let mut space = None;
    while kept.last().is_some_and(|c| c.1.is_whitespace()) {
        space = kept.pop();
    }
    loop {
        while next < all.len() && all[next].1.is_whitespace() {
            space = space.or(Some(all[next]));
            next += 1;
        }
        if next < all.len() && all[next].1 == '<' {
            if let Some((tag, after)) = tag_at(text, all, next)? {
                loras.push(tag);
                next = after;
                continue;
            }
        }
        break;
    }
    kept.extend(space);
    Ok(next)
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// If `all[i]` (a `<`) starts an extra-network tag `<word:...>`, parses it and returns the index
/// after its `>`. `<` followed by anything else is text (`<3`, `a < b`).
fn tag_at(
    text: &str,
    all: &[(usize, char)],
    i: usize,
) -> Result<Option<(LoraTag, usize)>, PromptError> {
    let start = all[i].0;
    let mut j = i + 1;
    while j < all.len() && is_word(all[j].1) {
        j += 1;
    }
    if j == i + 1 || j >= all.len() || all[j].1 != ':' {
        return Ok(None);
    }
    let kind = &text[all[i + 1].0..all[j].0];
    let args_start = all[j].0 + 1;
    let mut k = j + 1;
    while k < all.len() && !matches!(all[k].1, '>' | '<' | '\n') {
        k += 1;
    }
    if k >= all.len() || all[k].1 != '>' {
        let end = all.get(k).map_or(text.len(), |c| c.0);
        return Err(
            PromptError::new(start..end, format!("unterminated `<{kind}:` tag"))
                .with_hint("close the tag with `>`; write `\\<` for a literal `<`"),
        );
    }
    let end = all[k].0 + 1;
    if kind != "lora" && kind != "lyco" {
        let hint = did_you_mean(kind, ["lora"]).unwrap_or_else(|| {
            "only `<lora:...>` tags are supported; write `\\<` for a literal `<`".into()
        });
        return Err(
            PromptError::new(all[i + 1].0..all[j].0, format!("unknown tag type `{kind}`"))
                .with_hint(hint),
        );
    }
    let tag = parse_tag_args(&text[args_start..all[k].0], args_start, start..end)?;
    Ok(Some((tag, k + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::schedule::Strength;

    fn texts(p: &Prompt) -> Vec<(String, f64)> {
        p.fragments
            .iter()
            .map(|f| match f {
                Fragment::Text { text, weight } => (text.clone(), *weight),
                Fragment::Break => ("BREAK".into(), -1.0),
            })
            .collect()
    }

    #[test]
    fn tags_are_removed_and_whitespace_tidied() {
        let p = parse("a cat <lora:x:0.5> on a mat").unwrap();
        assert_eq!(texts(&p), vec![("a cat on a mat".to_string(), 1.0)]);
        assert_eq!(p.loras.len(), 1);
        assert_eq!(p.loras[0].span, 6..18);
        assert_eq!(p.loras[0].name_span, 12..13);
        assert_eq!(p.loras[0].te, Strength::Const(0.5));

        assert_eq!(
            texts(&parse("<lora:x> a").unwrap()),
            vec![("a".to_string(), 1.0)]
        );
        assert_eq!(
            texts(&parse("a <lora:x>").unwrap()),
            vec![("a".to_string(), 1.0)]
        );
        assert_eq!(
            texts(&parse("a<lora:x>b").unwrap()),
            vec![("ab".to_string(), 1.0)]
        );
        assert_eq!(
            texts(&parse("a, <lora:x>, b").unwrap()),
            vec![("a, , b".to_string(), 1.0)]
        );
        let p = parse("a <lora:x> \n <lora:y:2>  b").unwrap();
        assert_eq!(texts(&p), vec![("a b".to_string(), 1.0)]);
        assert_eq!(
            p.loras.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["x", "y"]
        );
        assert!(parse("<lora:x>").unwrap().fragments.is_empty());
    }

    #[test]
    fn tags_inside_emphasis_leave_the_emphasis_alone() {
        let p = parse("(red <lora:x:1> hat:1.3)").unwrap();
        assert_eq!(texts(&p), vec![("red hat".to_string(), 1.3)]);
    }

    #[test]
    fn not_tags() {
        let p = parse("I <3 you, a < b, \\<lora:x:1>").unwrap();
        assert!(p.loras.is_empty());
        assert_eq!(
            texts(&p),
            vec![("I <3 you, a < b, <lora:x:1>".to_string(), 1.0)]
        );
        // An escaped backslash does not escape the tag.
        let p = parse("a\\\\<lora:x>").unwrap();
        assert_eq!(p.loras.len(), 1);
        assert_eq!(texts(&p), vec![("a\\".to_string(), 1.0)]);
    }

    #[test]
    fn tag_errors() {
        let e = parse("a <lora:x:1 b").unwrap_err();
        assert_eq!(e.span, 2..13);
        assert!(e.message.contains("unterminated"));
        let e = parse("a <lora:x:1 <lora:y>").unwrap_err();
        assert_eq!(e.span, 2..12);
        let e = parse("<lroa:x:1>").unwrap_err();
        assert_eq!(e.span, 1..5);
        assert_eq!(e.hint.as_deref(), Some("did you mean `lora`?"));
        let e = parse("<hypernet:x:1>").unwrap_err();
        assert!(e.message.contains("unknown tag type"));
        // Spans are in the original text, after unicode.
        let text = "café ☕ <lora:x:tee=1>";
        let e = parse(text).unwrap_err();
        assert_eq!(&text[e.span.clone()], "tee");
    }

    #[test]
    fn family_check_points_at_the_tag() {
        let text = "a <lora:x:lbw=OUTALL> <lora:y:lbw=1,1,1,1,1,1,1,1,1,1,1,1>";
        let p = parse(text).unwrap();
        let e = p.check_family(Family::Sdxl).unwrap_err();
        assert_eq!(&text[e.span.clone()], "<lora:x:lbw=OUTALL>");
        let e = p.check_family(Family::Sd1).unwrap_err();
        assert!(text[e.span.clone()].starts_with("<lora:y"));
        assert!(e.message.contains("takes 17 or 26"), "{}", e.message);
    }

    #[test]
    fn readme_error_example_is_what_render_prints() {
        let readme = include_str!("README-section.md");
        let text = "a watercolor fox <lora:ink:tee=0.5>";
        let shown = parse(text).unwrap_err().render(text);
        assert!(
            readme.contains(&shown),
            "README shows something else than:\n{shown}"
        );
    }

    #[test]
    fn lyco_is_an_alias() {
        assert_eq!(
            parse("<lyco:x:0.3>").unwrap().loras[0].te,
            Strength::Const(0.3)
        );
    }

    #[test]
    fn warnings_are_reported_with_original_spans() {
        let (p, w) = parse_with_warnings("<lora:x> (a").unwrap();
        assert_eq!(texts(&p), vec![("a".to_string(), 1.1)]);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].span, 9..10);
    }

    #[test]
    fn a_break_flood_is_refused_at_the_first_break_past_the_limit() {
        let ok = "a BREAK ".repeat(MAX_CHUNKS - 1);
        assert!(parse(&ok).is_ok());

        let text = "BREAK ".repeat(5000);
        let started = std::time::Instant::now();
        let e = parse(&text).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(
            e.message,
            "prompt too long: 5001 chunks from 5000 BREAKs; \
             the limit is 32 chunks of 75 tokens (2400 tokens)"
        );
        // The 32nd BREAK (0-based 31) starts chunk 33.
        assert_eq!(e.span, 31 * 6..31 * 6 + 5);
        assert_eq!(
            e.hint.as_deref(),
            Some("shorten the prompt or use fewer BREAKs")
        );
    }

    #[test]
    fn text_past_the_byte_limit_is_refused_on_a_char_boundary() {
        assert!(parse(&"a".repeat(MAX_PROMPT_BYTES)).is_ok());
        let text = format!("{}é", "a".repeat(MAX_PROMPT_BYTES - 1));
        let e = parse(&text).unwrap_err();
        assert_eq!(e.span, MAX_PROMPT_BYTES - 1..text.len());
        assert!(e.message.contains("limit is 32768 bytes"), "{}", e.message);
    }
}
