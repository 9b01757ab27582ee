//! A1111's "infotext": the prompt, a `Negative prompt:` line and a `Key: value, ...` line.
//!
//! [`format_infotext`] writes it for a job; [`parse_infotext`] reads one back (ours or another tool's),
//! honouring quoted values that contain commas.

use crate::job::Job;

/// Parsed infotext.
#[derive(Debug, Clone, PartialEq)]
pub struct Infotext {
    pub prompt: String,
    pub negative: String,
    /// `Key: value` pairs in order.
    pub params: Vec<(String, String)>,
}

impl Infotext {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InfotextError {
    #[error("infotext has no settings line (`Steps: ..., Seed: ...`)")]
    NoSettings,
}

fn quote(v: &str) -> String {
    if v.contains([',', ':', '"', '\n']) {
        serde_json::to_string(v).unwrap_or_else(|_| format!("{v:?}"))
    } else {
        v.to_string()
    }
}

/// What an image was made with besides the job: A1111's resource fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub model: String,
    /// A1111's short hash: the first 10 hex digits of the file's sha256.
    pub model_hash: Option<String>,
    pub vae: Option<String>,
    pub vae_hash: Option<String>,
    /// A1111's clip skip when above 1.
    pub clip_skip: Option<u32>,
    /// (tag name, addnet short hash) of the job's LoRAs: A1111's `Lora hashes`.
    pub lora_hashes: Vec<(String, String)>,
    /// (name, file sha256 prefix) of the job's textual-inversion embeddings: A1111's `TI hashes`.
    pub ti_hashes: Vec<(String, String)>,
    /// The model's scheduler config rescales to zero terminal SNR (`rescale_betas_zero_snr`), so
    /// every image has it whatever the job says.
    pub zero_snr: bool,
}

/// The infotext of image `seed` of `job` made with `res`.
pub fn format_infotext(job: &Job, seed: u64, res: &Resources) -> String {
    let mut out = job.prompt.clone();
    if !job.negative.is_empty() {
        out.push_str("\nNegative prompt: ");
        out.push_str(&job.negative);
    }
    let mut params = vec![
        ("Steps", job.steps.to_string()),
        ("Sampler", job.sampler.name().to_string()),
    ];
    // A1111 1.9+ writes the schedule type after the sampler; automatic is left out, as it does.
    if !job.schedule.is_automatic() {
        params.push(("Schedule type", job.schedule.name().to_string()));
    }
    // A1111 always gives these samplers its Brownian tree and writes nothing for it; stipple's
    // other noise is named so the picture can be made again (A1111 keeps unknown keys).
    if job.sampler.uses_brownian_noise() && !job.sde_noise.is_brownian() {
        params.push(("SDE noise", job.sde_noise.name().to_string()));
    }
    // A1111 writes nothing (its σ are its own); stipple's A1111 σ are named where they apply.
    if !job.sigmas.is_diffusers() && job.sampler.follows_a1111_sigmas() {
        params.push(("Sigmas", job.sigmas.names_a1111().to_string()));
    }
    params.extend([
        ("CFG scale", trim_float(job.cfg)),
        ("Seed", seed.to_string()),
        ("Size", format!("{}x{}", job.width, job.height)),
    ]);
    if let Some(h) = &res.model_hash {
        params.push(("Model hash", h.clone()));
    }
    params.push(("Model", quote(&res.model)));
    if let Some(h) = &res.vae_hash {
        params.push(("VAE hash", h.clone()));
    }
    if let Some(v) = &res.vae {
        params.push(("VAE", quote(v)));
    }
    if let Some(init) = &job.init {
        params.push(("Denoising strength", init.denoise.to_string()));
        if init.mask.is_some() || init.mask_blur > 0 {
            params.push(("Mask blur", init.mask_blur.to_string()));
        }
        // As A1111 writes them: the area and padding only for "Only masked".
        if init.inpaint_area == crate::init_image::InpaintArea::Masked {
            params.push(("Inpaint area", "Only masked".into()));
            params.push(("Masked area padding", init.inpaint_padding.to_string()));
        }
        if init.masked_content != crate::init_image::MaskedContent::Original {
            params.push(("Masked content", init.masked_content.label().into()));
        }
        let o = init.outpaint;
        if !o.is_empty() {
            params.push((
                "Outpaint",
                quote(&format!("{},{},{},{}", o.left, o.right, o.up, o.down)),
            ));
        }
    }
    if let Some(fix) = &job.hires {
        // As A1111's txt2img writes them: the factor or the size, steps only when set.
        params.push(("Denoising strength", fix.denoise.to_string()));
        match fix.scale {
            Some(s) => params.push(("Hires upscale", s.to_string())),
            None => params.push(("Hires resize", format!("{}x{}", fix.width, fix.height))),
        }
        if fix.steps > 0 {
            params.push(("Hires steps", fix.steps.to_string()));
        }
        params.push(("Hires upscaler", quote(&fix.upscaler)));
    }
    if let Some(c) = res.clip_skip.filter(|&c| c > 1) {
        params.push(("Clip skip", c.to_string()));
    }
    // A1111 1.8+'s field for its "Noise schedule for sampling" setting.
    if job.zero_snr || res.zero_snr {
        params.push(("Noise Schedule", "Zero Terminal SNR".into()));
    }
    for (key, hashes) in [
        ("Lora hashes", &res.lora_hashes),
        ("TI hashes", &res.ti_hashes),
    ] {
        if hashes.is_empty() {
            continue;
        }
        // A1111 drops `:` and `,` from the names, so the list parses back.
        let list: Vec<String> = hashes
            .iter()
            .map(|(n, h)| format!("{}: {h}", n.replace([':', ','], "")))
            .collect();
        // Always quoted, as A1111 writes it.
        params.push((
            key,
            serde_json::to_string(&list.join(", ")).unwrap_or_default(),
        ));
    }
    if job.batch > 1 {
        params.push(("Batch size", job.batch.to_string()));
    }
    params.push(("Version", format!("stipple {}", env!("CARGO_PKG_VERSION"))));
    out.push('\n');
    out.push_str(
        &params
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    out
}

fn trim_float(x: f32) -> String {
    let s = format!("{x}");
    s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
}

/// Reads an infotext. The last line that starts with `Steps:` holds the settings.
pub fn parse_infotext(text: &str) -> Result<Infotext, InfotextError> {
    let lines: Vec<&str> = text.lines().collect();
    let settings_at = lines
        .iter()
        .rposition(|l| l.trim_start().starts_with("Steps:"))
        .ok_or(InfotextError::NoSettings)?;
    let mut prompt = Vec::new();
    let mut negative = Vec::new();
    let mut in_negative = false;
    for line in &lines[..settings_at] {
        if let Some(rest) = line.strip_prefix("Negative prompt:") {
            in_negative = true;
            negative.push(rest.trim_start());
        } else if in_negative {
            negative.push(line);
        } else {
            prompt.push(*line);
        }
    }
    Ok(Infotext {
        prompt: prompt.join("\n"),
        negative: negative.join("\n"),
        params: split_params(lines[settings_at]),
    })
}

/// Splits `K: v, K: "quoted, value", ...`.
fn split_params(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        let Some(colon) = rest.find(':') else { break };
        let key = rest[..colon].trim().to_string();
        let after = rest[colon + 1..].trim_start();
        let (value, next) = if after.starts_with('"') {
            let mut end = None;
            let mut escaped = false;
            for (i, ch) in after.char_indices().skip(1) {
                match ch {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => {
                        end = Some(i);
                        break;
                    }
                    _ => escaped = false,
                }
            }
            match end {
                Some(e) => {
                    let raw = &after[..=e];
                    let v = serde_json::from_str::<String>(raw)
                        .unwrap_or_else(|_| raw[1..e].to_string());
                    (v, after[e + 1..].trim_start().trim_start_matches(','))
                }
                None => (after.to_string(), ""),
            }
        } else {
            match after.find(',') {
                Some(c) => (after[..c].trim().to_string(), &after[c + 1..]),
                None => (after.trim().to_string(), ""),
            }
        };
        out.push((key, value));
        rest = next.trim_start();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Sampler, Schedule};

    fn job() -> Job {
        Job {
            prompt: "a red fox, (snow:1.2)".into(),
            negative: "blurry".into(),
            sampler: Sampler::DpmPp2mKarras,
            schedule: Schedule::Automatic,
            sde_noise: Default::default(),
            zero_snr: false,
            sigmas: Default::default(),
            steps: 20,
            cfg: 7.5,
            width: 512,
            height: 768,
            seed: 5,
            batch: 1,
            init: None,
            hires: None,
        }
    }

    #[test]
    fn written_infotext_has_a1111_shape() {
        let t = format_infotext(
            &job(),
            6,
            &Resources {
                model: "tiny-sd15".into(),
                model_hash: Some("0123456789".into()),
                ..Resources::default()
            },
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "a red fox, (snow:1.2)");
        assert_eq!(lines[1], "Negative prompt: blurry");
        assert!(lines[2].starts_with(
            "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 6, Size: 512x768, Model hash: 0123456789, Model: tiny-sd15"
        ), "{}", lines[2]);
    }

    #[test]
    fn step_noise_of_an_sde_sampler_is_named_and_brownian_is_not() {
        use crate::job::SdeNoise;
        let sde = Job {
            sampler: Sampler::DpmPpSde,
            ..job()
        };
        let t = format_infotext(&sde, 6, &Resources::default());
        assert!(
            !t.contains("SDE noise"),
            "A1111 writes nothing for its tree: {t}"
        );
        let step = Job {
            sde_noise: SdeNoise::Step,
            sigmas: Default::default(),
            ..sde
        };
        let t = format_infotext(&step, 6, &Resources::default());
        assert_eq!(
            parse_infotext(&t).unwrap().get("SDE noise"),
            Some("step"),
            "{t}"
        );
        // Samplers without SDE noise do not mention it, whatever the job says.
        let t = format_infotext(
            &Job {
                sde_noise: SdeNoise::Step,
                sigmas: Default::default(),
                ..job()
            },
            6,
            &Resources::default(),
        );
        assert!(!t.contains("SDE noise"), "{t}");
    }

    #[test]
    fn zero_terminal_snr_is_written_as_a1111_names_it() {
        let t = format_infotext(&job(), 6, &Resources::default());
        assert!(!t.contains("Noise Schedule"), "{t}");
        let zsnr = Job {
            zero_snr: true,
            ..job()
        };
        let t = format_infotext(&zsnr, 6, &Resources::default());
        assert_eq!(
            parse_infotext(&t).unwrap().get("Noise Schedule"),
            Some("Zero Terminal SNR"),
            "{t}"
        );
        // From the model's scheduler config alone too.
        let model = Resources {
            zero_snr: true,
            ..Resources::default()
        };
        let t = format_infotext(&job(), 6, &model);
        assert!(t.contains("Noise Schedule: Zero Terminal SNR"), "{t}");
    }

    #[test]
    fn a_schedule_type_follows_the_sampler_as_a1111_writes_it() {
        let job = Job {
            sampler: Sampler::DpmPp2mSde,
            schedule: Schedule::AlignYourSteps,
            ..job()
        };
        let t = format_infotext(&job, 6, &Resources::default());
        assert!(
            t.contains("Sampler: DPM++ 2M SDE, Schedule type: Align Your Steps, CFG scale: 7.5"),
            "{t}"
        );
        let p = parse_infotext(&t).unwrap();
        assert_eq!(p.get("Schedule type"), Some("Align Your Steps"));
    }

    #[test]
    fn parses_an_a1111_infotext_with_quoted_values() {
        let text = "masterpiece, a cat\nsecond line\nNegative prompt: ugly, bad\nSteps: 30, Sampler: Euler a, CFG scale: 7, Seed: 123, Size: 512x512, Lora hashes: \"a: 1234, b: 5678\", Version: v1.10.1";
        let p = parse_infotext(text).unwrap();
        assert_eq!(p.prompt, "masterpiece, a cat\nsecond line");
        assert_eq!(p.negative, "ugly, bad");
        assert_eq!(p.get("Sampler"), Some("Euler a"));
        assert_eq!(p.get("Seed"), Some("123"));
        assert_eq!(p.get("Lora hashes"), Some("a: 1234, b: 5678"));
        assert_eq!(p.get("Version"), Some("v1.10.1"));
    }

    #[test]
    fn our_infotext_round_trips() {
        let t = format_infotext(
            &job(),
            6,
            &Resources {
                model: "my, model".into(),
                ..Resources::default()
            },
        );
        let p = parse_infotext(&t).unwrap();
        assert_eq!(p.prompt, job().prompt);
        assert_eq!(p.negative, "blurry");
        assert_eq!(p.get("Model"), Some("my, model"));
        assert_eq!(p.get("Size"), Some("512x768"));
        assert_eq!(p.get("CFG scale"), Some("7.5"));
    }

    #[test]
    fn text_without_settings_is_an_error() {
        assert_eq!(
            parse_infotext("just a prompt"),
            Err(InfotextError::NoSettings)
        );
    }
}
