//! Job files: JSON lines, one job (or one sweep template) per line, read with line numbers so every
//! problem is reported as `FILE:LINE: reason` and the other lines still run.
//!
//! [`read_source`] loads a file or stdin; [`entries`] turns its text into [`Entry`]s (sweeps
//! expanded); [`JobSpec::from_fields`] checks an entry's fields. Blank lines and `#` lines are skipped.

use super::sweep::{self, Axis, Expanded};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum JobfileError {
    #[error("cannot read the job file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where an entry came from, for messages: `jobs.jsonl:6` or `jobs.jsonl:6 (sweep item 3)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub source: String,
    /// 1-based line number.
    pub line: usize,
    /// Position in the line's sweep (0 without one).
    pub item: usize,
    /// Whether the line is a sweep (then `item` is worth showing).
    pub swept: bool,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.source, self.line)?;
        if self.swept {
            write!(f, " (sweep item {})", self.item)?;
        }
        Ok(())
    }
}

/// One job of the file after sweep expansion, or the reason its line gives none.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub origin: Origin,
    pub body: Result<Expanded, String>,
}

/// The text of `path`, or of stdin for `-`.
pub fn read_source(path: &Path) -> Result<Vec<u8>, JobfileError> {
    let err = |source| JobfileError::Read {
        path: path.to_path_buf(),
        source,
    };
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).map_err(err)?;
        Ok(buf)
    } else {
        std::fs::read(path).map_err(err)
    }
}

/// Every job of `text`, in file order. `axes` (from `--sweep`) apply to every line, after the
/// line's own `sweep` object.
pub fn entries(source: &str, text: &[u8], axes: &[Axis]) -> Vec<Entry> {
    let mut out = Vec::new();
    for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
        let origin = Origin {
            source: source.to_string(),
            line: i + 1,
            item: 0,
            swept: false,
        };
        let line = match std::str::from_utf8(raw) {
            Ok(s) => s.trim(),
            Err(e) => {
                out.push(Entry {
                    origin,
                    body: Err(format!("not UTF-8 text (byte {})", e.valid_up_to())),
                });
                continue;
            }
        };
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match expand_line(line, axes) {
            Ok(jobs) => {
                let swept = jobs.len() > 1 || jobs.first().is_some_and(|j| !j.vars.is_empty());
                out.extend(jobs.into_iter().enumerate().map(|(item, e)| Entry {
                    origin: Origin {
                        item,
                        swept,
                        ..origin.clone()
                    },
                    body: Ok(e),
                }));
            }
            Err(reason) => out.push(Entry {
                origin,
                body: Err(reason),
            }),
        }
    }
    out
}

fn expand_line(line: &str, axes: &[Axis]) -> Result<Vec<Expanded>, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(mut fields) = value else {
        return Err("a job line must be a JSON object ({\"prompt\": ...})".into());
    };
    let mut all = Vec::new();
    match fields.remove("sweep") {
        None => {}
        Some(Value::Object(m)) => {
            for (name, v) in &m {
                all.push(Axis::from_json(name, v).map_err(|e| e.to_string())?);
            }
        }
        Some(_) => return Err("`sweep` must be an object: {\"seed\": \"1..8\", ...}".into()),
    }
    all.extend(axes.iter().cloned());
    sweep::expand(&fields, &all).map_err(|e| e.to_string())
}

/// The fields of one job line, checked; unknown fields are errors (a typo must not be ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub prompt: String,
    #[serde(default)]
    pub negative: String,
    /// A1111 name or slug; default "Euler a", as `generate`.
    pub sampler: Option<String>,
    /// Schedule type (`karras`, `ays`, ...); default `generation.schedule`, as `--schedule`.
    pub schedule: Option<String>,
    /// `brownian` or `step`; default `generation.sde_noise`, as `--sde-noise`.
    #[serde(default)]
    pub sde_noise: Option<String>,
    /// Zero terminal SNR; default `generation.zero_snr`, as `--zero-snr`.
    #[serde(default)]
    pub zero_snr: Option<bool>,
    /// `diffusers` or `a1111`; default `generation.sigmas`, as `--sigmas`.
    #[serde(default)]
    pub sigmas: Option<String>,
    pub steps: Option<u32>,
    pub cfg: Option<f32>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Omitted: derived from the job, so reruns find it again. Negative values are refused.
    pub seed: Option<i64>,
    pub batch: Option<u32>,
    /// Model folder (default: `--model`).
    pub model: Option<PathBuf>,
    /// Output name template, relative to `--out`.
    pub out: Option<String>,
    /// Image-to-image: the picture to start from (PNG, JPEG, WebP).
    pub init_image: Option<PathBuf>,
    /// With `init_image`: how much is redrawn, 0 to 1 (default 0.75).
    pub denoise: Option<f64>,
    /// With `init_image`: `just`, `crop` or `fill`.
    pub resize_mode: Option<crate::init_image::ResizeMode>,
    /// With `init_image`: inpainting mask, white repaints.
    pub mask: Option<PathBuf>,
    pub mask_blur: Option<u32>,
    /// With `init_image`: `whole` or `masked` (A1111's "Only masked").
    pub inpaint_area: Option<crate::init_image::InpaintArea>,
    /// With `inpaint_area: masked`: pixels around the mask's box (default 32).
    pub inpaint_padding: Option<i64>,
    /// With `init_image`: `original`, `fill`, `latent-noise` or `latent-nothing`.
    pub masked_content: Option<crate::init_image::MaskedContent>,
    /// With `init_image`: `"L,R,U,D"` pixels of canvas added and repainted.
    pub outpaint: Option<String>,
    /// A1111's hires fix: `{"scale": 2, "upscaler": "Latent", "steps": 0, "denoise": 0.7}`, or
    /// `width`/`height` for the size, `model` for an ONNX upscaler.
    pub hires: Option<HiresSpec>,
}

/// The `hires` object of a job line; every key may be left out (`{}` is a 2× latent hires fix).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HiresSpec {
    pub scale: Option<f64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub upscaler: Option<String>,
    pub model: Option<PathBuf>,
    pub steps: Option<u32>,
    pub denoise: Option<f64>,
}

impl JobSpec {
    /// The image-to-image settings of the line, the pictures read and pinned by hash (so the job's
    /// hash covers their contents).
    pub fn init(&self) -> Result<Option<crate::job::InitImage>, String> {
        let Some(path) = &self.init_image else {
            let given = self.denoise.is_some()
                || self.resize_mode.is_some()
                || self.mask.is_some()
                || self.mask_blur.is_some()
                || self.inpaint_area.is_some()
                || self.inpaint_padding.is_some()
                || self.masked_content.is_some()
                || self.outpaint.is_some();
            return if given {
                Err(
                    "`denoise`, `resize_mode`, `mask`, `mask_blur`, `inpaint_area`, \
                     `inpaint_padding`, `masked_content` and `outpaint` need `init_image`"
                        .into(),
                )
            } else {
                Ok(None)
            };
        };
        let mut init =
            crate::image::init::pin(path, self.denoise.unwrap_or(0.75), self.mask.as_deref())
                .map_err(|e| e.to_string())?;
        init.resize_mode = self.resize_mode.unwrap_or_default();
        init.mask_blur = self.mask_blur.unwrap_or(0);
        init.masked_content = self.masked_content.unwrap_or_default();
        init.outpaint = self
            .outpaint
            .as_deref()
            .map(str::parse)
            .transpose()?
            .unwrap_or_default();
        crate::init_image::set_area(&mut init, self.inpaint_area, self.inpaint_padding)?;
        Ok(Some(init))
    }
}

impl JobSpec {
    /// The hires fix of the line for a job of `width` × `height`, its model pinned by hash (so
    /// the job's hash covers its contents).
    pub fn hires(
        &self,
        width: u32,
        height: u32,
    ) -> Result<Option<Box<crate::job::HiresFix>>, String> {
        let Some(h) = &self.hires else {
            return Ok(None);
        };
        if self.init_image.is_some() {
            return Err("`hires` is for text-to-image jobs, not with `init_image`".into());
        }
        let model = h
            .model
            .as_deref()
            .map(crate::hires::pin_model)
            .transpose()
            .map_err(|e| e.to_string())?;
        let mut fix = crate::job::HiresFix::new(
            h.upscaler.as_deref().unwrap_or("Latent"),
            model,
            (width, height),
            h.scale,
            (h.width, h.height),
        )
        .map_err(|e| format!("hires: {e}"))?;
        fix.steps = h.steps.unwrap_or(0);
        fix.denoise = h.denoise.unwrap_or(0.7);
        fix.check().map_err(|e| format!("hires: {e}"))?;
        Ok(Some(Box::new(fix)))
    }
}

/// The fields a job line may have (`sweep` is taken out before the rest is read).
pub const FIELDS: &[&str] = &[
    "prompt",
    "negative",
    "sampler",
    "schedule",
    "sde_noise",
    "zero_snr",
    "sigmas",
    "steps",
    "cfg",
    "width",
    "height",
    "seed",
    "batch",
    "model",
    "out",
    "sweep",
    "init_image",
    "denoise",
    "resize_mode",
    "mask",
    "mask_blur",
    "inpaint_area",
    "inpaint_padding",
    "masked_content",
    "outpaint",
    "hires",
];

impl JobSpec {
    pub fn from_fields(fields: &Map<String, Value>) -> Result<JobSpec, String> {
        if let Some(bad) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            let hint = crate::prompt::did_you_mean(bad, FIELDS.iter().copied())
                .map(|h| format!("; {h}"))
                .unwrap_or_default();
            return Err(format!(
                "unknown field `{bad}`{hint} (a job line has: {})",
                FIELDS.join(", ")
            ));
        }
        serde_json::from_value(Value::Object(fields.clone())).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reasons(text: &str) -> Vec<(usize, String)> {
        entries("jobs.jsonl", text.as_bytes(), &[])
            .into_iter()
            .filter_map(|e| e.body.err().map(|r| (e.origin.line, r)))
            .collect()
    }

    #[test]
    fn bad_lines_are_reported_with_their_number_and_the_rest_survive() {
        let text = "{\"prompt\": \"a\"}\n\n# comment\n{\"prompt\": \"b\",}\n[1]\n{\"prompt\": \"c\", \"sweep\": 3}\n{\"prompt\": \"d\"}\n";
        let all = entries("jobs.jsonl", text.as_bytes(), &[]);
        let lines: Vec<usize> = all.iter().map(|e| e.origin.line).collect();
        assert_eq!(lines, vec![1, 4, 5, 6, 7]);
        let bad = reasons(text);
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert_eq!(bad[0].0, 4);
        assert!(bad[0].1.contains("not valid JSON"), "{}", bad[0].1);
        assert!(bad[1].1.contains("JSON object"), "{}", bad[1].1);
        assert!(
            bad[2].1.contains("`sweep` must be an object"),
            "{}",
            bad[2].1
        );
    }

    #[test]
    fn non_utf8_lines_are_errors_not_panics() {
        let text = b"{\"prompt\": \"a\"}\n{\"prompt\": \"\xff\"}\n";
        let all = entries("j", text, &[]);
        assert!(all[0].body.is_ok());
        assert!(all[1].body.as_ref().unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn a_line_sweep_and_command_line_axes_multiply() {
        let text = r#"{"prompt": "fox {s}", "sweep": {"seed": "1..2"}}"#;
        let axes = [Axis::parse("s=0,1").unwrap()];
        let all = entries("j", text.as_bytes(), &axes);
        assert_eq!(all.len(), 4);
        assert_eq!(all[3].origin.to_string(), "j:1 (sweep item 3)");
        let f = &all[3].body.as_ref().unwrap().fields;
        assert_eq!(
            (f["seed"].clone(), f["prompt"].clone()),
            (2.into(), "fox 1".into())
        );
    }

    #[test]
    fn field_errors_name_the_field() {
        let fields = |s: &str| serde_json::from_str::<Map<String, Value>>(s).unwrap();
        let e = JobSpec::from_fields(&fields(r#"{"prompt": "a", "stesp": 4}"#)).unwrap_err();
        assert!(e.contains("unknown field `stesp`"), "{e}");
        assert!(e.contains("did you mean `steps`?"), "{e}");
        assert!(
            e.contains("sweep"),
            "the expected fields include `sweep`: {e}"
        );
        let e = JobSpec::from_fields(&fields(r#"{"negative": "a"}"#)).unwrap_err();
        assert!(e.contains("missing field `prompt`"), "{e}");
        let e = JobSpec::from_fields(&fields(r#"{"prompt": "a", "steps": "four"}"#)).unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
        let ok = JobSpec::from_fields(&fields(r#"{"prompt": "a", "seed": 3}"#)).unwrap();
        assert_eq!(ok.seed, Some(3));
    }
}
