//! [`ClipTokenizer`]: CLIP's byte-level BPE, loaded from a model's `tokenizer/` folder
//! (`vocab.json` + `merges.txt`), giving the ids of `transformers.CLIPTokenizer` (the fast one).
//! Public surface: `ClipTokenizer::{from_dir, from_files, from_strs, encode, encode_padded, bos_id, eos_id}`, `CONTEXT_LEN`.
//!
//! Normalisation follows HF, not OpenAI: NFC, runs of whitespace to one space, per-character
//! lowercase; no ftfy and no HTML unescaping (`&amp;` stays literal, as in diffusers).
//! A folder whose `tokenizer_config.json` names an ordinary token as its pad token (SDXL's
//! `tokenizer_2/` pads with "!") gets HF's behaviour for it: every "!" in a prompt is that special
//! token, id 0, split out before BPE (so "wow!!!" is `wow</w> 0 0 0`, not `wow</w> !!!</w>`).

use regex::Regex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use unicode_normalization::UnicodeNormalization;

/// Tokens per text-encoder call: BOS + 75 prompt tokens + EOS.
pub const CONTEXT_LEN: usize = 77;

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";
const END_OF_WORD: &str = "</w>";
/// CLIP's word split: English contractions, letter runs, single digits, and runs of anything
/// else that is not whitespace. HF's pattern also lists the two special tokens, but its ByteLevel
/// step re-splits them with GPT-2's pattern into `<|`, letters, `|>`, which this pattern gives too.
const WORD_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+";

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read tokenizer file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file} is not a JSON object of token -> id: {source}")]
    Vocab {
        file: String,
        source: serde_json::Error,
    },
    #[error("{file} line {line}: expected two space-separated symbols, found {text:?}")]
    MergeLine {
        file: String,
        line: usize,
        text: String,
    },
    #[error(
        "{file} line {line}: merge {left:?} + {right:?} uses a token missing from the vocabulary"
    )]
    MergeNotInVocab {
        file: String,
        line: usize,
        left: String,
        right: String,
    },
    #[error("{0} is not a BPE tokenizer.json (no model.vocab / model.merges)")]
    NotBpe(String),
    #[error("the bundled CLIP vocabulary: {0}")]
    Bundled(String),
    #[error("the vocabulary has no {0:?} token, so it is not a CLIP vocabulary")]
    MissingToken(String),
}

/// A loaded CLIP BPE vocabulary. Cheap to share behind `&`; encoding does not mutate.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    vocab: HashMap<String, u32>,
    /// (left id, right id) -> (rank, merged id); lower rank merges first.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Byte -> its printable stand-in character (GPT-2/CLIP byte-level alphabet).
    byte_chars: [char; 256],
    words: Regex,
    bos: u32,
    eos: u32,
    /// The pad token when it is an ordinary vocabulary entry: (text, id), matched verbatim.
    special_pad: Option<(String, u32)>,
}

impl ClipTokenizer {
    /// Load `vocab.json` and `merges.txt` from a tokenizer folder (e.g. `<model>/tokenizer`), and
    /// the pad token of its `tokenizer_config.json` when there is one.
    /// A folder with only `tokenizer.json` (what transformers 5.x saves) is read too.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let json = dir.join("tokenizer.json");
        let mut t = if !dir.join("vocab.json").is_file() && json.is_file() {
            Self::from_tokenizer_json(&json)?
        } else {
            Self::from_files(&dir.join("vocab.json"), &dir.join("merges.txt"))?
        };
        let config = dir.join("tokenizer_config.json");
        if config.is_file() {
            let text = std::fs::read_to_string(&config).map_err(|source| TokenizerError::Io {
                path: config.clone(),
                source,
            })?;
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| TokenizerError::Vocab {
                    file: config.display().to_string(),
                    source,
                })?;
            // Written either as a string or as an AddedToken object with `content`.
            let pad = value.get("pad_token").and_then(|p| {
                p.as_str()
                    .or_else(|| p.get("content").and_then(|c| c.as_str()))
            });
            if let Some(pad) = pad {
                t.set_pad_token(pad);
            }
        }
        Ok(t)
    }

    /// Declares the pad token. BOS/EOS are special already; another vocabulary token becomes one.
    pub fn set_pad_token(&mut self, token: &str) {
        self.special_pad = match self.vocab.get(token) {
            Some(&id) if id != self.bos && id != self.eos && !token.is_empty() => {
                Some((token.to_string(), id))
            }
            _ => None,
        };
    }

    pub fn from_files(vocab: &Path, merges: &Path) -> Result<Self, TokenizerError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| TokenizerError::Io {
                path: p.to_path_buf(),
                source,
            })
        };
        Self::parse(
            &read(vocab)?,
            &read(merges)?,
            &vocab.display().to_string(),
            &merges.display().to_string(),
        )
    }

    /// The CLIP vocabulary embedded in stipple, with `pad` as the pad token (SDXL's second text
    /// encoder pads with "!"; the others with `<|endoftext|>`, which is EOS).
    pub fn bundled(pad: &str) -> Result<Self, TokenizerError> {
        let (vocab, merges) = crate::model::template::clip_vocab()
            .map_err(|e| TokenizerError::Bundled(e.to_string()))?;
        let mut t = Self::from_strs(&vocab, &merges)?;
        t.set_pad_token(pad);
        Ok(t)
    }

    /// Reads a Hugging Face `tokenizer.json` (a BPE model: `model.vocab`, and `model.merges` as
    /// "a b" strings or `["a", "b"]` pairs).
    pub fn from_tokenizer_json(path: &Path) -> Result<Self, TokenizerError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| TokenizerError::Vocab {
                file: file.clone(),
                source,
            })?;
        let model = value.get("model");
        let vocab = model.and_then(|m| m.get("vocab")).filter(|v| v.is_object());
        let merges = model
            .and_then(|m| m.get("merges"))
            .and_then(|m| m.as_array());
        let (Some(vocab), Some(merges)) = (vocab, merges) else {
            return Err(TokenizerError::NotBpe(file));
        };
        let mut lines = String::new();
        for m in merges {
            let pair = match (m.as_str(), m.as_array()) {
                (Some(s), _) => Some(s.to_string()),
                (None, Some(a)) => match (
                    a.first().and_then(|x| x.as_str()),
                    a.get(1).and_then(|x| x.as_str()),
                ) {
                    (Some(l), Some(r)) if a.len() == 2 => Some(format!("{l} {r}")),
                    _ => None,
                },
                _ => None,
            };
            let Some(pair) = pair else {
                return Err(TokenizerError::NotBpe(file));
            };
            lines.push_str(&pair);
            lines.push('\n');
        }
        Self::parse(&vocab.to_string(), &lines, &file, &file)
    }

    /// Build from the files' contents (names in errors are "vocab.json" / "merges.txt").
    pub fn from_strs(vocab_json: &str, merges_txt: &str) -> Result<Self, TokenizerError> {
        Self::parse(vocab_json, merges_txt, "vocab.json", "merges.txt")
    }

    fn parse(
        vocab_json: &str,
        merges_txt: &str,
        vocab_name: &str,
        merges_name: &str,
    ) -> Result<Self, TokenizerError> {
        let vocab: HashMap<String, u32> =
            serde_json::from_str(vocab_json).map_err(|source| TokenizerError::Vocab {
                file: vocab_name.to_string(),
                source,
            })?;
        let id = |t: &str| {
            vocab
                .get(t)
                .copied()
                .ok_or_else(|| TokenizerError::MissingToken(t.to_string()))
        };
        let (bos, eos) = (id(BOS)?, id(EOS)?);

        let mut merges = HashMap::new();
        let mut rank = 0u32;
        for (n, line) in merges_txt.lines().enumerate() {
            // HF skips the `#version: ...` header; blank lines (a trailing newline) carry nothing.
            if (n == 0 && line.starts_with("#version")) || line.trim().is_empty() {
                continue;
            }
            let mut parts = line.split(' ');
            let (Some(left), Some(right), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(TokenizerError::MergeLine {
                    file: merges_name.to_string(),
                    line: n + 1,
                    text: line.to_string(),
                });
            };
            let missing = || TokenizerError::MergeNotInVocab {
                file: merges_name.to_string(),
                line: n + 1,
                left: left.to_string(),
                right: right.to_string(),
            };
            let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right)) else {
                return Err(missing());
            };
            let merged = vocab.get(&format!("{left}{right}")).ok_or_else(missing)?;
            // A repeated pair keeps its first (best) rank.
            merges.entry((l, r)).or_insert((rank, *merged));
            rank += 1;
        }

        Ok(ClipTokenizer {
            vocab,
            merges,
            byte_chars: byte_alphabet(),
            words: Regex::new(WORD_PATTERN).expect("constant pattern compiles"),
            bos,
            eos,
            special_pad: None,
        })
    }

    /// Every token's vocabulary text by id (`cat</w>`), for showing what a prompt tokenized to.
    pub fn id_to_text(&self) -> HashMap<u32, String> {
        self.vocab.iter().map(|(t, &id)| (id, t.clone())).collect()
    }

    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// Token ids of `text`, without BOS/EOS and without truncation.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        // HF's added-token pass, as SD1.5's tokenizer folder configures it: `<|endoftext|>` is
        // matched verbatim in the raw text, `<|startoftext|>` in the normalised text (so any
        // case matches); what lies between is split into words and BPE-encoded.
        let mut ids = Vec::new();
        for (i, raw) in text.split(EOS).enumerate() {
            if i > 0 {
                ids.push(self.eos);
            }
            if raw.is_empty() {
                continue;
            }
            let pieces: Vec<&str> = match &self.special_pad {
                Some((pad, _)) => raw.split(pad.as_str()).collect(),
                None => vec![raw],
            };
            for (k, piece) in pieces.into_iter().enumerate() {
                if let (true, Some((_, id))) = (k > 0, &self.special_pad) {
                    ids.push(*id);
                }
                for (j, part) in normalize(piece).split(BOS).enumerate() {
                    if j > 0 {
                        ids.push(self.bos);
                    }
                    for word in self.words.find_iter(part) {
                        self.bpe(word.as_str(), &mut ids);
                    }
                }
            }
        }
        ids
    }

    /// What diffusers feeds the text encoder for one chunk: BOS, the first 75 tokens, EOS, then
    /// `pad_id` up to [`CONTEXT_LEN`] (49407 for SD1.x's CLIP-L, 0 for OpenCLIP encoders).
    pub fn encode_padded(&self, text: &str, pad_id: u32) -> Vec<u32> {
        let mut ids = Vec::with_capacity(CONTEXT_LEN);
        ids.push(self.bos);
        ids.extend(self.encode(text).into_iter().take(CONTEXT_LEN - 2));
        ids.push(self.eos);
        ids.resize(CONTEXT_LEN, pad_id);
        ids
    }

    /// Byte-level BPE of one word: one symbol per byte, `</w>` on the last, then merge the
    /// best-ranked adjacent pair (every non-overlapping occurrence, left to right) until none applies.
    fn bpe(&self, word: &str, out: &mut Vec<u32>) {
        let bytes = word.as_bytes();
        let mut symbols: Vec<u32> = bytes
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                let mut s = self.byte_chars[b as usize].to_string();
                if i + 1 == bytes.len() {
                    s.push_str(END_OF_WORD);
                }
                // HF maps a symbol missing from the vocabulary to the unknown token (EOS for CLIP).
                self.vocab.get(&s).copied().unwrap_or(self.eos)
            })
            .collect();
        while let Some(best) = symbols
            .windows(2)
            .filter_map(|w| self.merges.get(&(w[0], w[1])).map(|&(rank, _)| rank))
            .min()
        {
            let mut merged = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if i + 1 < symbols.len() {
                    if let Some(&(rank, new_id)) = self.merges.get(&(symbols[i], symbols[i + 1])) {
                        if rank == best {
                            merged.push(new_id);
                            i += 2;
                            continue;
                        }
                    }
                }
                merged.push(symbols[i]);
                i += 1;
            }
            symbols = merged;
        }
        out.extend(symbols);
    }
}

/// NFC, whitespace runs to a single space, then lowercase one character at a time (as the
/// `tokenizers` Lowercase normaliser does: no context-dependent rules such as final sigma).
fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_space = false;
    for c in text.nfc() {
        if c.is_whitespace() {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.extend(c.to_lowercase());
            in_space = false;
        }
    }
    out
}

/// GPT-2's reversible byte -> character map: printable Latin-1 bytes stand for themselves,
/// the others take code points 256, 257, ... in byte order.
fn byte_alphabet() -> [char; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        table[b as usize] = if printable(b) {
            char::from(b)
        } else {
            next += 1;
            char::from_u32(next - 1).expect("code points 256..324 are valid")
        };
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ClipTokenizer {
        let vocab = r#"{"c":0,"a":1,"t":2,"c</w>":3,"a</w>":4,"t</w>":5,"ca":6,"cat</w>":7,
            "<|startoftext|>":8,"<|endoftext|>":9}"#;
        ClipTokenizer::from_strs(vocab, "#version: 0.2\nc a\nca t</w>\n").unwrap()
    }

    #[test]
    fn merges_apply_by_rank_and_special_tokens_wrap_the_padded_form() {
        let t = tiny();
        assert_eq!(t.encode("CAT cat"), vec![7, 7]);
        assert_eq!(t.encode("tac"), vec![2, 1, 3]);
        let padded = t.encode_padded("cat", 9);
        assert_eq!(padded.len(), CONTEXT_LEN);
        assert_eq!(&padded[..4], &[8, 7, 9, 9]);
    }

    #[test]
    fn an_ordinary_pad_token_is_split_out_like_hf() {
        let vocab = r#"{"!":0,"c":1,"a":2,"t":3,"t</w>":4,"ca":5,"cat</w>":6,"!</w>":7,
            "<|startoftext|>":8,"<|endoftext|>":9}"#;
        let mut t = ClipTokenizer::from_strs(
            vocab,
            "#version: 0.2
c a
ca t</w>
",
        )
        .unwrap();
        assert_eq!(t.encode("cat!"), vec![6, 7]);
        t.set_pad_token("!");
        assert_eq!(t.encode("cat!!"), vec![6, 0, 0]);
        t.set_pad_token("<|endoftext|>");
        assert_eq!(t.encode("cat!"), vec![6, 7], "EOS stays what it was");
    }

    #[test]
    fn malformed_files_give_errors_not_panics() {
        let err = ClipTokenizer::from_strs("[1,2]", "").unwrap_err();
        assert!(matches!(err, TokenizerError::Vocab { .. }), "{err}");
        let err = ClipTokenizer::from_strs(r#"{"a":1}"#, "").unwrap_err();
        assert!(matches!(err, TokenizerError::MissingToken(_)), "{err}");
        let vocab = r#"{"a":0,"<|startoftext|>":1,"<|endoftext|>":2}"#;
        let err = ClipTokenizer::from_strs(vocab, "#version\na b c\n").unwrap_err();
        assert!(
            matches!(err, TokenizerError::MergeLine { line: 2, .. }),
            "{err}"
        );
        let err = ClipTokenizer::from_strs(vocab, "a q\n").unwrap_err();
        assert!(err.to_string().contains("\"q\""), "{err}");
    }

    #[test]
    fn byte_alphabet_is_a_bijection_onto_printable_characters() {
        let t = byte_alphabet();
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[b' ' as usize], 'Ġ');
        let mut seen: Vec<char> = t.to_vec();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 256);
    }
}
