//! `stipple prompt check TEXT [--json] [--steps N] [--lora-dir DIR]`: what the parser makes of a
//! prompt — the text per step (prompt editing, alternation, `AND` parts), its fragments, 75-token
//! chunks and token weights, the LoRA tags with their files and strengths per step — or its errors
//! with their places and hints. [`Report`] is the `--json` schema (README, "Checking a prompt").

use super::error::CliError;
use crate::pipeline::tokenizer::ClipTokenizer;
use crate::prompt::{
    chunk, parse_with_warnings, Catalog, ChunkConfig, Fragment, LoraDirs, LoraTag, Prompt,
    PromptError, PromptWarning, Strength,
};
use clap::{Args, Subcommand};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum PromptCommand {
    /// Show how a prompt parses: text per step, chunks and token weights, LoRA files and
    /// strengths per step; or its errors. Exit 0 valid, 1 invalid
    Check(CheckArgs),
}

#[derive(Args)]
pub struct CheckArgs {
    /// The prompt text
    pub text: String,
    /// Print the report as JSON (schema version 1, see the README)
    #[arg(long)]
    pub json: bool,
    /// Steps to evaluate schedules over (default: generation.steps of the config, else 20)
    #[arg(long, value_name = "N")]
    pub steps: Option<u32>,
    /// Folder to look `<lora:NAME>` up in (repeatable; then STIPPLE_LORA_DIRS and lora_folders)
    #[arg(long = "lora-dir", value_name = "DIR")]
    pub lora_dirs: Vec<PathBuf>,
}

/// The version of the `--json` schema; a change that breaks a reader bumps it.
pub const SCHEMA_VERSION: u32 = 1;

/// `prompt check --json`: everything the text view shows, in one object.
#[derive(Debug, Serialize)]
pub struct Report {
    pub version: u32,
    pub valid: bool,
    pub steps: u32,
    /// The `AND` parts (one for a prompt without `AND`), each with its text per step.
    pub parts: Vec<PartReport>,
    pub loras: Vec<LoraReport>,
    pub warnings: Vec<Diagnostic>,
    pub errors: Vec<Diagnostic>,
}

#[derive(Debug, Serialize)]
pub struct PartReport {
    /// The part's weight (`a cat :1.2 AND a dog`); 1 without one.
    pub weight: f64,
    /// Consecutive runs of steps with the same text; the last ends at `steps`.
    pub segments: Vec<SegmentReport>,
}

#[derive(Debug, Serialize)]
pub struct SegmentReport {
    /// The 1-based steps `from_step..=until_step` use this text.
    pub from_step: usize,
    pub until_step: usize,
    /// The text the emphasis parser reads at these steps (tags taken out).
    pub text: String,
    pub fragments: Vec<FragmentReport>,
    pub chunks: Vec<ChunkReport>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum FragmentReport {
    Text { text: String, weight: f64 },
    Break { r#break: bool },
}

#[derive(Debug, Serialize)]
pub struct ChunkReport {
    pub tokens: Vec<TokenReport>,
}

#[derive(Debug, Serialize)]
pub struct TokenReport {
    pub id: u32,
    /// The vocabulary entry (`cat</w>`).
    pub text: String,
    pub weight: f32,
}

#[derive(Debug, Serialize)]
pub struct LoraReport {
    pub name: String,
    /// Byte range of the tag in the prompt.
    pub span: [usize; 2],
    /// The file the name resolves to; null when it does not (see `errors`).
    pub file: Option<PathBuf>,
    /// `te`, `unet`, `in`, `mid`, `out`, in that order.
    pub strengths: Vec<StrengthReport>,
    pub dyn_rank: Option<u32>,
    pub lbw: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct StrengthReport {
    pub component: &'static str,
    /// As the prompt language writes it (`0.5`, `0.1@1,0.6@6`).
    pub written: String,
    /// The value at each step, 1 to `steps`.
    pub per_step: Vec<f32>,
}

#[derive(Debug, Serialize)]
pub struct Diagnostic {
    pub message: String,
    pub hint: Option<String>,
    /// Byte range in the prompt; null for an error about no place in it (an unreadable folder).
    pub span: Option<[usize; 2]>,
    /// What the text view prints: message, line, carets, hint.
    pub rendered: String,
}

impl Diagnostic {
    fn of_error(e: &PromptError, text: &str) -> Self {
        Diagnostic {
            message: e.message.clone(),
            hint: e.hint.clone(),
            span: Some([e.span.start, e.span.end]),
            rendered: e.render(text),
        }
    }

    fn of_warning(w: &PromptWarning, text: &str) -> Self {
        Diagnostic {
            message: w.message.clone(),
            hint: w.hint.clone(),
            span: Some([w.span.start, w.span.end]),
            rendered: w.render(text),
        }
    }
}

pub fn run(c: &PromptCommand) -> Result<(), CliError> {
    let PromptCommand::Check(a) = c;
    let config = super::resolve::config(&crate::config::Dirs::discover())?;
    let steps = match a.steps {
        Some(s) if !(1..=1000).contains(&s) => {
            return Err(CliError::Usage(format!(
                "--steps {s}: must be between 1 and 1000"
            )))
        }
        Some(s) => s,
        None if config.generation.steps > 0 => config.generation.steps,
        None => 20,
    };
    let dirs = super::resolve::lora_dirs(&a.lora_dirs, &config);
    let tokenizer = ClipTokenizer::bundled("<|endoftext|>").map_err(CliError::failed)?;
    let report = check(&a.text, steps, &dirs, &tokenizer);
    if a.json {
        let json = serde_json::to_string_pretty(&report).map_err(CliError::failed)?;
        super::emit(&format!("{json}\n"))?;
    } else if report.valid {
        super::emit(&text_view(&report))?;
    }
    if report.valid {
        for w in &report.warnings {
            eprint!("{}", w.rendered);
        }
        return Ok(());
    }
    if a.json {
        let n = report.errors.len();
        return Err(CliError::Failed(format!(
            "the prompt has {n} error{} (listed in the JSON)",
            if n == 1 { "" } else { "s" }
        )));
    }
    let shown: Vec<String> = report.errors.iter().map(|e| e.rendered.clone()).collect();
    Err(CliError::Failed(super::resolve::rendered(
        &shown.join("\n"),
    )))
}

/// The report for `text`: parsed, its tags looked up in `dirs`, every schedule over `steps` steps.
pub fn check(text: &str, steps: u32, dirs: &[PathBuf], tokenizer: &ClipTokenizer) -> Report {
    let mut report = Report {
        version: SCHEMA_VERSION,
        valid: false,
        steps,
        parts: Vec::new(),
        loras: Vec::new(),
        warnings: Vec::new(),
        errors: Vec::new(),
    };
    let (prompt, warnings) = match parse_with_warnings(text) {
        Ok(p) => p,
        Err(e) => {
            report.errors.push(Diagnostic::of_error(&e, text));
            return report;
        }
    };
    report.warnings = warnings
        .iter()
        .map(|w| Diagnostic::of_warning(w, text))
        .collect();
    let n = steps as usize;
    match parts(&prompt, text, n, tokenizer) {
        Ok(parts) => report.parts = parts,
        Err(e) => report.errors.push(Diagnostic::of_error(&e, text)),
    }
    let (loras, errors) = loras(&prompt, text, n, dirs);
    report.loras = loras;
    report.errors.extend(errors);
    report.valid = report.errors.is_empty();
    report
}

/// The prompt's text per step, as segments of equal text, with fragments and chunks.
fn parts(
    prompt: &Prompt,
    src: &str,
    steps: usize,
    tokenizer: &ClipTokenizer,
) -> Result<Vec<PartReport>, PromptError> {
    let vocab = tokenizer.id_to_text();
    let segment =
        |from_step: usize, until_step: usize, text: String, f: &[Fragment]| SegmentReport {
            from_step,
            until_step,
            text,
            fragments: fragments(f),
            chunks: chunks(f, tokenizer, &vocab),
        };
    let Some(editing) = &prompt.editing else {
        let only = segment(1, steps, prompt.plain_text(), &prompt.fragments);
        return Ok(vec![PartReport {
            weight: 1.0,
            segments: vec![only],
        }]);
    };
    editing
        .runs(steps)
        .into_iter()
        .map(|(weight, runs)| {
            let segments = runs
                .iter()
                .map(|r| {
                    let f = r.segment.fragments(src)?;
                    Ok(segment(r.from, r.until, r.segment.text(), &f))
                })
                .collect::<Result<_, PromptError>>()?;
            Ok(PartReport { weight, segments })
        })
        .collect()
}

fn fragments(fragments: &[Fragment]) -> Vec<FragmentReport> {
    fragments
        .iter()
        .map(|f| match f {
            Fragment::Text { text, weight } => FragmentReport::Text {
                text: text.clone(),
                weight: *weight,
            },
            Fragment::Break => FragmentReport::Break { r#break: true },
        })
        .collect()
}

/// The 75-token chunks as the bundled CLIP tokenizer makes them (SD 1.x, and SDXL's first
/// encoder); a prompt past the chunk limit shows none (the parser already bounds BREAKs).
fn chunks(
    fragments: &[Fragment],
    tokenizer: &ClipTokenizer,
    vocab: &HashMap<u32, String>,
) -> Vec<ChunkReport> {
    let made = chunk(fragments, |t| tokenizer.encode(t), &ChunkConfig::default());
    made.unwrap_or_default()
        .into_iter()
        .map(|c| ChunkReport {
            tokens: c
                .tokens
                .iter()
                .zip(&c.weights)
                .map(|(&id, &weight)| TokenReport {
                    id,
                    text: vocab.get(&id).cloned().unwrap_or_default(),
                    weight,
                })
                .collect(),
        })
        .collect()
}

/// Each tag with its file (or an error at its name) and its strengths per step.
fn loras(
    prompt: &Prompt,
    text: &str,
    steps: usize,
    dirs: &[PathBuf],
) -> (Vec<LoraReport>, Vec<Diagnostic>) {
    let mut errors = Vec::new();
    if prompt.loras.is_empty() {
        return (Vec::new(), errors);
    }
    let catalog = Catalog::scan(&LoraDirs::new(dirs.to_vec()));
    for e in &catalog.unreadable {
        let message = e.to_string();
        errors.push(Diagnostic {
            rendered: format!("error: {message}\n"),
            message,
            hint: Some(e.hint().to_string()),
            span: None,
        });
    }
    let reports = prompt
        .loras
        .iter()
        .map(|tag| {
            let file = match catalog.resolve(&tag.name) {
                Ok(f) => Some(f.path.clone()),
                Err(e) => {
                    let mut hint = e.hint();
                    if dirs.is_empty() {
                        hint = Some("no LoRA folder is configured: pass --lora-dir DIR".into());
                    }
                    let err = PromptError::new(tag.name_span.clone(), e.to_string());
                    errors.push(Diagnostic::of_error(&err.hint_opt(hint), text));
                    None
                }
            };
            LoraReport {
                name: tag.name.clone(),
                span: [tag.span.start, tag.span.end],
                file,
                strengths: strengths(tag, steps),
                dyn_rank: tag.dyn_,
                lbw: tag.lbw.as_ref().map(ToString::to_string),
            }
        })
        .collect();
    (reports, errors)
}

fn strengths(tag: &LoraTag, steps: usize) -> Vec<StrengthReport> {
    let components: [(&str, &Strength); 5] = [
        ("te", &tag.te),
        ("unet", &tag.unet),
        ("in", &tag.in_),
        ("mid", &tag.mid),
        ("out", &tag.out),
    ];
    components
        .into_iter()
        .map(|(component, s)| StrengthReport {
            component,
            written: s.to_string(),
            per_step: (0..steps).map(|i| s.at(i, steps)).collect(),
        })
        .collect()
}

/// The human view of a valid report.
pub fn text_view(r: &Report) -> String {
    let mut out = String::new();
    let many = r.parts.len() > 1;
    for (k, part) in r.parts.iter().enumerate() {
        if many {
            let _ = writeln!(out, "part {} (AND), weight {}:", k + 1, part.weight);
        }
        let pad = if many { "  " } else { "" };
        for s in &part.segments {
            if part.segments.len() > 1 {
                let _ = writeln!(
                    out,
                    "{pad}steps {}-{}: {:?}",
                    s.from_step, s.until_step, s.text
                );
            } else {
                let _ = writeln!(out, "{pad}text: {:?}", s.text);
            }
            for (n, c) in s.chunks.iter().enumerate() {
                let tokens: Vec<String> = c
                    .tokens
                    .iter()
                    .map(|t| {
                        let word = t.text.trim_end_matches("</w>");
                        if t.weight == 1.0 {
                            word.to_string()
                        } else {
                            format!("{word}×{}", t.weight)
                        }
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "{pad}  chunk {} ({} tokens): {}",
                    n + 1,
                    c.tokens.len(),
                    tokens.join(" ")
                );
            }
        }
    }
    for l in &r.loras {
        let file = l
            .file
            .as_ref()
            .map_or("(not found)".into(), |f| f.display().to_string());
        let _ = writeln!(out, "lora {}: {file}", l.name);
        for s in &l.strengths {
            let constant = s.per_step.iter().all(|v| *v == s.per_step[0]);
            if constant {
                let _ = writeln!(out, "  {:<4} {}", s.component, s.written);
            } else {
                let values: Vec<String> = s.per_step.iter().map(|v| format!("{v:.3}")).collect();
                let _ = writeln!(
                    out,
                    "  {:<4} {}  per step: {}",
                    s.component,
                    s.written,
                    values.join(" ")
                );
            }
        }
        if let Some(d) = l.dyn_rank {
            let _ = writeln!(out, "  dyn  {d}");
        }
        if let Some(b) = &l.lbw {
            let _ = writeln!(out, "  lbw  {b}");
        }
    }
    let _ = writeln!(out, "valid ({} steps)", r.steps);
    out
}
