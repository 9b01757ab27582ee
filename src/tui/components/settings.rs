//! Generation settings (sampler, steps, CFG, size, seed, batch, LoRA method, trigger words, the
//! img2img picture with its denoise and resize mode, the inpainting mask, blur, area, padding,
//! masked content, outpainting, the noise schedule and the hires fix) as a list of fields changed
//! with Left/Right/Enter; the values a submitted job is built from ([`Settings::init_image`],
//! [`Settings::hires_fix`]).

use crate::config::Config;
use crate::hires::{pin_model, HiresFix, LatentMode, LANCZOS};
use crate::init_image::{
    FileRef, InitImage, InpaintArea, MaskedContent, Outpaint, ResizeMode, StepCount,
};
use crate::job::{parse_sampler, Job, Sampler, Schedule, SdeNoise, SigmaStyle};
use crate::live::LoraMethod;
use crate::tui::theme::Theme;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Widget};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedMode {
    Random,
    Fixed,
    /// The seed of the last image.
    Reuse,
}

/// Which sides the outpaint setting grows the canvas on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OutpaintSides {
    #[default]
    All,
    LeftRight,
    UpDown,
    Left,
    Right,
    Up,
    Down,
}

impl OutpaintSides {
    const ALL: [OutpaintSides; 7] = [
        OutpaintSides::All,
        OutpaintSides::LeftRight,
        OutpaintSides::UpDown,
        OutpaintSides::Left,
        OutpaintSides::Right,
        OutpaintSides::Up,
        OutpaintSides::Down,
    ];

    pub fn label(self) -> &'static str {
        match self {
            OutpaintSides::All => "all four",
            OutpaintSides::LeftRight => "left and right",
            OutpaintSides::UpDown => "up and down",
            OutpaintSides::Left => "left",
            OutpaintSides::Right => "right",
            OutpaintSides::Up => "up",
            OutpaintSides::Down => "down",
        }
    }

    /// `px` on these sides, as `--outpaint L,R,U,D` gives it.
    pub fn outpaint(self, px: u32) -> Outpaint {
        use OutpaintSides::*;
        let on = |sides: &[OutpaintSides]| if sides.contains(&self) { px } else { 0 };
        Outpaint {
            left: on(&[All, LeftRight, Left]),
            right: on(&[All, LeftRight, Right]),
            up: on(&[All, UpDown, Up]),
            down: on(&[All, UpDown, Down]),
        }
    }
}

/// How the hires fix upscales: a name `--hires-upscaler` takes (A1111's latent modes, Lanczos), or
/// an ONNX image upscaler given to the workstation with `--upscaler FILE.onnx`.
#[derive(Debug, Clone, PartialEq)]
pub enum HiresUpscaler {
    Named(&'static str),
    Model(PathBuf),
}

impl HiresUpscaler {
    /// As the Settings list shows it.
    pub fn label(&self) -> String {
        match self {
            HiresUpscaler::Named(n) => (*n).to_string(),
            HiresUpscaler::Model(p) => {
                let name = p.file_name().map_or_else(
                    || p.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                );
                format!("{name} (model)")
            }
        }
    }
}

/// The hires fix's scale field: A1111's slider range, in steps a key press can reach 1.5 and 2 by.
const HIRES_SCALE: (f64, f64, f64) = (1.0, 4.0, 0.25);

/// Largest "only masked" padding and outpaint the fields step to, in pixels.
const MAX_PADDING: u32 = 1024;
const MAX_OUTPAINT: u32 = 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub sampler: Sampler,
    /// From `generation.schedule` (or the sampler name's suffix), or an image sent back; not a
    /// field of the list yet.
    pub schedule: Schedule,
    /// From `generation.sde_noise`, or an image sent back.
    pub sde_noise: SdeNoise,
    /// Zero terminal SNR (`generation.zero_snr`, `--zero-snr`), or an image sent back.
    pub zero_snr: bool,
    /// From `generation.sigmas`, or an image sent back.
    pub sigmas: SigmaStyle,
    pub steps: u32,
    pub cfg: f32,
    pub width: u32,
    pub height: u32,
    pub seed_mode: SeedMode,
    pub seed: u64,
    pub batch: u32,
    pub lora_method: LoraMethod,
    pub trigger_words: bool,
    pub lora_folders: Vec<PathBuf>,
    /// The picture jobs start from (sent from the gallery), with its caption; `None`: text-to-image.
    pub init: Option<(FileRef, String)>,
    pub denoise: f64,
    pub resize_mode: ResizeMode,
    /// The inpainting mask drawn over the init image; dropped with it.
    pub mask: Option<FileRef>,
    pub mask_blur: u32,
    /// The rest apply when a job inpaints (a mask, or outpainting), as their CLI flags.
    pub inpaint_area: InpaintArea,
    /// Pixels around the mask's box with [`InpaintArea::Masked`].
    pub inpaint_padding: u32,
    pub masked_content: MaskedContent,
    /// Pixels the canvas grows by on `outpaint_sides`; 0: no outpainting.
    pub outpaint: u32,
    pub outpaint_sides: OutpaintSides,
    /// A1111's hires fix, as `--hires-scale`, `--hires-denoise`, `--hires-steps` and
    /// `--hires-upscaler`/`--upscaler` build it; off: none.
    pub hires: bool,
    pub hires_scale: f64,
    pub hires_denoise: f64,
    /// 0 = the job's steps (A1111's meaning).
    pub hires_steps: u32,
    pub hires_upscaler: HiresUpscaler,
    /// The ONNX upscalers the upscaler field offers after the built-in ones (`--upscaler`).
    pub upscaler_models: Vec<PathBuf>,
    pub selected: usize,
}

const FIELDS: [&str; 27] = [
    "sampler",
    "steps",
    "cfg",
    "width",
    "height",
    "seed mode",
    "seed",
    "batch",
    "LoRA method",
    "trigger words",
    "LoRA folders",
    "init image",
    "denoise",
    "resize mode",
    "mask",
    "mask blur",
    "inpaint area",
    "masked padding",
    "masked content",
    "outpaint",
    "outpaint sides",
    "noise schedule",
    "hires fix",
    "hires scale",
    "hires denoise",
    "hires steps",
    "hires upscaler",
];

impl Settings {
    pub fn from_config(c: &Config) -> Settings {
        let g = &c.generation;
        let (sampler, suffix) = parse_sampler(&g.sampler).unwrap_or((Sampler::EulerA, None));
        Settings {
            sampler,
            schedule: suffix.unwrap_or_else(|| g.schedule.parse().unwrap_or_default()),
            sde_noise: g.sde_noise,
            zero_snr: g.zero_snr,
            sigmas: g.sigmas,
            // 0 = the family's; the workstation fills it in, a bare config means SD 1.x's.
            steps: match g.steps {
                0 => crate::family::Family::Sd1.facts().default_steps,
                n => n,
            },
            cfg: g.cfg,
            width: g.width,
            height: g.height,
            seed_mode: if g.seed < 0 {
                SeedMode::Random
            } else {
                SeedMode::Fixed
            },
            seed: g.seed.max(0) as u64,
            batch: g.batch,
            lora_method: g.lora_method,
            trigger_words: g.trigger_words,
            lora_folders: c.lora_folders.clone(),
            init: None,
            denoise: c.img2img.denoise,
            resize_mode: ResizeMode::default(),
            mask: None,
            mask_blur: c.img2img.mask_blur,
            inpaint_area: c.img2img.inpaint_area,
            inpaint_padding: c.img2img.inpaint_padding,
            masked_content: c.img2img.masked_content,
            outpaint: 0,
            outpaint_sides: OutpaintSides::default(),
            // A1111's defaults, which the headless flags share.
            hires: false,
            hires_scale: 2.0,
            hires_denoise: 0.7,
            hires_steps: 0,
            hires_upscaler: HiresUpscaler::Named(LatentMode::Bilinear.name()),
            upscaler_models: Vec::new(),
            selected: 0,
        }
    }

    /// The upscalers the hires fix offers: A1111's latent modes, Lanczos, then the ONNX models.
    pub fn hires_upscalers(&self) -> Vec<HiresUpscaler> {
        LatentMode::ALL
            .iter()
            .map(|m| HiresUpscaler::Named(m.name()))
            .chain([HiresUpscaler::Named(LANCZOS)])
            .chain(
                self.upscaler_models
                    .iter()
                    .cloned()
                    .map(HiresUpscaler::Model),
            )
            .collect()
    }

    /// The hires fix of `job` (built from these settings) when it is on, made as
    /// `--hires-scale S --hires-denoise D --hires-steps N` with `--hires-upscaler NAME` or
    /// `--upscaler FILE.onnx` make it: the same constructor and checks, the model pinned by hash.
    pub fn hires_fix(&self, job: &Job) -> Result<Option<Box<HiresFix>>, String> {
        if !self.hires {
            return Ok(None);
        }
        if job.init.is_some() {
            return Err(
                "the hires fix is for text-to-image: turn \"hires fix\" off (F4) or drop \
                        the init image and set the width and height you want"
                    .into(),
            );
        }
        let s = |e: crate::hires::HiresError| e.to_string();
        // No --hires-upscaler with --upscaler: the name defaults to "Latent", which the
        // constructor turns into the model's file name.
        let (name, model) = match &self.hires_upscaler {
            HiresUpscaler::Named(n) => (*n, None),
            HiresUpscaler::Model(p) => {
                (LatentMode::Bilinear.name(), Some(pin_model(p).map_err(s)?))
            }
        };
        let fix = HiresFix::new(
            name,
            model,
            (job.width, job.height),
            Some(self.hires_scale),
            (None, None),
        )
        .and_then(|fix| {
            // The workstation has no --denoise-steps: diffusers' count, the flag's default.
            fix.with_pass(
                self.hires_steps,
                self.hires_denoise,
                StepCount::default(),
                job.steps,
            )
        })
        .map_err(s)?;
        Ok(Some(Box::new(fix)))
    }

    /// Takes the hires fix of a job sent back from the gallery (off when it has none). A size given
    /// in pixels instead of a factor comes back as the factor of its width.
    pub fn restore_hires(&mut self, job: &Job) {
        let Some(h) = &job.hires else {
            self.hires = false;
            return;
        };
        self.hires = true;
        self.hires_scale = h
            .scale
            .unwrap_or_else(|| f64::from(h.width) / f64::from(job.width.max(1)));
        self.hires_denoise = h.denoise;
        self.hires_steps = h.steps;
        self.hires_upscaler = match &h.model {
            Some(m) => {
                if !self.upscaler_models.contains(&m.path) {
                    self.upscaler_models.push(m.path.clone());
                }
                HiresUpscaler::Model(m.path.clone())
            }
            None if h.upscaler.eq_ignore_ascii_case(LANCZOS) => HiresUpscaler::Named(LANCZOS),
            None => HiresUpscaler::Named(
                LatentMode::from_name(&h.upscaler)
                    .unwrap_or(LatentMode::Bilinear)
                    .name(),
            ),
        };
    }

    /// Whether jobs inpaint: a mask is drawn, or the canvas grows.
    pub fn inpaints(&self) -> bool {
        self.init.is_some() && (self.mask.is_some() || self.outpaint > 0)
    }

    /// What a job starts from, built as `--init-image`, `--denoise`, `--resize-mode` and, when it
    /// inpaints, `--mask`, `--mask-blur`, `--inpaint-area`, `--inpaint-padding`, `--masked-content`
    /// and `--outpaint` build it; `None` for text-to-image.
    pub fn init_image(&self) -> Result<Option<InitImage>, String> {
        let Some((file, _)) = &self.init else {
            return Ok(None);
        };
        let mut init = InitImage::new(file.clone(), self.denoise);
        init.resize_mode = self.resize_mode;
        if self.inpaints() {
            init.mask = self.mask.clone();
            init.mask_blur = self.mask_blur;
            init.masked_content = self.masked_content;
            init.outpaint = self.outpaint_sides.outpaint(self.outpaint);
            let padding = (self.inpaint_area == InpaintArea::Masked)
                .then_some(i64::from(self.inpaint_padding));
            crate::init_image::set_area(&mut init, Some(self.inpaint_area), padding)?;
        }
        init.first_step(self.steps).map_err(|e| e.to_string())?;
        Ok(Some(init))
    }

    /// The name of the selected field, as the Settings view shows it.
    pub fn field_name(&self) -> &'static str {
        FIELDS[self.selected.min(FIELDS.len() - 1)]
    }

    pub fn select(&mut self, delta: isize) {
        self.selected =
            (self.selected as isize + delta).clamp(0, FIELDS.len() as isize - 1) as usize;
    }

    /// Changes the selected field one notch up (`dir` > 0) or down.
    pub fn adjust(&mut self, dir: i32) {
        let step = |v: u32, by: u32, lo: u32, hi: u32| -> u32 {
            let v = i64::from(v) + i64::from(dir) * i64::from(by);
            v.clamp(i64::from(lo), i64::from(hi)) as u32
        };
        match self.selected {
            0 => {
                let i = Sampler::ALL
                    .iter()
                    .position(|s| *s == self.sampler)
                    .unwrap_or(0) as i32;
                self.sampler =
                    Sampler::ALL[(i + dir).rem_euclid(Sampler::ALL.len() as i32) as usize];
            }
            1 => self.steps = step(self.steps, 1, 1, 1000),
            2 => self.cfg = ((self.cfg + 0.5 * dir as f32).clamp(0.0, 30.0) * 2.0).round() / 2.0,
            3 => self.width = step(self.width, 64, 64, 4096),
            4 => self.height = step(self.height, 64, 64, 4096),
            5 => {
                self.seed_mode = match (self.seed_mode, dir > 0) {
                    (SeedMode::Random, true) | (SeedMode::Reuse, false) => SeedMode::Fixed,
                    (SeedMode::Fixed, true) | (SeedMode::Random, false) => SeedMode::Reuse,
                    (SeedMode::Reuse, true) | (SeedMode::Fixed, false) => SeedMode::Random,
                }
            }
            6 => {
                self.seed = if dir > 0 {
                    self.seed.saturating_add(1)
                } else {
                    self.seed.saturating_sub(1)
                };
                self.seed_mode = SeedMode::Fixed;
            }
            7 => self.batch = step(self.batch, 1, 1, 64),
            8 => {
                const ALL: [LoraMethod; 3] =
                    [LoraMethod::Fuse, LoraMethod::Live, LoraMethod::Refuse];
                let i = ALL.iter().position(|m| *m == self.lora_method).unwrap_or(0) as i32;
                self.lora_method = ALL[(i + dir).rem_euclid(ALL.len() as i32) as usize];
            }
            9 => self.trigger_words = !self.trigger_words,
            // A picture comes from the gallery (`i`); here it can only be dropped.
            11 => {
                self.init = None;
                self.mask = None;
            }
            12 => {
                self.denoise =
                    ((self.denoise + 0.05 * f64::from(dir)).clamp(0.0, 1.0) * 20.0).round() / 20.0
            }
            13 => {
                const ALL: [ResizeMode; 3] = [ResizeMode::Just, ResizeMode::Crop, ResizeMode::Fill];
                let i = ALL.iter().position(|m| *m == self.resize_mode).unwrap_or(0) as i32;
                self.resize_mode = ALL[(i + dir).rem_euclid(ALL.len() as i32) as usize];
            }
            14 => self.mask = None,
            15 => self.mask_blur = step(self.mask_blur, 1, 0, 64),
            16 => {
                self.inpaint_area = match self.inpaint_area {
                    InpaintArea::Whole => InpaintArea::Masked,
                    InpaintArea::Masked => InpaintArea::Whole,
                }
            }
            17 => self.inpaint_padding = step(self.inpaint_padding, 4, 0, MAX_PADDING),
            18 => {
                const ALL: [MaskedContent; 4] = [
                    MaskedContent::Original,
                    MaskedContent::Fill,
                    MaskedContent::LatentNoise,
                    MaskedContent::LatentNothing,
                ];
                let i = ALL
                    .iter()
                    .position(|m| *m == self.masked_content)
                    .unwrap_or(0) as i32;
                self.masked_content = ALL[(i + dir).rem_euclid(ALL.len() as i32) as usize];
            }
            // In steps of 8: the VAE's factor, so a grown canvas stays a valid size.
            19 => self.outpaint = step(self.outpaint, 8, 0, MAX_OUTPAINT),
            20 => {
                let all = OutpaintSides::ALL;
                let i = all
                    .iter()
                    .position(|m| *m == self.outpaint_sides)
                    .unwrap_or(0) as i32;
                self.outpaint_sides = all[(i + dir).rem_euclid(all.len() as i32) as usize];
            }
            21 => self.zero_snr = !self.zero_snr,
            22 => self.hires = !self.hires,
            23 => {
                let (lo, hi, by) = HIRES_SCALE;
                let v = (self.hires_scale + by * f64::from(dir)).clamp(lo, hi);
                self.hires_scale = (v / by).round() * by;
            }
            24 => {
                self.hires_denoise =
                    ((self.hires_denoise + 0.05 * f64::from(dir)).clamp(0.0, 1.0) * 20.0).round()
                        / 20.0
            }
            25 => self.hires_steps = step(self.hires_steps, 1, 0, 1000),
            26 => {
                let all = self.hires_upscalers();
                let i = all
                    .iter()
                    .position(|u| *u == self.hires_upscaler)
                    .unwrap_or(0) as i32;
                self.hires_upscaler = all[(i + dir).rem_euclid(all.len() as i32) as usize].clone();
            }
            _ => {}
        }
    }

    /// The hires size of the current width and height, as the job would get it.
    fn hires_size(&self) -> Result<(u32, u32), String> {
        HiresFix::new(
            LatentMode::Bilinear.name(),
            None,
            (self.width, self.height),
            Some(self.hires_scale),
            (None, None),
        )
        .map(|f| (f.width, f.height))
        .map_err(|e| e.to_string())
    }

    fn value(&self, i: usize) -> String {
        match i {
            0 => self.sampler.name().into(),
            1 => self.steps.to_string(),
            2 => format!("{:.1}", self.cfg),
            3 => self.width.to_string(),
            4 => self.height.to_string(),
            5 => format!("{:?}", self.seed_mode).to_lowercase(),
            6 => self.seed.to_string(),
            7 => self.batch.to_string(),
            8 => format!("{:?}", self.lora_method).to_lowercase(),
            9 => if self.trigger_words {
                "insert with the tag"
            } else {
                "off"
            }
            .into(),
            11 => match &self.init {
                Some((_, caption)) => format!("{caption} (Enter drops it)"),
                None => "none (send one from the gallery with i)".into(),
            },
            12 => format!("{:.2}", self.denoise),
            13 => format!("{:?}", self.resize_mode).to_lowercase(),
            14 => match self.mask {
                Some(_) => "set: inpaint (Enter drops it)".into(),
                None => "none (m in the gallery draws or loads one)".into(),
            },
            15 => format!("{} px", self.mask_blur),
            16 => match self.inpaint_area {
                InpaintArea::Whole => "whole picture".into(),
                InpaintArea::Masked => "only masked".into(),
            },
            17 => match self.inpaint_area {
                InpaintArea::Masked => format!("{} px", self.inpaint_padding),
                InpaintArea::Whole => format!("{} px (with only masked)", self.inpaint_padding),
            },
            18 => self.masked_content.label().into(),
            19 => match self.outpaint {
                0 => "off".into(),
                px => format!("{px} px"),
            },
            20 => self.outpaint_sides.label().into(),
            // A1111's names for its "Noise schedule for sampling" setting.
            21 => if self.zero_snr {
                "Zero Terminal SNR (v-prediction models)"
            } else {
                "Default"
            }
            .into(),
            22 => match (self.hires, &self.init) {
                (false, _) => "off".into(),
                (true, Some(_)) => "on (text-to-image only: drop the init image)".into(),
                (true, None) => match self.hires_size() {
                    Ok((w, h)) => format!("on: {}×{} → {w}×{h}", self.width, self.height),
                    Err(e) => format!("on: {e}"),
                },
            },
            23 => match self.hires_size() {
                Ok((w, h)) => format!("{}× ({w}×{h})", self.hires_scale),
                Err(_) => format!("{}× (too large)", self.hires_scale),
            },
            24 => format!("{:.2}", self.hires_denoise),
            25 => match self.hires_steps {
                0 => format!("0 (= steps, {})", self.steps),
                n => n.to_string(),
            },
            26 => self.hires_upscaler.label(),
            _ => {
                if self.lora_folders.is_empty() {
                    "none (set lora_folders in config.toml)".into()
                } else {
                    self.lora_folders
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            }
        }
    }

    /// One line for the generate view, shortened to fit `width`.
    pub fn summary(&self, width: usize) -> String {
        let seed = match self.seed_mode {
            SeedMode::Random => "random".to_string(),
            SeedMode::Fixed => self.seed.to_string(),
            SeedMode::Reuse => "reuse".into(),
        };
        let img2img = match self.init {
            Some(_) if self.inpaints() => format!("inpaint {:.2} · ", self.denoise),
            Some(_) => format!("img2img {:.2} · ", self.denoise),
            None => String::new(),
        };
        // What changes the noise schedule is named in the full line only (the Settings show it).
        let noise: Vec<&str> = [
            self.zero_snr.then_some("zero SNR"),
            (self.sigmas == crate::job::SigmaStyle::A1111).then_some("A1111 σ"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let noise = if noise.is_empty() {
            String::new()
        } else {
            format!(" ({})", noise.join(", "))
        };
        let hires = if self.hires {
            format!(
                " · hires {}× {} {:.2}",
                self.hires_scale,
                self.hires_upscaler.label(),
                self.hires_denoise
            )
        } else {
            String::new()
        };
        let full = format!(
            "{img2img}{}{noise} · {} steps · cfg {:.1} · {}×{}{hires} · seed {} · batch {}",
            self.sampler, self.steps, self.cfg, self.width, self.height, seed, self.batch
        );
        if full.chars().count() <= width {
            return full;
        }
        let batch = if self.batch > 1 {
            format!(" ×{}", self.batch)
        } else {
            String::new()
        };
        // The img2img and hires markers stay in every shortened form: they change what a job does.
        let mut short = match self.init {
            Some(_) if self.inpaints() => format!("inpaint {:.2}, ", self.denoise),
            Some(_) => format!("img2img {:.2}, ", self.denoise),
            None => String::new(),
        };
        if self.hires {
            short.push_str(&format!("hires {}×, ", self.hires_scale));
        }
        let rest = format!(
            "{short}{} steps, cfg {}, {}×{}, seed {seed}{batch}",
            self.steps,
            crate::tui::lang::fmt_num(self.cfg),
            self.width,
            self.height
        );
        // Shorter and shorter, the seed whole for as long as possible; a cut says so with "…".
        let compact = format!("{}, {rest}", self.sampler);
        [compact, rest]
            .into_iter()
            .find(|s| s.chars().count() <= width)
            .unwrap_or_else(|| {
                let rest = format!(
                    "{short}{} steps, {}×{}, seed {seed}",
                    self.steps, self.width, self.height
                );
                if rest.chars().count() <= width {
                    return rest;
                }
                let mut cut: String = rest.chars().take(width.saturating_sub(1)).collect();
                cut.push('…');
                cut
            })
    }

    pub fn render(&self, area: Rect, buf: &mut Buffer, theme: &Theme) {
        let block = Block::default()
            .borders(Borders::ALL)
            .border_style(theme.get("ui.border.focused"))
            .title(Span::styled(" Settings ", theme.get("ui.title.focused")));
        let inner = block.inner(area);
        block.render(area, buf);
        // Scrolled so that the selected field stays in view in a short terminal.
        let rows = usize::from(inner.height.max(1));
        let skip = (self.selected + 1).saturating_sub(rows);
        let lines: Vec<Line> = FIELDS
            .iter()
            .enumerate()
            .skip(skip)
            .map(|(i, name)| {
                let l = Line::from(vec![
                    Span::styled(format!(" {name:<15}"), theme.get("ui.text.muted")),
                    Span::styled(self.value(i), theme.get("settings.value")),
                ]);
                if i == self.selected {
                    l.style(theme.get("ui.selection"))
                } else {
                    l
                }
            })
            .collect();
        Paragraph::new(lines).render(inner, buf);
    }
}
