//! From prompt text to text-encoder input: [`Prompter::units`] tokenizes a fragment and replaces each
//! embedding with its vectors, which it appends to the prompt's [`Rows`] (one per text encoder); the
//! vectors' ids are the vocabulary size plus their row, as the rewritten graph reads them.

use super::{split_named, EmbeddingError, Library, NameIndex, Piece};
use crate::prompt::Unit;
use std::path::PathBuf;

/// The embedding vectors one prompt feeds one text encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    vocab: u32,
    width: usize,
    data: Vec<f32>,
    /// (name, short hash, first row, vectors) in order of first use.
    used: Vec<(String, String, u32, usize)>,
}

impl Rows {
    /// No rows yet, for an encoder whose table has `vocab` rows of `width`.
    pub fn new(vocab: usize, width: usize) -> Rows {
        Rows {
            vocab: vocab as u32,
            width: width.max(1),
            data: Vec::new(),
            used: Vec::new(),
        }
    }

    /// The `extra_token_rows` input: `(rows, values)`, at least one (zero) row so the input is
    /// never empty.
    pub fn feed(&self) -> (usize, Vec<f32>) {
        if self.data.is_empty() {
            return (1, vec![0.0; self.width]);
        }
        (self.data.len() / self.width, self.data.clone())
    }

    /// (name, A1111 short hash) of each embedding used, in order of first use.
    pub fn used(&self) -> impl Iterator<Item = (&str, &str)> {
        self.used
            .iter()
            .map(|(n, h, _, _)| (n.as_str(), h.as_str()))
    }

    /// The ids of `name`'s `rows` (`count` vectors), added now or the first time it was used.
    fn ids(&mut self, name: &str, hash: &str, rows: &[f32], count: usize) -> Vec<u32> {
        let first = match self.used.iter().find(|u| u.0 == name) {
            Some(u) => u.2,
            None => {
                let first = (self.data.len() / self.width) as u32;
                self.data.extend_from_slice(rows);
                self.used
                    .push((name.to_string(), hash.to_string(), first, count));
                first
            }
        };
        (0..count as u32).map(|k| self.vocab + first + k).collect()
    }
}

/// The embedding side of a model's text conditioning.
#[derive(Debug)]
pub struct Prompter {
    library: Library,
    /// The model's family, for messages.
    family: String,
    /// Per text encoder: its token table (vocabulary rows, width), when its graph takes extra rows.
    tables: Vec<Option<(usize, usize)>>,
    /// Per text encoder, built with its tokenizer for the library as of `indexed` (a stamp).
    indexes: Vec<NameIndex>,
    indexed: Vec<Option<u64>>,
}

impl Prompter {
    /// Embeddings from `dirs` for a `family` model whose encoders have these token `tables`.
    pub fn new(dirs: Vec<PathBuf>, family: &str, tables: Vec<Option<(usize, usize)>>) -> Prompter {
        Prompter {
            library: Library::new(dirs),
            family: family.to_string(),
            indexes: vec![NameIndex::default(); tables.len()],
            indexed: vec![None; tables.len()],
            tables,
        }
    }

    /// Lists the folders again (a job's start), so files added or changed since are seen.
    pub fn refresh(&mut self) {
        self.library.refresh();
    }

    /// Changes whenever the embedding files change.
    pub fn stamp(&self) -> u64 {
        self.library.stamp()
    }

    /// The folders searched.
    pub fn dirs(&self) -> &[PathBuf] {
        self.library.dirs()
    }

    /// Every embedding name, sorted.
    pub fn names(&self) -> Vec<String> {
        self.library.names().map(str::to_string).collect()
    }

    /// Whether text encoder `encoder`'s graph takes the extra rows input.
    pub fn takes_rows(&self, encoder: usize) -> bool {
        self.tables.get(encoder).copied().flatten().is_some()
    }

    /// Empty rows for text encoder `encoder`.
    pub fn rows(&self, encoder: usize) -> Rows {
        let (vocab, width) = self
            .tables
            .get(encoder)
            .copied()
            .flatten()
            .unwrap_or((u32::MAX as usize, 1));
        Rows::new(vocab, width)
    }

    /// `text` for text encoder `encoder` (whose tokenizer is `tokenize`): its tokens, with every
    /// embedding (by name as a word, or `embedding:name`) as one unit of vector ids in `rows`.
    pub fn units(
        &mut self,
        encoder: usize,
        tokenize: &dyn Fn(&str) -> Vec<u32>,
        text: &str,
        rows: &mut Rows,
    ) -> Result<Vec<Unit>, EmbeddingError> {
        let pieces = split_named(text);
        if self.library.is_empty() && pieces.len() == 1 {
            return Ok(tokenize(text).into_iter().map(Unit::Token).collect());
        }
        let stamp = Some(self.library.stamp());
        if let (Some(idx), Some(at)) =
            (self.indexes.get_mut(encoder), self.indexed.get_mut(encoder))
        {
            if *at != stamp {
                *idx = NameIndex::build(self.library.names(), tokenize);
                *at = stamp;
            }
        }
        let mut out = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Named(n) => {
                    let name = self
                        .library
                        .lookup(n)
                        .map(str::to_string)
                        .ok_or_else(|| self.library.not_found(n))?;
                    out.push(Unit::Vectors(self.vectors(encoder, &name, rows)?));
                }
                Piece::Text(t) => {
                    let tokens = tokenize(t);
                    let mut i = 0;
                    while i < tokens.len() {
                        let found = self
                            .indexes
                            .get(encoder)
                            .and_then(|idx| idx.find_at(&tokens, i))
                            .map(|(n, span)| (n.to_string(), span));
                        match found {
                            Some((name, span)) => {
                                out.push(Unit::Vectors(self.vectors(encoder, &name, rows)?));
                                i += span;
                            }
                            None => {
                                out.push(Unit::Token(tokens[i]));
                                i += 1;
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// The ids of embedding `name`'s vectors for `encoder`, checked against the model.
    fn vectors(
        &mut self,
        encoder: usize,
        name: &str,
        rows: &mut Rows,
    ) -> Result<Vec<u32>, EmbeddingError> {
        let e = self.library.get(name)?;
        let widths: Vec<usize> = self
            .tables
            .iter()
            .map(|t| t.map_or(0, |(_, w)| w))
            .collect();
        let per_encoder = e.rows_for(&widths, &self.family)?;
        if self.tables.get(encoder).copied().flatten().is_none() {
            return Err(EmbeddingError::NoLookup {
                name: name.to_string(),
            });
        }
        let mine = per_encoder.get(encoder).copied().unwrap_or_default();
        Ok(rows.ids(name, e.short_hash(), mine, e.count))
    }
}
