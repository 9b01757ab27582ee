//! What the image tests against reference scripts share: [`Spec`], the settings a fixture's
//! reference JSON gives every image (with its cases), and [`planned`], the job a batch dry run
//! plans for one line.

use serde::Deserialize;
use std::path::Path;
use stipple::job::{Job, Sampler};

/// A reference JSON file: the settings of all its images, then one case per image.
#[derive(Deserialize)]
pub struct Spec<C> {
    /// Files whose cases each carry their own texts have none here.
    #[serde(default)]
    pub prompt: String,
    #[serde(default)]
    pub negative: String,
    pub seed: u64,
    pub cfg: f32,
    pub steps: u32,
    pub width: u32,
    pub height: u32,
    pub images: Vec<C>,
}

impl<C> Spec<C> {
    /// Reads `path` (a fixture's `reference/*.json`).
    pub fn read(path: &Path) -> Spec<C>
    where
        C: for<'de> Deserialize<'de>,
    {
        let text = std::fs::read_to_string(path).unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The job of one case: the spec's settings with the case's texts and sampler.
    pub fn job(&self, prompt: &str, negative: &str, sampler: &str) -> Job {
        Job {
            negative: negative.into(),
            sampler: sampler.parse::<Sampler>().unwrap(),
            steps: self.steps,
            cfg: self.cfg,
            width: self.width,
            height: self.height,
            ..crate::util::small_job(prompt, self.seed)
        }
    }
}

/// `batch --dry-run` of the one-line job file `template`: whether it succeeded, the line of the
/// job it planned, and everything it printed (for failure messages).
pub fn planned(template: &str, out: &Path) -> (bool, Option<serde_json::Value>, String) {
    let (ok, lines, stderr) = crate::util::dry_run(template, out);
    let planned = lines.iter().find(|l| l["status"] == "planned").cloned();
    (ok, planned, format!("{lines:?} {stderr}"))
}
