//! Prompt editing, alternation and `AND` at sampling time: [`StepTexts`] holds, for one job, the
//! distinct texts (emphasis fragments) its conditioning needs and which of them the negative prompt
//! and each `AND` part use at each UNet call, picked as A1111's sampler picks them.
//!
//! A1111 evaluates the schedule over the sampler's steps (twice as many for samplers that call the
//! UNet twice per step) and at its 0-based call `c` uses the first schedule entry that ends at a
//! step ≥ `c`: call 0 and call 1 both use the step-1 text, call `c ≥ 1` the step-`c` text.

use super::error::PipelineError;
use super::keys::Fusion;
use super::resident::Net;
use super::text::{Conditioning, TextConditioner};
use crate::prompt::{Fragment, Prompt, Segment};
use std::sync::Arc;

/// Runs of UNet calls with one text: `(last schedule step, index into the texts)`.
type Runs = Vec<(usize, usize)>;

/// The texts of one job per UNet call.
#[derive(Debug, Clone)]
pub struct StepTexts {
    /// Every distinct text of the job; each is encoded once per text-encoder state.
    pub texts: Vec<Vec<Fragment>>,
    negative: Runs,
    /// Per `AND` part (one without `AND`): its weight and its runs.
    parts: Vec<(f32, Runs)>,
    /// The unconditional rows are all zeros (an empty negative prompt where the model asks for
    /// it, SDXL's `force_zeros_for_empty_prompt`); its text is then never encoded.
    pub zero_negative: bool,
}

/// One image's conditioning at one UNet call.
pub struct StepCond {
    /// The unconditional row; `None` when it is all zeros.
    uncond: Option<Arc<Conditioning>>,
    /// Each `AND` part's weight and conditioning.
    pub parts: Vec<(f32, Arc<Conditioning>)>,
}

impl StepTexts {
    /// The texts of the prompt `pos` (written as `pos_src`) and the negative prompt `neg` (parsed
    /// with [`crate::prompt::parse_negative`]) over a schedule of `steps` steps.
    pub fn new(
        pos: (&Prompt, &str),
        neg: (&Prompt, &str),
        steps: usize,
    ) -> Result<StepTexts, PipelineError> {
        let mut texts = StepTexts {
            texts: Vec::new(),
            negative: Vec::new(),
            parts: Vec::new(),
            zero_negative: false,
        };
        let steps = steps.max(1);
        for ((prompt, src), what) in [(pos, ""), (neg, "negative prompt: ")] {
            let parts: Vec<(f32, Vec<Segment>)> = match &prompt.editing {
                None => vec![(1.0, Vec::new())],
                Some(e) => e
                    .schedule(steps)
                    .into_iter()
                    .map(|(w, s)| (w as f32, s))
                    .collect(),
            };
            for (weight, segments) in parts {
                let runs = if segments.is_empty() {
                    vec![(steps, texts.index_of(prompt.fragments.clone()))]
                } else {
                    let mut runs = Vec::with_capacity(segments.len());
                    for s in &segments {
                        let f = s.fragments(src).map_err(|e| {
                            PipelineError::Prompt(format!("{what}{}", e.render(src)))
                        })?;
                        runs.push((s.until_step, texts.index_of(f)));
                    }
                    runs
                };
                if what.is_empty() {
                    texts.parts.push((weight, runs));
                } else {
                    texts.negative = runs;
                }
            }
        }
        Ok(texts)
    }

    fn index_of(&mut self, f: Vec<Fragment>) -> usize {
        match self.texts.iter().position(|t| *t == f) {
            Some(i) => i,
            None => {
                self.texts.push(f);
                self.texts.len() - 1
            }
        }
    }

    /// How many `AND` parts (conditioned UNet rows per image).
    pub fn parts(&self) -> usize {
        self.parts.len()
    }

    /// At 0-based UNet call `call`: the negative prompt's text and each part's weight and text
    /// (indices into [`Self::texts`]).
    pub fn at(&self, call: usize) -> (usize, Vec<(f32, usize)>) {
        let parts = self
            .parts
            .iter()
            .map(|(w, runs)| (*w, pick(runs, call)))
            .collect();
        (pick(&self.negative, call), parts)
    }
}

impl StepTexts {
    /// The conditioning at UNet call `call`, each text from `text`'s cache for the text encoders'
    /// state `te` (encoded on `nets` the first time).
    pub fn conds(
        &self,
        text: &mut TextConditioner,
        nets: &mut [Net],
        te: &Fusion,
        call: usize,
    ) -> Result<StepCond, PipelineError> {
        let (neg, parts) = self.at(call);
        let mut out = StepCond {
            uncond: None,
            parts: Vec::with_capacity(parts.len()),
        };
        for (w, t) in parts {
            out.parts.push((w, text.cond(nets, te, &self.texts[t])?));
        }
        if !self.zero_negative {
            out.uncond = Some(text.cond(nets, te, &self.texts[neg])?);
        }
        Ok(out)
    }
}

impl StepCond {
    /// Whether row `row` (0 the unconditional, then the parts) has fewer than `chunks` chunks and
    /// needs the empty prompt's encoding to pad it.
    pub fn needs_padding(&self, row: usize, chunks: usize) -> bool {
        self.row(row).is_some_and(|c| c.chunks.len() < chunks)
    }

    fn row(&self, row: usize) -> Option<&Conditioning> {
        match row {
            0 => self.uncond.as_deref(),
            r => self.parts.get(r - 1).map(|p| &*p.1),
        }
    }

    /// Appends row `row`'s context, padded to `chunks` chunks with `empty` (the empty prompt's
    /// chunk, as A1111 pads cond and uncond to one length), and its pooled embedding if any.
    pub fn push_row(
        &self,
        row: usize,
        chunks: usize,
        empty: &[f32],
        context: &mut Vec<f32>,
        embeds: &mut Option<Vec<f32>>,
    ) {
        let first = &self.parts[0].1;
        let Some(c) = self.row(row) else {
            let width = first.chunks.first().map_or(0, Vec::len);
            context.resize(context.len() + chunks * width, 0.0);
            if let Some(p) = &first.pooled {
                let e = embeds.get_or_insert_with(Vec::new);
                e.resize(e.len() + p.len(), 0.0);
            }
            return;
        };
        for ch in &c.chunks {
            context.extend_from_slice(ch);
        }
        for _ in c.chunks.len()..chunks {
            context.extend_from_slice(empty);
        }
        if let Some(p) = &c.pooled {
            embeds.get_or_insert_with(Vec::new).extend_from_slice(p);
        }
    }
}

/// A1111's lookup: the first run that ends at a step ≥ `call`; past the end, the last run.
fn pick(runs: &Runs, call: usize) -> usize {
    runs.iter()
        .find(|(until, _)| call <= *until)
        .or(runs.last())
        .map_or(0, |r| r.1)
}

/// How many schedule steps a run of `steps` steps with `calls` UNet calls has: A1111 doubles the
/// steps for samplers that evaluate the UNet twice per step (Heun, DPM2).
pub fn schedule_steps(steps: usize, calls: usize) -> usize {
    if calls > steps {
        2 * steps
    } else {
        steps
    }
}

/// Classifier-free guidance over composable parts (A1111's `combine_denoised`): the unconditional
/// prediction plus, for each part, `weight × cfg` times its difference from the unconditional.
/// One part of weight 1 is the usual `u + cfg (c − u)`.
pub fn guide(uncond: &[f32], parts: &[(f32, &[f32])], cfg: f32) -> Vec<f32> {
    let mut out = uncond.to_vec();
    for &(weight, cond) in parts {
        let scale = weight * cfg;
        for ((o, &u), &c) in out.iter_mut().zip(uncond).zip(cond) {
            *o += (c - u) * scale;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::{parse, parse_negative};

    fn texts(pos: &str, neg: &str, steps: usize) -> StepTexts {
        StepTexts::new(
            (&parse(pos).unwrap(), pos),
            (&parse_negative(neg).unwrap(), neg),
            steps,
        )
        .unwrap()
    }

    fn plain(f: &[Fragment]) -> String {
        f.iter()
            .map(|f| match f {
                Fragment::Text { text, .. } => text.clone(),
                Fragment::Break => " BREAK ".into(),
            })
            .collect()
    }

    /// Per call: the negative text and each part's text.
    fn per_call(t: &StepTexts, calls: usize) -> Vec<(String, Vec<String>)> {
        (0..calls)
            .map(|c| {
                let (n, parts) = t.at(c);
                let parts = parts.iter().map(|p| plain(&t.texts[p.1])).collect();
                (plain(&t.texts[n]), parts)
            })
            .collect()
    }

    fn first_part(t: &StepTexts, calls: usize) -> Vec<String> {
        per_call(t, calls)
            .into_iter()
            .map(|c| c.1[0].clone())
            .collect()
    }

    #[test]
    fn calls_pick_texts_as_a1111s_sampler_does() {
        // Schedule over 4 steps: cat until step 2, then dog; call 0..=2 show cat, call 3 dog.
        let t = texts("a [cat:dog:0.5]", "", 4);
        let got = first_part(&t, 4);
        assert_eq!(got, ["a cat", "a cat", "a cat", "a dog"]);
        // Alternation: step 1 a, step 2 b, ...; call 0 and call 1 both use step 1.
        let t = texts("[x|y]", "", 4);
        let got = first_part(&t, 4);
        assert_eq!(got, ["x", "x", "y", "x"]);
        assert_eq!(t.texts.len(), 3, "x, y and the empty negative, each once");
    }

    #[test]
    fn and_parts_keep_their_weights_and_the_negative_is_not_split() {
        let t = texts("a cat :1.5 AND [red:blue:2] sky :-0.5", "ugly AND bad", 3);
        assert_eq!(t.parts(), 2);
        let calls = per_call(&t, 3);
        assert_eq!(calls[0].0, "ugly AND bad");
        assert_eq!(calls[0].1, ["a cat", "red sky"]);
        assert_eq!(calls[2].1, ["a cat", "red sky"]);
        let (_, w) = t.at(0);
        assert_eq!((w[0].0, w[1].0), (1.5, -0.5));
        let t3 = texts("[red:blue:2] sky", "", 4);
        assert_eq!(per_call(&t3, 4)[3].1, ["blue sky"]);
    }

    #[test]
    fn the_negative_prompt_follows_its_own_edits() {
        let t = texts("a cat", "[blurry:sharp:1]", 3);
        let negs: Vec<String> = per_call(&t, 3).into_iter().map(|c| c.0).collect();
        assert_eq!(negs, ["blurry", "blurry", "sharp"]);
    }

    #[test]
    fn second_order_samplers_double_the_schedule() {
        assert_eq!(schedule_steps(10, 10), 10);
        assert_eq!(schedule_steps(10, 19), 20);
    }

    #[test]
    fn guidance_weighs_each_part() {
        let u = [1.0, 2.0];
        assert_eq!(guide(&u, &[(1.0, &[3.0, 2.0])], 2.0), [5.0, 2.0]);
        // u + cfg (0.5 (c1 − u) + 2 (c2 − u)) = 1 + 2 (0.5·2 + 2·(−1)) = −1
        assert_eq!(
            guide(&u, &[(0.5, &[3.0, 2.0]), (2.0, &[0.0, 2.0])], 2.0)[0],
            -1.0
        );
    }
}
