//! A1111 emphasis: `(a)` ×1.1, `[a]` ÷1.1, `(a:1.3)`, escapes, `BREAK`. [`Fragment`] is its output
//! (weighted text and chunk breaks, in order); `attention` computes it from the tag-free text with
//! the same weights as A1111's `parse_prompt_attention` (see `mod.rs` for the few deviations).

use super::error::{PromptError, PromptWarning};

/// A piece of the text that goes to the tokenizer.
#[derive(Debug, Clone, PartialEq)]
pub enum Fragment {
    /// Text and its attention weight. Neighbouring texts never share a weight (they are merged).
    /// f64 like A1111's Python floats, so products of nested brackets round the same way.
    Text { text: String, weight: f64 },
    /// `BREAK`: the next text starts a new 75-token chunk.
    Break,
}

const ROUND: f64 = 1.1;
const SQUARE: f64 = 1.0 / 1.1;

enum Entry {
    Text(String, f64),
    Break,
}

fn multiply(res: &mut [Entry], from: usize, m: f64) {
    for e in res.iter_mut().skip(from) {
        if let Entry::Text(_, w) = e {
            *w *= m;
        }
    }
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Pushes a text run, split at every `BREAK` that stands as a word in it; the whitespace around
/// a `BREAK` goes with it (A1111's `\s*\bBREAK\b\s*`).
fn push_run(res: &mut Vec<Entry>, run: &[char]) {
    let mut text = String::new();
    let mut i = 0;
    while i < run.len() {
        let at_word = run[i..].starts_with(&['B', 'R', 'E', 'A', 'K'])
            && (i == 0 || !is_word(run[i - 1]))
            && run.get(i + 5).is_none_or(|c| !is_word(*c));
        if at_word {
            let kept = text.trim_end().len();
            text.truncate(kept);
            res.push(Entry::Text(std::mem::take(&mut text), 1.0));
            res.push(Entry::Break);
            i += 5;
            while run.get(i).is_some_and(|c| c.is_whitespace()) {
                i += 1;
            }
            continue;
        }
        text.push(run[i]);
        i += 1;
    }
    res.push(Entry::Text(text, 1.0));
}

/// Weighted fragments of `chars` (each with its byte offset in `src`, the original prompt).
pub(crate) fn attention(
    src: &str,
    chars: &[(usize, char)],
    warnings: &mut Vec<PromptWarning>,
) -> Result<Vec<Fragment>, PromptError> {
    let span_of = |k: usize| {
        let (o, c) = chars[k];
        o..o + c.len_utf8()
    };
    let span_between = |a: usize, b: usize| {
        let end = chars.get(b).map_or(src.len(), |(o, _)| *o);
        chars[a].0..end
    };
    let mut res: Vec<Entry> = Vec::new();
    let mut round: Vec<(usize, usize)> = Vec::new();
    let mut square: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i].1;
        match c {
            '\\' => match chars.get(i + 1).map(|x| x.1) {
                Some(n @ ('(' | ')' | '[' | ']' | '\\')) => {
                    res.push(Entry::Text(n.to_string(), 1.0));
                    i += 2;
                }
                // A1111 drops a backslash that escapes nothing; the next char reads as usual.
                _ => i += 1,
            },
            '(' => {
                round.push((res.len(), i));
                i += 1;
            }
            '[' => {
                square.push((res.len(), i));
                i += 1;
            }
            ':' => {
                let mut k = i + 1;
                if matches!(chars.get(k).map(|x| x.1), Some('+' | '-')) {
                    k += 1;
                }
                let digits_from = k;
                while chars
                    .get(k)
                    .is_some_and(|x| x.1.is_ascii_digit() || x.1 == '.')
                {
                    k += 1;
                }
                let closes = k > digits_from && chars.get(k).is_some_and(|x| x.1 == ')');
                if !closes {
                    res.push(Entry::Text(":".into(), 1.0));
                    i += 1;
                    continue;
                }
                let literal: String = chars[i + 1..k].iter().map(|x| x.1).collect();
                match round.pop() {
                    Some((from, _)) => {
                        let w: f64 = literal
                            .parse()
                            .ok()
                            .filter(|w: &f64| w.is_finite())
                            .ok_or_else(|| {
                                PromptError::new(
                                    span_between(i + 1, k),
                                    format!("`{literal}` is not a weight"),
                                )
                                .with_hint("write `(text:1.2)`")
                            })?;
                        multiply(&mut res, from, w);
                    }
                    // A1111 keeps `:1.2)` as text when no `(` is open.
                    None => {
                        warnings.push(PromptWarning {
                            span: span_of(k),
                            message: "`)` closes no `(`; it is kept as text".into(),
                            hint: Some("write `\\)` for a literal bracket".into()),
                        });
                        res.push(Entry::Text(format!(":{literal})"), 1.0));
                    }
                }
                i = k + 1;
            }
            ')' | ']' => {
                let (stack, m) = if c == ')' {
                    (&mut round, ROUND)
                } else {
                    (&mut square, SQUARE)
                };
                match stack.pop() {
                    Some((from, _)) => multiply(&mut res, from, m),
                    None => {
                        warnings.push(PromptWarning {
                            span: span_of(i),
                            message: format!("`{c}` closes nothing; it is kept as text"),
                            hint: Some(format!("write `\\{c}` for a literal bracket")),
                        });
                        res.push(Entry::Text(c.to_string(), 1.0));
                    }
                }
                i += 1;
            }
            _ => {
                let start = i;
                while i < chars.len() && !matches!(chars[i].1, '\\' | '(' | ')' | '[' | ']' | ':') {
                    i += 1;
                }
                let run: Vec<char> = chars[start..i].iter().map(|x| x.1).collect();
                push_run(&mut res, &run);
            }
        }
    }
    // Unclosed brackets apply to the rest of the prompt, rounds first, in the order opened.
    for (stack, m, open) in [(&round, ROUND, '('), (&square, SQUARE, '[')] {
        for &(from, at) in stack {
            multiply(&mut res, from, m);
            let close = if open == '(' { ')' } else { ']' };
            warnings.push(PromptWarning {
                span: span_of(at),
                message: format!("`{open}` is never closed; it weighs the rest of the prompt"),
                hint: Some(format!(
                    "close it with `{close}`, or write `\\{open}` for a literal bracket"
                )),
            });
        }
    }
    if let Some(bad) = res.iter().find_map(|e| match e {
        Entry::Text(_, w) if !w.is_finite() => Some(*w),
        _ => None,
    }) {
        return Err(
            PromptError::new(0..src.len(), format!("emphasis weights multiply to {bad}"))
                .with_hint("use smaller weights"),
        );
    }
    Ok(tidy(res))
}

/// Drops empty texts, merges neighbours of equal weight (as A1111 does) and trims whitespace where
/// the tokenizer ignores it anyway: at the two ends of the prompt and next to a `BREAK` (A1111's
/// `BREAK` already swallows the whitespace beside it within a run). This makes printing read back
/// exactly.
fn tidy(res: Vec<Entry>) -> Vec<Fragment> {
    let mut out: Vec<Fragment> = Vec::new();
    for e in res {
        match e {
            Entry::Break => out.push(Fragment::Break),
            Entry::Text(t, _) if t.is_empty() => {}
            Entry::Text(t, w) => match out.last_mut() {
                Some(Fragment::Text { text, weight }) if *weight == w => text.push_str(&t),
                _ => out.push(Fragment::Text { text: t, weight: w }),
            },
        }
    }
    loop {
        let n = out.len();
        let mut changed = false;
        for k in 0..n {
            let open_before = k == 0 || matches!(out[k - 1], Fragment::Break);
            let open_after = k + 1 == n || matches!(out[k + 1], Fragment::Break);
            if let Fragment::Text { text, .. } = &mut out[k] {
                let trimmed = match (open_before, open_after) {
                    (true, true) => text.trim(),
                    (true, false) => text.trim_start(),
                    (false, true) => text.trim_end(),
                    (false, false) => text.as_str(),
                };
                if trimmed.len() != text.len() {
                    *text = trimmed.to_string();
                    changed = true;
                }
            }
        }
        out.retain(|f| !matches!(f, Fragment::Text { text, .. } if text.is_empty()));
        if !changed {
            return out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(s: &str) -> Vec<(String, f64)> {
        let chars: Vec<(usize, char)> = s.char_indices().collect();
        let mut w = Vec::new();
        attention(s, &chars, &mut w)
            .unwrap()
            .into_iter()
            .map(|f| match f {
                Fragment::Text { text, weight } => (text, weight),
                Fragment::Break => ("BREAK".into(), -1.0),
            })
            .collect()
    }

    fn close(got: Vec<(String, f64)>, want: &[(&str, f64)]) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for ((gt, gw), (wt, ww)) in got.iter().zip(want) {
            assert_eq!(gt, wt, "{got:?}");
            assert!((gw - ww).abs() < 1e-12, "{gt}: {gw} vs {ww}");
        }
    }

    #[test]
    fn a1111_docstring_examples() {
        close(att("normal text"), &[("normal text", 1.0)]);
        close(
            att("an (important) word"),
            &[("an ", 1.0), ("important", 1.1), (" word", 1.0)],
        );
        close(att("(unbalanced"), &[("unbalanced", 1.1)]);
        close(att("\\(literal\\]"), &[("(literal]", 1.0)]);
        close(att("(unnecessary)(parens)"), &[("unnecessaryparens", 1.1)]);
        // house: 1.3 * 1.1 * 1.1; sky: 1.1^4; the `.` is inside the still-open outer `(`.
        close(
            att("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."),
            &[
                ("a ", 1.0),
                ("house", 1.3 * 1.1 * 1.1),
                (" ", 1.1),
                ("on", 1.1 / 1.1),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.1 * 1.1 * 1.1 * 1.1),
                (".", 1.1),
            ],
        );
    }

    #[test]
    fn nesting_multiplies_and_squares_divide() {
        close(att("[[a]]"), &[("a", 1.0 / 1.1 / 1.1)]);
        close(att("((a:2))"), &[("a", 2.2)]);
        close(att("(a:-0.5) b"), &[("a", -0.5), (" b", 1.0)]);
    }

    #[test]
    fn stray_closers_and_colons_are_text() {
        close(att("a) b] c:d e:1.5)"), &[("a) b] c:d e:1.5)", 1.0)]);
        // No space allowed between `:` and the number: then it is text inside a 1.1 group.
        close(att("(a: 1.2)"), &[("a: 1.2", 1.1)]);
    }

    #[test]
    fn escapes() {
        close(att("\\\\ \\q"), &[("\\ q", 1.0)]);
        close(att("(a\\))"), &[("a)", 1.1)]);
    }

    #[test]
    fn break_splits_and_eats_whitespace() {
        close(att("a BREAK b"), &[("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]);
        close(att("aBREAK BREAKb"), &[("aBREAK BREAKb", 1.0)]);
        close(att("BREAK a"), &[("BREAK", -1.0), ("a", 1.0)]);
        // Inside brackets it still breaks (A1111 would turn it into the word "BREAK" weighted -1.1).
        close(
            att("(a BREAK b)"),
            &[("a", 1.1), ("BREAK", -1.0), ("b", 1.1)],
        );
        close(att("a:BREAK"), &[("a:", 1.0), ("BREAK", -1.0)]);
    }

    #[test]
    fn bad_weight_is_an_error_and_unbalanced_warns() {
        let s = "(a:1.2.3)";
        let chars: Vec<(usize, char)> = s.char_indices().collect();
        let e = attention(s, &chars, &mut Vec::new()).unwrap_err();
        assert_eq!(e.span, 3..8);
        let s = "(a [b";
        let chars: Vec<(usize, char)> = s.char_indices().collect();
        let mut w = Vec::new();
        attention(s, &chars, &mut w).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].span, 0..1);
        assert_eq!(w[1].span, 3..4);
    }

    #[test]
    fn ends_are_trimmed_and_empty_is_empty() {
        close(att("  a  "), &[("a", 1.0)]);
        close(att(""), &[]);
        close(att("( ) a"), &[("a", 1.0)]);
        // Whitespace that only an escape kept away from a BREAK goes too.
        close(
            att("(a )BREAK\\ b"),
            &[("a", 1.1), ("BREAK", -1.0), ("b", 1.0)],
        );
    }
}
