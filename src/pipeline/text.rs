//! Text conditioning: [`TextConditioner`] owns the tokenizers, clip skip's final layer norm and
//! the cache of conditioning per (text-encoder state, text), and runs the text-encoder sessions it is
//! handed (A1111 chunks and emphasis, SDXL's two encoders and pooled embedding, textual-inversion
//! embeddings fed as extra token rows).

use super::error::{run_err, PipelineError};
use super::keys::Fusion;
use super::resident::Net;
use super::tokenizer::ClipTokenizer;
use crate::embedding::{Prompter, Rows};
use crate::family::Family;
use crate::model::extra_tokens::{takes_extra_rows, token_table, EXTRA_INPUT};
use crate::model::layout::ComponentKind;
use crate::model::{Model, TokenizerFiles};
use crate::prompt::{chunk_units, Chunk, ChunkConfig, Fragment, MAX_CHUNKS};
use crate::runtime::tensor_io::Input;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// A prompt's conditioning: the UNet context (`[tokens, context_dim]`, chunks concatenated) and, for
/// families with added conditioning, the pooled embedding of its first chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct Conditioning {
    pub chunks: Vec<Vec<f32>>,
    pub pooled: Option<Vec<f32>>,
    /// (name, A1111 short hash) of the embeddings the prompt used.
    pub embeddings: Vec<(String, String)>,
}

/// The tokenizers and text-side state of a loaded model.
pub struct TextConditioner {
    family: Family,
    /// One per text encoder, from its tokenizer folder.
    tokenizers: Vec<ClipTokenizer>,
    /// The text encoder's final layer norm (weight, bias, eps) when clip skip 2 needs it.
    final_norm: Option<(Vec<f32>, Vec<f32>, f32)>,
    /// An empty negative prompt is all zeros (SDXL's `force_zeros_for_empty_prompt`).
    zeros_for_empty_negative: bool,
    /// How many texts were encoded.
    encodes: usize,
    /// Textual-inversion embeddings: the folders, the files read, the names in token streams.
    embeddings: Prompter,
    /// The running jobs' conditioning per (text-encoder state, text, embedding files' stamp): each
    /// distinct text (a prompt editing step, an `AND` part, a negative prompt) is encoded once per
    /// text-encoder strength set, not once per step.
    cache: HashMap<(Fusion, String, u64), Arc<Conditioning>>,
}

impl TextConditioner {
    /// The tokenizers of `model`; `clip_skip` 2 reads the final layer norm from its weights;
    /// embeddings are looked up in `embedding_dirs`.
    pub fn load(
        model: &Model,
        clip_skip: u32,
        embedding_dirs: Vec<PathBuf>,
    ) -> Result<Self, PipelineError> {
        let tokenizers = model
            .tokenizers
            .iter()
            .map(|t| match t {
                TokenizerFiles::Folder(d) => ClipTokenizer::from_dir(d),
                TokenizerFiles::Bundled { pad } => ClipTokenizer::bundled(pad),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let final_norm = if clip_skip == 2 {
            final_layer_norm(model)
        } else {
            None
        };
        let family = model.index.family;
        // Per encoder, the token table its graph extends with embedding rows.
        let tables = family
            .facts()
            .encoders
            .iter()
            .map(|enc| {
                let c = model.component(enc.component)?;
                takes_extra_rows(&c.graph)
                    .then(|| token_table(&c.graph))
                    .flatten()
            })
            .collect();
        Ok(TextConditioner {
            family,
            tokenizers,
            final_norm,
            zeros_for_empty_negative: model.zeros_for_empty_negative(),
            encodes: 0,
            embeddings: Prompter::new(embedding_dirs, family.facts().name, tables),
            cache: HashMap::new(),
        })
    }

    /// One tokenizer per text encoder, in the family's order.
    pub fn tokenizers(&self) -> &[ClipTokenizer] {
        &self.tokenizers
    }

    /// How many texts were encoded (one per distinct text and text-encoder strength set).
    pub fn encodes(&self) -> usize {
        self.encodes
    }

    /// Forgets the last job's conditioning and lists the embedding folders again.
    pub fn begin_job(&mut self) {
        self.cache.clear();
        self.embeddings.refresh();
    }

    /// The embedding names the folders hold, sorted.
    pub fn embedding_names(&self) -> Vec<String> {
        self.embeddings.names()
    }

    /// `TI hashes` of a job whose texts are `texts`: the embeddings its encoded texts used.
    pub fn ti_hashes(&self, texts: &[Vec<Fragment>]) -> Vec<(String, String)> {
        let wanted: Vec<String> = texts.iter().map(|t| format!("{t:?}")).collect();
        let mut out: Vec<(String, String)> = Vec::new();
        for ((_, text, _), c) in &self.cache {
            if wanted.contains(text) {
                for e in &c.embeddings {
                    if !out.contains(e) {
                        out.push(e.clone());
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// Whether an empty negative prompt is all zeros for this model (SDXL).
    pub fn zeros_for_empty_negative(&self) -> bool {
        self.zeros_for_empty_negative
    }

    /// The conditioning of one text (emphasis fragments) with the text encoders in state `te`:
    /// cached for the job, or encoded on `nets` now.
    pub fn cond(
        &mut self,
        nets: &mut [Net],
        te: &Fusion,
        text: &[Fragment],
    ) -> Result<Arc<Conditioning>, PipelineError> {
        let key = (te.clone(), format!("{text:?}"), self.embeddings.stamp());
        if let Some(c) = self.cache.get(&key) {
            return Ok(c.clone());
        }
        let c = Arc::new(self.encode_prompt_pooled(nets, text)?);
        self.encodes += 1;
        self.cache.insert(key, c.clone());
        Ok(c)
    }

    /// The conditioning for `text` as one plain 77-token chunk (diffusers' way, truncating):
    /// `[77, context_dim]`.
    pub fn encode_text(&mut self, nets: &mut [Net], text: &str) -> Result<Vec<f32>, PipelineError> {
        Ok(self.encode_text_pooled(nets, text)?.0)
    }

    /// [`Self::encode_text`] with the pooled embedding of families that have one (SDXL's
    /// `text_embeds`), as diffusers' `encode_prompt` gives them.
    pub fn encode_text_pooled(
        &mut self,
        nets: &mut [Net],
        text: &str,
    ) -> Result<(Vec<f32>, Option<Vec<f32>>), PipelineError> {
        let encoders = self.family.facts().encoders;
        let mut parts = Vec::with_capacity(encoders.len());
        let mut pooled = None;
        for (i, enc) in encoders.iter().enumerate() {
            let ids = self.tokenizers[i]
                .encode_padded(text, enc.pad_id)
                .into_iter()
                .map(i64::from)
                .collect();
            let rows = self.embeddings.rows(i);
            let (z, p) = self.encode_ids(nets, i, ids, &rows)?;
            parts.push(z);
            pooled = pooled.or(p);
        }
        Ok((concat_per_token(&parts), pooled))
    }

    /// A1111-style conditioning for a prompt: 75-token chunks (BREAK, long prompts), each encoded to
    /// 77 hidden states, scaled by its emphasis weights with the chunk's mean restored, concatenated.
    /// A plain prompt of at most 75 tokens gives exactly what diffusers' pipeline gives.
    pub fn encode_prompt(
        &mut self,
        nets: &mut [Net],
        fragments: &[Fragment],
    ) -> Result<Vec<Vec<f32>>, PipelineError> {
        Ok(self.encode_prompt_pooled(nets, fragments)?.chunks)
    }

    /// Length of the conditioning for these texts (77 per chunk of the longest), without running
    /// a text encoder.
    pub fn context_len(&mut self, texts: &[Vec<Fragment>]) -> usize {
        let mut n = 1;
        for i in 0..self.tokenizers.len() {
            for t in texts {
                let k = self.chunks(i, t).map_or(MAX_CHUNKS, |(c, _)| c.len()); // too long or refused: encoding says why
                n = n.max(k);
            }
        }
        77 * n
    }

    /// The padded ids of each chunk of `fragments` for each text encoder (embedding vectors as ids
    /// from the vocabulary size on, numbered in order of first use), as the encoders get them.
    pub fn prompt_ids(
        &mut self,
        fragments: &[Fragment],
    ) -> Result<Vec<Vec<Vec<u32>>>, PipelineError> {
        let encoders = self.family.facts().encoders;
        let mut out = Vec::with_capacity(encoders.len());
        for (i, enc) in encoders.iter().enumerate() {
            let (chunks, _) = self.chunks(i, fragments)?;
            let tok = &self.tokenizers[i];
            let ids = chunks
                .iter()
                .map(|c| c.padded(tok.bos_id(), tok.eos_id(), enc.pad_id).0)
                .collect();
            out.push(ids);
        }
        Ok(out)
    }

    /// `fragments` in chunks for text encoder `i`, embeddings as vector ids, and their rows.
    fn chunks(
        &mut self,
        i: usize,
        fragments: &[Fragment],
    ) -> Result<(Vec<Chunk>, Rows), PipelineError> {
        let tok = &self.tokenizers[i];
        let embeddings = &mut self.embeddings;
        let mut rows = embeddings.rows(i);
        let mut failed = None;
        let chunks = chunk_units(
            fragments,
            |t| {
                embeddings
                    .units(i, &|s| tok.encode(s), t, &mut rows)
                    .unwrap_or_else(|e| {
                        failed.get_or_insert(e);
                        Vec::new()
                    })
            },
            &ChunkConfig::default(),
        )
        .map_err(|e| PipelineError::Prompt(e.to_string()))?;
        if let Some(e) = failed {
            return Err(PipelineError::Prompt(e.to_string()));
        }
        Ok((chunks, rows))
    }

    /// [`Self::encode_prompt`] for every text encoder of the family: each encoder chunks the prompt
    /// with its own tokenizer (SDXL's second one splits out its pad token "!"), pads with its own pad
    /// id and weighs emphasis on its own (as A1111 does per embedder); the encoders' hidden states are
    /// then concatenated per token, chunk by chunk (an encoder with fewer chunks gets the empty
    /// prompt's). The pooled embedding comes from the first chunk, as in A1111 and diffusers.
    pub fn encode_prompt_pooled(
        &mut self,
        nets: &mut [Net],
        fragments: &[Fragment],
    ) -> Result<Conditioning, PipelineError> {
        let encoders = self.family.facts().encoders;
        let mut per_encoder: Vec<Vec<Vec<f32>>> = Vec::with_capacity(encoders.len());
        let mut pooled = None;
        let mut used = Vec::new();
        for (i, enc) in encoders.iter().enumerate() {
            let (mut chunks, rows) = self.chunks(i, fragments)?;
            if i == 0 {
                used = rows
                    .used()
                    .map(|(n, h)| (n.to_string(), h.to_string()))
                    .collect();
            }
            if chunks.is_empty() {
                chunks.push(Chunk::default());
            }
            let tok = &self.tokenizers[i];
            let (bos, eos) = (tok.bos_id(), tok.eos_id());
            let mut zs = Vec::with_capacity(chunks.len());
            for (n, c) in chunks.iter().enumerate() {
                let (ids, weights) = c.padded(bos, eos, enc.pad_id);
                let (mut z, p) =
                    self.encode_ids(nets, i, ids.into_iter().map(i64::from).collect(), &rows)?;
                apply_emphasis(&mut z, &weights);
                zs.push(z);
                if n == 0 {
                    pooled = pooled.or(p);
                }
            }
            per_encoder.push(zs);
        }
        let n = per_encoder.iter().map(Vec::len).max().unwrap_or(1);
        for (i, zs) in per_encoder.iter_mut().enumerate() {
            if zs.len() < n {
                let empty = Chunk {
                    tokens: Vec::new(),
                    weights: Vec::new(),
                };
                let tok = &self.tokenizers[i];
                let (ids, _) = empty.padded(tok.bos_id(), tok.eos_id(), encoders[i].pad_id);
                let rows = self.embeddings.rows(i);
                let ids = ids.into_iter().map(i64::from).collect();
                let (z, _) = self.encode_ids(nets, i, ids, &rows)?;
                zs.resize(n, z);
            }
        }
        let chunks = (0..n)
            .map(|c| {
                let parts: Vec<Vec<f32>> = per_encoder.iter().map(|zs| zs[c].clone()).collect();
                concat_per_token(&parts)
            })
            .collect();
        Ok(Conditioning {
            chunks,
            pooled,
            embeddings: used,
        })
    }

    /// Runs text encoder `i` on one chunk of ids (embedding vectors from `rows`): its conditioning
    /// output and, for the encoder that has it, the pooled output.
    fn encode_ids(
        &mut self,
        nets: &mut [Net],
        i: usize,
        ids: Vec<i64>,
        rows: &Rows,
    ) -> Result<(Vec<f32>, Option<Vec<f32>>), PipelineError> {
        let facts = self.family.facts();
        let hidden = facts.encoders[i].hidden_output;
        // The pooled output belongs to the last encoder (diffusers: "the final text encoder").
        let pooled = facts
            .pooled_output
            .filter(|_| i + 1 == facts.encoders.len());
        // Clip skip 2 (SD 1.x): the penultimate layer through the final layer norm, as A1111.
        let skip = self.final_norm.is_some() && hidden == "last_hidden_state";
        let hidden = if skip {
            "penultimate_hidden_state"
        } else {
            hidden
        };
        let mut names = vec![hidden];
        names.extend(pooled);
        let n = ids.len();
        let session = nets.get_mut(i).ok_or_else(|| {
            PipelineError::Job(format!("the model has no text encoder number {}", i + 1))
        })?;
        let mut inputs = vec![Input::I64("input_ids", vec![1, n], ids)];
        let (extra_n, extra) = rows.feed();
        if self.embeddings.takes_rows(i) {
            let width = extra.len() / extra_n;
            inputs.push(Input::F32(EXTRA_INPUT, vec![extra_n, width], &extra));
        }
        let mut out = session
            .run(inputs, &names)
            .map_err(run_err("text encoder"))?
            .into_iter()
            .map(|(_, d)| d);
        let mut z = out.next().unwrap_or_default();
        let pooled = pooled.and(out.next());
        let finite = |v: &[f32]| v.iter().all(|x| x.is_finite());
        // Only an fp16 encoder's is an error: it is redone in fp32 (Sessions::with_text).
        if session.is_fp16() && !(finite(&z) && pooled.as_deref().is_none_or(finite)) {
            return Err(PipelineError::TextNotFinite { encoder: i + 1 });
        }
        if let (true, Some((w, b, eps))) = (skip, &self.final_norm) {
            layer_norm(&mut z, w, b, *eps);
        }
        Ok((z, pooled))
    }
}

/// The first text encoder's final layer norm (weight, bias, eps), read from its base weights.
fn final_layer_norm(model: &Model) -> Option<(Vec<f32>, Vec<f32>, f32)> {
    let te = model.component(ComponentKind::TextEncoder)?;
    let w = te
        .weights
        .tensor("text_model.final_layer_norm.weight")?
        .to_f32();
    let b = te
        .weights
        .tensor("text_model.final_layer_norm.bias")?
        .to_f32();
    let eps = te
        .config
        .get("layer_norm_eps")
        .and_then(|v| v.as_f64())
        .unwrap_or(1e-5) as f32;
    Some((w, b, eps))
}

/// Layer norm over the last dimension (the width of `weight`) of each token of `z`.
fn layer_norm(z: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let d = weight.len().max(1);
    for t in z.chunks_exact_mut(d) {
        let mean = t.iter().map(|&x| f64::from(x)).sum::<f64>() / d as f64;
        let var = t
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / d as f64;
        let inv = 1.0 / (var + f64::from(eps)).sqrt();
        for (i, x) in t.iter_mut().enumerate() {
            *x = ((f64::from(*x) - mean) * inv) as f32 * weight[i] + bias[i];
        }
    }
}

/// Hidden states `[tokens, d_i]` of several encoders → `[tokens, Σ d_i]` (torch.concat on the last
/// axis). One encoder: its states unchanged.
fn concat_per_token(parts: &[Vec<f32>]) -> Vec<f32> {
    if parts.len() == 1 {
        return parts[0].clone();
    }
    let tokens = crate::pipeline::tokenizer::CONTEXT_LEN;
    let widths: Vec<usize> = parts.iter().map(|p| p.len() / tokens).collect();
    let mut out = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    for t in 0..tokens {
        for (p, &w) in parts.iter().zip(&widths) {
            out.extend_from_slice(&p[t * w..(t + 1) * w]);
        }
    }
    out
}

/// A1111's emphasis: scale each token's hidden state by its weight, then restore the chunk's mean.
/// With every weight 1 nothing changes (bit for bit), which keeps plain prompts equal to diffusers.
fn apply_emphasis(z: &mut [f32], weights: &[f32]) {
    if weights.iter().all(|&w| w == 1.0) || weights.is_empty() {
        return;
    }
    let width = z.len() / weights.len();
    let mean = |z: &[f32]| z.iter().map(|&x| f64::from(x)).sum::<f64>() / z.len() as f64;
    let before = mean(z);
    for (row, &w) in z.chunks_exact_mut(width).zip(weights) {
        for x in row {
            *x *= w;
        }
    }
    let after = mean(z);
    if after != 0.0 {
        let k = (before / after) as f32;
        for x in z.iter_mut() {
            *x *= k;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emphasis_scales_tokens_and_restores_the_mean() {
        // Two tokens of width 2: [1, 2 | 3, 4], weights [1, 2]. Scaled: [1, 2, 6, 8] (mean 4.25);
        // the original mean 2.5 is restored by the factor 2.5 / 4.25.
        let mut z = vec![1.0, 2.0, 3.0, 4.0];
        apply_emphasis(&mut z, &[1.0, 2.0]);
        let k = 2.5f32 / 4.25;
        for (got, want) in z.iter().zip([1.0 * k, 2.0 * k, 6.0 * k, 8.0 * k]) {
            assert!((got - want).abs() < 1e-6, "{z:?}");
        }
        let mut plain = vec![1.0, 2.0, 3.0, 4.0];
        apply_emphasis(&mut plain, &[1.0, 1.0]);
        assert_eq!(plain, vec![1.0, 2.0, 3.0, 4.0]);
    }
}
