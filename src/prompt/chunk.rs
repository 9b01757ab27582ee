//! Long prompts: [`chunk`] packs the fragments' tokens into chunks of at most 75 with their weights,
//! the way A1111 does (BREAK starts a new chunk; a full chunk hands the words after its last comma to
//! the next one). Generic over the tokenizer so it is testable without CLIP; [`Chunk::padded`] adds
//! BOS/EOS/padding for the text encoder. A prompt longer than [`MAX_CHUNKS`] chunks is refused: each
//! chunk is one more text-encoder run and 77 more context tokens in every UNet step.

use super::emphasis::Fragment;
use super::error::PromptError;

/// Tokens per chunk, not counting BOS and EOS (CLIP's 77-token window).
pub const CHUNK_LEN: usize = 75;

/// The most chunks a prompt may have (2,400 tokens): far past real prompts (A1111 users rarely pass
/// 4), and it keeps one pasted text from holding the engine for minutes.
pub const MAX_CHUNKS: usize = 32;

/// CLIP's `,</w>` token id.
pub const CLIP_COMMA: u32 = 267;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chunk {
    /// At most [`CHUNK_LEN`], without BOS/EOS/padding.
    pub tokens: Vec<u32>,
    /// One per token.
    pub weights: Vec<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkConfig {
    pub comma_token: u32,
    /// A1111's `comma_padding_backtrack`: how far back (in tokens) a comma may be for the words after
    /// it to move to the next chunk when a chunk fills up; 0 turns this off.
    pub comma_padding_backtrack: usize,
}

impl Default for ChunkConfig {
    /// A1111's defaults for CLIP.
    fn default() -> Self {
        ChunkConfig {
            comma_token: CLIP_COMMA,
            comma_padding_backtrack: 20,
        }
    }
}

impl Chunk {
    /// `[bos] tokens [eos] pad...`, 77 ids, with weight 1 on the added ids (A1111 layout; SD1's pad
    /// id is its EOS, SDXL's second encoder pads with 0).
    pub fn padded(&self, bos: u32, eos: u32, pad: u32) -> (Vec<u32>, Vec<f32>) {
        let n = self.tokens.len().min(CHUNK_LEN);
        let mut ids = Vec::with_capacity(CHUNK_LEN + 2);
        let mut w = Vec::with_capacity(CHUNK_LEN + 2);
        ids.push(bos);
        w.push(1.0);
        ids.extend_from_slice(&self.tokens[..n]);
        w.extend(self.weights.iter().take(n).copied());
        w.resize(n + 1, 1.0);
        ids.push(eos);
        w.push(1.0);
        ids.resize(CHUNK_LEN + 2, pad);
        w.resize(CHUNK_LEN + 2, 1.0);
        (ids, w)
    }
}

/// Tokenizes each text fragment with `tokenize` (no BOS/EOS) and packs the tokens into chunks.
/// Always returns at least one chunk (an empty prompt is one empty chunk, as in A1111). Errs, without
/// tokenizing the rest, as soon as the prompt needs more than [`MAX_CHUNKS`] chunks.
pub fn chunk<F>(
    fragments: &[Fragment],
    tokenize: F,
    cfg: &ChunkConfig,
) -> Result<Vec<Chunk>, PromptError>
where
    F: Fn(&str) -> Vec<u32>,
{
    chunk_units(
        fragments,
        |t| tokenize(t).into_iter().map(Unit::Token).collect(),
        cfg,
    )
}

/// What a fragment tokenizes to: tokens, and the vectors of textual-inversion embeddings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unit {
    Token(u32),
    /// An embedding's vector ids: kept in one chunk, each counted as a token (A1111's rule).
    Vectors(Vec<u32>),
}

/// [`chunk`] over units: an embedding that does not fit in the current chunk starts the next.
pub fn chunk_units<F>(
    fragments: &[Fragment],
    mut tokenize: F,
    cfg: &ChunkConfig,
) -> Result<Vec<Chunk>, PromptError>
where
    F: FnMut(&str) -> Vec<Unit>,
{
    let mut done: Vec<Chunk> = Vec::new();
    let mut cur = Chunk {
        tokens: Vec::new(),
        weights: Vec::new(),
    };
    // Where in `cur` the last comma sits.
    let mut last_comma: Option<usize> = None;

    for f in fragments {
        let (text, weight) = match f {
            Fragment::Break => {
                check_room(&done)?;
                done.push(std::mem::take(&mut cur));
                last_comma = None;
                continue;
            }
            Fragment::Text { text, weight } => (text, *weight as f32),
        };
        for unit in tokenize(text) {
            if unit == Unit::Token(cfg.comma_token) {
                last_comma = Some(cur.tokens.len());
            } else if let Some(c) = last_comma {
                let full = cur.tokens.len() == CHUNK_LEN;
                if full
                    && cfg.comma_padding_backtrack != 0
                    && CHUNK_LEN - c <= cfg.comma_padding_backtrack
                {
                    // Move the words after the comma to the next chunk, so a phrase is not cut.
                    let tokens = cur.tokens.split_off(c + 1);
                    let weights = cur.weights.split_off(c + 1);
                    check_room(&done)?;
                    done.push(std::mem::replace(&mut cur, Chunk { tokens, weights }));
                    last_comma = None;
                }
            }
            if cur.tokens.len() == CHUNK_LEN {
                check_room(&done)?;
                done.push(std::mem::take(&mut cur));
                last_comma = None;
            }
            match unit {
                Unit::Token(token) => {
                    cur.tokens.push(token);
                    cur.weights.push(weight);
                }
                Unit::Vectors(ids) => {
                    if cur.tokens.len() + ids.len() > CHUNK_LEN {
                        check_room(&done)?;
                        done.push(std::mem::take(&mut cur));
                        last_comma = None;
                    }
                    cur.weights.extend(std::iter::repeat_n(weight, ids.len()));
                    cur.tokens.extend(ids);
                }
            }
        }
    }
    if !cur.tokens.is_empty() || done.is_empty() {
        done.push(cur);
    }
    Ok(done)
}

/// Errs when `done` already holds the last chunk allowed, so one more would pass [`MAX_CHUNKS`].
fn check_room(done: &[Chunk]) -> Result<(), PromptError> {
    if done.len() + 1 < MAX_CHUNKS {
        return Ok(());
    }
    let found = format!("more than {MAX_CHUNKS} chunks");
    Err(PromptError::new(0..0, too_long(&found)).with_hint(SHORTEN))
}

/// The hint for a prompt over a size limit.
pub(crate) const SHORTEN: &str = "shorten the prompt or use fewer BREAKs";

/// The message for a prompt over [`MAX_CHUNKS`]; `found` says by how much.
pub(crate) fn too_long(found: &str) -> String {
    format!(
        "prompt too long: {found}; the limit is {MAX_CHUNKS} chunks of {CHUNK_LEN} tokens ({} tokens)",
        MAX_CHUNKS * CHUNK_LEN
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One token per whitespace-separated word: `,` is 267, a number is itself, other words are 1.
    fn fake(text: &str) -> Vec<u32> {
        text.split_whitespace()
            .map(|w| {
                if w == "," {
                    CLIP_COMMA
                } else {
                    w.parse().unwrap_or(1)
                }
            })
            .collect()
    }

    fn t(text: &str, weight: f64) -> Fragment {
        Fragment::Text {
            text: text.into(),
            weight,
        }
    }

    fn words(range: std::ops::Range<u32>) -> String {
        range.map(|i| i.to_string()).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn short_and_empty_prompts_are_one_chunk() {
        let c = chunk(&[t("5 6", 1.0), t("7", 1.5)], fake, &ChunkConfig::default()).unwrap();
        assert_eq!(
            c,
            vec![Chunk {
                tokens: vec![5, 6, 7],
                weights: vec![1.0, 1.0, 1.5]
            }]
        );
        let c = chunk(&[], fake, &ChunkConfig::default()).unwrap();
        assert_eq!(
            c,
            vec![Chunk {
                tokens: vec![],
                weights: vec![]
            }]
        );
    }

    #[test]
    fn break_starts_a_new_chunk_even_when_empty() {
        let c = chunk(
            &[Fragment::Break, t("5", 1.0), Fragment::Break, t("6", 1.0)],
            fake,
            &ChunkConfig::default(),
        )
        .unwrap();
        let toks: Vec<Vec<u32>> = c.into_iter().map(|c| c.tokens).collect();
        assert_eq!(toks, vec![vec![], vec![5], vec![6]]);
    }

    #[test]
    fn full_chunk_without_comma_splits_at_75() {
        let c = chunk(&[t(&words(1000..1080), 1.0)], fake, &ChunkConfig::default()).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].tokens, (1000..1075).collect::<Vec<_>>());
        assert_eq!(c[1].tokens, (1075..1080).collect::<Vec<_>>());
    }

    #[test]
    fn words_after_a_near_comma_move_to_the_next_chunk() {
        // 60 words, a comma at index 60, then 20 words: the 76th token arrives with the comma 15
        // back (75 - 60 <= 20), so tokens 61..75 move and chunk 1 ends at the comma.
        let text = format!("{} , {}", words(1000..1060), words(2000..2020));
        let c = chunk(&[t(&text, 1.2)], fake, &ChunkConfig::default()).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].tokens.len(), 61);
        assert_eq!(c[0].tokens[60], CLIP_COMMA);
        assert_eq!(c[1].tokens, (2000..2020).collect::<Vec<_>>());
        assert!(c[1].weights.iter().all(|w| (*w - 1.2).abs() < 1e-6));
    }

    #[test]
    fn a_far_comma_or_backtrack_zero_does_not_move_words() {
        // Comma at index 40: 75 - 40 = 35 > 20.
        let text = format!("{} , {}", words(1000..1040), words(2000..2040));
        let c = chunk(&[t(&text, 1.0)], fake, &ChunkConfig::default()).unwrap();
        assert_eq!(c[0].tokens.len(), 75);
        let text = format!("{} , {}", words(1000..1060), words(2000..2020));
        let cfg = ChunkConfig {
            comma_padding_backtrack: 0,
            ..ChunkConfig::default()
        };
        assert_eq!(
            chunk(&[t(&text, 1.0)], fake, &cfg).unwrap()[0].tokens.len(),
            75
        );
    }

    #[test]
    fn a_comma_arriving_at_a_full_chunk_starts_the_next() {
        let text = format!("{} , 5", words(1000..1075));
        let c = chunk(&[t(&text, 1.0)], fake, &ChunkConfig::default()).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].tokens, vec![CLIP_COMMA, 5]);
    }

    #[test]
    fn an_embedding_stays_in_one_chunk_and_takes_its_weight() {
        // 70 tokens, then a 10-vector embedding: 80 > 75, so it starts chunk 2 whole.
        let mut calls = 0;
        let units = |text: &str| {
            calls += 1;
            let mut u: Vec<Unit> = fake(text).into_iter().map(Unit::Token).collect();
            if calls == 2 {
                u.push(Unit::Vectors((900..910).collect()));
            }
            u
        };
        let c = chunk_units(
            &[t(&words(1000..1070), 1.0), t("5", 1.3)],
            units,
            &ChunkConfig::default(),
        )
        .unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].tokens.len(), 71);
        assert_eq!(c[1].tokens, (900..910).collect::<Vec<_>>());
        assert!(c[1].weights.iter().all(|w| (*w - 1.3).abs() < 1e-6));
    }

    #[test]
    fn padded_layout() {
        let c = Chunk {
            tokens: vec![5, 6],
            weights: vec![1.1, 0.9],
        };
        let (ids, w) = c.padded(49406, 49407, 0);
        assert_eq!(ids.len(), 77);
        assert_eq!(&ids[..5], &[49406, 5, 6, 49407, 0]);
        assert_eq!(ids[76], 0);
        assert_eq!(&w[..4], &[1.0, 1.1, 0.9, 1.0]);
        assert_eq!(w[76], 1.0);
    }

    #[test]
    fn a_prompt_past_the_chunk_limit_is_refused_without_tokenizing_the_rest() {
        let calls = std::cell::Cell::new(0);
        let counting = |text: &str| {
            calls.set(calls.get() + 1);
            fake(text)
        };
        let at_limit: Vec<Fragment> = (0..MAX_CHUNKS)
            .flat_map(|_| [t("5", 1.0), Fragment::Break])
            .take(2 * MAX_CHUNKS - 1)
            .collect();
        assert_eq!(
            chunk(&at_limit, fake, &ChunkConfig::default())
                .unwrap()
                .len(),
            MAX_CHUNKS
        );

        let flood: Vec<Fragment> = (0..5000)
            .flat_map(|_| [t("5", 1.0), Fragment::Break])
            .collect();
        let e = chunk(&flood, counting, &ChunkConfig::default()).unwrap_err();
        assert!(
            e.message
                .contains("limit is 32 chunks of 75 tokens (2400 tokens)"),
            "{}",
            e.message
        );
        assert!(
            calls.get() <= MAX_CHUNKS,
            "tokenized {} fragments",
            calls.get()
        );

        let long = t(&words(0..(MAX_CHUNKS * CHUNK_LEN) as u32 + 1), 1.0);
        let e = chunk(&[long], fake, &ChunkConfig::default()).unwrap_err();
        assert!(
            e.message
                .starts_with("prompt too long: more than 32 chunks"),
            "{}",
            e.message
        );
    }
}
