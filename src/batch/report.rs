//! What a batch tells its user: one JSON line per job on stdout (done, skipped, failed, invalid,
//! planned) and progress on stderr, a bar on a terminal or one line per job otherwise.
//!
//! [`Reporter`] owns both streams; [`ResultLine`] is the stdout record.

use super::manifest::ImageRecord;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::io::{IsTerminal, Write};

/// One job's outcome on stdout. Fields that do not apply are left out.
#[derive(Debug, Default, Serialize)]
pub struct ResultLine {
    pub status: &'static str,
    pub source: String,
    pub line: usize,
    pub item: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Dry runs: the resolved job, its model folder and sweep variables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<crate::job::Job>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vars: Option<serde_json::Map<String, serde_json::Value>>,
}

pub struct Reporter {
    bar: Option<ProgressBar>,
    stdout_broken: bool,
}

impl Reporter {
    /// `total` jobs will run; the bar is drawn only when stderr is a terminal.
    pub fn new(total: usize) -> Reporter {
        let bar = std::io::stderr().is_terminal().then(|| {
            let pb =
                ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
            pb.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} jobs {msg} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            pb.set_prefix("batch");
            pb
        });
        Reporter {
            bar,
            stdout_broken: false,
        }
    }

    /// For output before the run starts (or a dry run): notes and lines, no bar.
    pub fn without_bar() -> Reporter {
        Reporter {
            bar: None,
            stdout_broken: false,
        }
    }

    /// A machine-readable line. A closed stdout does not stop the batch: the manifest is the record.
    pub fn result(&mut self, line: &ResultLine) {
        if self.stdout_broken {
            return;
        }
        let Ok(text) = serde_json::to_string(line) else {
            return;
        };
        let write = || {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{text}").and_then(|()| out.flush())
        };
        let r = match &self.bar {
            Some(pb) => pb.suspend(write),
            None => write(),
        };
        if let Err(e) = r {
            self.stdout_broken = true;
            self.note(&format!(
                "stdout closed ({e}); results go on into the manifest only"
            ));
        }
    }

    /// A line for people, on stderr, above the bar.
    pub fn note(&self, text: &str) {
        match &self.bar {
            Some(pb) => pb.suspend(|| eprintln!("{text}")),
            None => eprintln!("{text}"),
        }
    }

    /// A job ended: advances the bar, or prints the note when there is no bar.
    pub fn job_ended(&self, note: &str) {
        match &self.bar {
            Some(pb) => pb.inc(1),
            None => eprintln!("{note}"),
        }
    }

    pub fn has_bar(&self) -> bool {
        self.bar.is_some()
    }

    pub fn step(&self, text: &str) {
        if let Some(pb) = &self.bar {
            pb.set_message(text.to_string());
        }
    }

    pub fn finish(&self) {
        if let Some(pb) = &self.bar {
            pb.finish_and_clear();
        }
    }
}
