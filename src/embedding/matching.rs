//! Where embeddings stand in a prompt: [`NameIndex`] finds embedding names in a token stream the way
//! A1111 does (the name's own tokens, longest match first, so case and spacing follow the
//! tokenizer), and [`split_named`] takes out ComfyUI's explicit `embedding:name` words first.

use std::collections::HashMap;

/// Embedding names by their first token.
#[derive(Debug, Default, Clone)]
pub struct NameIndex {
    by_first: HashMap<u32, Vec<(Vec<u32>, String)>>,
}

impl NameIndex {
    /// Indexes `names` as `tokenize` splits them (names that tokenize to nothing are left out).
    pub fn build<'a>(
        names: impl IntoIterator<Item = &'a str>,
        tokenize: impl Fn(&str) -> Vec<u32>,
    ) -> NameIndex {
        let mut by_first: HashMap<u32, Vec<(Vec<u32>, String)>> = HashMap::new();
        for name in names {
            let ids = tokenize(name);
            if let Some(&first) = ids.first() {
                by_first
                    .entry(first)
                    .or_default()
                    .push((ids, name.to_string()));
            }
        }
        for v in by_first.values_mut() {
            // Longest first; equal lengths in name order, so the result does not depend on hashing.
            v.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.1.cmp(&b.1)));
        }
        NameIndex { by_first }
    }

    /// The embedding whose name's tokens start `tokens` at `at`, and how many tokens it spans.
    pub fn find_at(&self, tokens: &[u32], at: usize) -> Option<(&str, usize)> {
        let first = tokens.get(at)?;
        self.by_first.get(first)?.iter().find_map(|(ids, name)| {
            tokens[at..]
                .starts_with(ids)
                .then_some((name.as_str(), ids.len()))
        })
    }
}

/// A part of a prompt fragment: text, or an embedding named with `embedding:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<'a> {
    Text(&'a str),
    Named(&'a str),
}

const PREFIX: &str = "embedding:";

/// Splits `text` at ComfyUI's `embedding:NAME` words (the prefix at the start of a word, any case;
/// the name runs to the next whitespace or comma). Text with none is one [`Piece::Text`].
pub fn split_named(text: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = 0;
    let mut i = 0;
    let lower = text.to_ascii_lowercase();
    while let Some(found) = lower[i..].find(PREFIX) {
        let at = i + found;
        let word_start = text[..at]
            .chars()
            .next_back()
            .is_none_or(|c| c.is_whitespace() || c == ',');
        let name_start = at + PREFIX.len();
        let name_end = text[name_start..]
            .find(|c: char| c.is_whitespace() || c == ',')
            .map_or(text.len(), |e| name_start + e);
        if word_start && name_end > name_start {
            if at > rest {
                out.push(Piece::Text(&text[rest..at]));
            }
            out.push(Piece::Named(&text[name_start..name_end]));
            rest = name_end;
            i = name_end;
        } else {
            i = name_start;
        }
    }
    if rest < text.len() || out.is_empty() {
        out.push(Piece::Text(&text[rest..]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One token per word: its length (so names can be told apart by word lengths).
    fn fake(text: &str) -> Vec<u32> {
        text.split_whitespace().map(|w| w.len() as u32).collect()
    }

    #[test]
    fn the_longest_name_wins_and_partial_matches_do_not() {
        let idx = NameIndex::build(["ab cd", "ab cd efg", "xyz"], fake);
        // "ab cd efg" = [2, 2, 3]; "ab cd" = [2, 2].
        assert_eq!(idx.find_at(&[9, 2, 2, 3], 1), Some(("ab cd efg", 3)));
        assert_eq!(idx.find_at(&[2, 2, 5], 0), Some(("ab cd", 2)));
        assert_eq!(idx.find_at(&[2, 5], 0), None);
        assert_eq!(idx.find_at(&[3], 0), Some(("xyz", 1)));
        assert_eq!(idx.find_at(&[3], 1), None);
    }

    #[test]
    fn named_embeddings_are_split_out_at_word_starts() {
        assert_eq!(
            split_named("a embedding:bad_hands, b"),
            vec![
                Piece::Text("a "),
                Piece::Named("bad_hands"),
                Piece::Text(", b")
            ]
        );
        assert_eq!(
            split_named("Embedding:x.safetensors"),
            vec![Piece::Named("x.safetensors")]
        );
        assert_eq!(
            split_named("myembedding:x embedding: y"),
            vec![Piece::Text("myembedding:x embedding: y")]
        );
        assert_eq!(split_named(""), vec![Piece::Text("")]);
    }
}
