//! The application state and its update function: `App::update(input) -> effects`. Inputs are
//! keys, pastes, engine events and ticks; effects (submit, cancel, quit, ...) are carried out by the
//! event loop. No terminal and no engine here, so every flow is testable with plain values.

use crate::config::Config;
use crate::job::{Event, Job, JobId, RgbImage};
use crate::lora::entry::Listing;
use crate::tui::components::gallery::{Gallery, GalleryItem};
use crate::tui::components::lora_browser::LoraBrowser;
use crate::tui::components::preview::Preview;
use crate::tui::components::prompt::{EmbeddingChoice, PromptEditor};
use crate::tui::components::queue::{JobState, Queue};
use crate::tui::components::schedule::{Edit, ScheduleEditor};
use crate::tui::components::settings::{SeedMode, Settings};
use crate::tui::graphics::Graphics;
use crate::tui::keymap::{Action, Context, Keymap};
use crate::tui::model_folders::ModelListing;
use crate::tui::overlays::confirm::Confirm;
use crate::tui::overlays::error::ErrorPopup;
use crate::tui::overlays::help::Help;
use crate::tui::overlays::mask::MaskEditor;
use crate::tui::overlays::models::ModelPicker;
use crate::tui::overlays::palette::Palette;
use crate::tui::overlays::path::{PathFor, PathPrompt};
use crate::tui::overlays::steps::PromptSteps;
use crate::tui::overlays::Overlay;
use crate::tui::theme::Theme;
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Generate,
    Loras,
    Schedule,
    Settings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    Prompt,
    Negative,
    Queue,
    Gallery,
}

/// Everything that can happen to the app.
#[derive(Debug, Clone)]
pub enum Input {
    Key(KeyEvent),
    Paste(String),
    Engine(Event),
    /// The engine accepted a job the app asked for.
    Submitted {
        id: JobId,
        job: Job,
    },
    Catalog(Listing),
    /// The embedding folders' files: the prompt editors complete their names.
    Embeddings(Vec<crate::embedding::listing::Listed>),
    /// A gallery picture written to the inputs folder after [`Effect::PinInit`]: jobs start from it.
    InitPinned {
        file: crate::init_image::FileRef,
        caption: String,
        image: RgbImage,
    },
    /// A drawn mask written after [`Effect::PinMask`] (or a loaded file, [`Effect::UseMask`]):
    /// the next jobs inpaint.
    MaskPinned {
        file: crate::init_image::FileRef,
    },
    /// A mask file read after [`Effect::LoadMask`], pinned by hash, or the reader's error.
    MaskRead {
        path: std::path::PathBuf,
        result: Result<(crate::init_image::FileRef, RgbImage), String>,
    },
    /// A picture file read after [`Effect::LoadInit`], pinned as `--init-image` pins it, or the
    /// reader's error.
    InitRead {
        path: std::path::PathBuf,
        result: Result<(crate::init_image::FileRef, RgbImage), String>,
    },
    /// The model folders, scanned after [`Effect::ScanModels`]: opens the model picker.
    Models(ModelListing),
    /// A LoRA's sidecar picture, loaded after [`Effect::LoadPreview`].
    LoraPreview {
        path: std::path::PathBuf,
        image: RgbImage,
    },
    Tick,
    Resize,
}

/// What the app asks the outside world to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Submit(Job),
    Cancel(JobId),
    Interrupt,
    Skip,
    Quit,
    Suspend,
    /// Clear and repaint everything.
    Redraw,
    RescanLoras,
    /// Load a picture file for the LoRA browser.
    LoadPreview(std::path::PathBuf),
    /// Persist a prompt to the history file.
    SaveHistory(String),
    /// Write a drawn mask into `dir` as a PNG and pin it (after the picture's [`Effect::PinInit`]).
    PinMask {
        image: RgbImage,
        dir: std::path::PathBuf,
    },
    /// Read a mask file for the mask editor, as `--mask` reads it.
    LoadMask(std::path::PathBuf),
    /// Read a picture file as `--init-image` reads it, to start the next jobs from it.
    LoadInit(std::path::PathBuf),
    /// Inpaint with a mask file as loaded (after the picture's [`Effect::PinInit`]).
    UseMask(crate::init_image::FileRef),
    /// Scan the model folders for the model picker.
    ScanModels,
    /// Write a picture into `dir` as a PNG and pin it by hash, to start jobs from it.
    PinInit {
        image: RgbImage,
        caption: String,
        dir: std::path::PathBuf,
    },
    /// Use this model from the next job on (the engine loads it then).
    SwitchModel(ModelChoice),
}

/// A model the user picked: where it is, and whether the `--vae` given at start still applies
/// (only while the family stays the same).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelChoice {
    pub path: std::path::PathBuf,
    pub keep_vae: bool,
}

/// The model jobs run on, as the header shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelInUse {
    pub name: String,
    pub path: std::path::PathBuf,
    pub family: Option<&'static str>,
    /// The family of the model the workstation started with (a `--vae` belongs to it).
    pub start_family: Option<&'static str>,
    /// Picked, not yet loaded: set until the engine starts a job on it.
    pub loading: bool,
}

/// A one-line message in the status bar until the next key.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub text: String,
    pub error: bool,
}

pub struct App {
    pub theme: Theme,
    pub keymap: Keymap,
    /// `None` when pictures are off.
    pub picker: Option<Graphics>,
    pub view: View,
    pub focus: Focus,
    pub prompt: PromptEditor,
    pub negative: PromptEditor,
    pub queue: Queue,
    pub gallery: Gallery,
    pub preview: Preview,
    pub loras: LoraBrowser,
    pub schedule: ScheduleEditor,
    pub settings: Settings,
    pub overlays: Vec<Overlay>,
    /// The preview's picture fills the screen.
    pub fullscreen: bool,
    pub status: Option<Status>,
    /// Counts ticks while something runs; drives the spinner.
    pub ticks: u64,
    /// Something visible changed since the last draw.
    pub dirty: bool,
    pub history_size: usize,
    /// Where a submitted job's LoRA method (the Settings toggle) reaches the engine.
    pub method_sink: Option<crate::tui::MethodSink>,
    /// The model in use; empty when the front end does not know it (tests).
    pub model: ModelInUse,
    /// Where pictures sent to img2img are written (`None`: sending is refused).
    pub inputs_dir: Option<std::path::PathBuf>,
    /// The widths adapters are checked against after a model switch (`None`: the start model's).
    pub model_widths: Option<crate::lora::family::ModelWidths>,
    /// The start model's widths, which embeddings are checked against before a switch.
    pub start_widths: Option<crate::lora::family::ModelWidths>,
    embeddings: Vec<crate::embedding::listing::Listed>,
    names: Vec<String>,
    rng: u64,
    last_seed: Option<u64>,
}

const STRENGTH_STEP: f32 = 0.05;

impl App {
    /// `seed` seeds the random job seeds, so tests are repeatable.
    pub fn new(
        config: &Config,
        theme: Theme,
        keymap: Keymap,
        picker: Option<Graphics>,
        seed: u64,
    ) -> App {
        App {
            theme,
            keymap,
            picker,
            view: View::Generate,
            focus: Focus::Prompt,
            prompt: PromptEditor::new("Prompt", ""),
            negative: PromptEditor::new("Negative", ""),
            queue: Queue::default(),
            gallery: Gallery::default(),
            preview: Preview::default(),
            loras: LoraBrowser::default(),
            schedule: ScheduleEditor::default(),
            settings: Settings::from_config(config),
            overlays: Vec::new(),
            fullscreen: false,
            status: None,
            ticks: 0,
            dirty: true,
            history_size: config.history_size,
            method_sink: None,
            model: ModelInUse::default(),
            model_widths: None,
            inputs_dir: None,
            start_widths: None,
            embeddings: Vec::new(),
            names: Vec::new(),
            rng: seed | 1,
            last_seed: None,
        }
    }

    /// The keymap context of what has focus.
    pub fn context(&self) -> Context {
        if self.fullscreen {
            return Context::Picture;
        }
        match self.view {
            View::Generate => match self.focus {
                Focus::Prompt | Focus::Negative => Context::Prompt,
                Focus::Queue => Context::Queue,
                Focus::Gallery => Context::Gallery,
            },
            View::Loras => Context::Loras,
            View::Schedule => Context::Schedule,
            View::Settings => Context::Settings,
        }
    }

    fn editor(&mut self) -> &mut PromptEditor {
        if self.focus == Focus::Negative {
            &mut self.negative
        } else {
            &mut self.prompt
        }
    }

    fn info(&mut self, text: impl Into<String>) {
        self.status = Some(Status {
            text: text.into(),
            error: false,
        });
    }

    fn error(&mut self, text: impl Into<String>) {
        self.status = Some(Status {
            text: text.into(),
            error: true,
        });
    }

    pub fn update(&mut self, input: Input) -> Vec<Effect> {
        match input {
            Input::Tick => {
                if self.queue.running().is_some() {
                    self.ticks = self.ticks.wrapping_add(1);
                    self.dirty = true;
                }
                Vec::new()
            }
            Input::Key(key) if key.kind == KeyEventKind::Release => Vec::new(),
            Input::Key(key) => {
                self.dirty = true;
                self.status = None;
                let mut effects = self.on_key(key);
                if self.view == View::Loras {
                    effects.extend(self.loras.wanted_preview().map(Effect::LoadPreview));
                }
                effects
            }
            Input::LoraPreview { path, image } => {
                if self.loras.preview_path.as_ref() == Some(&path) {
                    self.dirty = true;
                    self.loras.preview.show(image, String::new());
                }
                Vec::new()
            }
            Input::Paste(text) => {
                self.dirty = true;
                if let Some(Overlay::Path(p)) = self.overlays.last_mut() {
                    p.paste(&text);
                    return Vec::new();
                }
                match self.context() {
                    Context::Prompt => {
                        let names = self.names.clone();
                        self.editor().paste(&text, &names);
                    }
                    Context::Loras => {
                        for c in text.lines().next().unwrap_or("").chars() {
                            self.loras.type_char(c);
                        }
                    }
                    _ => {}
                }
                Vec::new()
            }
            Input::Engine(ev) => {
                self.dirty = true;
                self.on_engine(ev);
                Vec::new()
            }
            Input::Submitted { id, job } => {
                self.dirty = true;
                self.queue.push(id, job);
                Vec::new()
            }
            Input::Catalog(listing) => {
                self.dirty = true;
                self.loras.set_listing(listing);
                self.names = self.loras.names();
                Vec::new()
            }
            Input::Embeddings(listed) => {
                self.dirty = true;
                self.embeddings = listed;
                self.offer_embeddings();
                Vec::new()
            }
            Input::InitPinned {
                file,
                caption,
                image,
            } => {
                self.dirty = true;
                self.preview.show(image, format!("init image {caption}"));
                self.info(format!(
                    "img2img from {caption} at denoise {:.2} (F4: denoise, resize mode; Enter on \"init image\" drops it)",
                    self.settings.denoise
                ));
                self.settings.init = Some((file, caption));
                // A mask belongs to the picture it was drawn on.
                self.settings.mask = None;
                Vec::new()
            }
            Input::MaskPinned { file } => {
                self.dirty = true;
                self.settings.mask = Some(file);
                self.info(format!(
                    "inpainting the masked part at denoise {:.2}, mask blur {} px (F4 to change)",
                    self.settings.denoise, self.settings.mask_blur
                ));
                Vec::new()
            }
            Input::MaskRead { path, result } => {
                self.dirty = true;
                self.mask_read(&path, result);
                Vec::new()
            }
            Input::InitRead { path, result } => {
                self.dirty = true;
                let (file, image) = match result {
                    Ok(r) => r,
                    Err(e) => {
                        // The prompt stays open with the path to correct; the init image stays.
                        self.error(e);
                        return Vec::new();
                    }
                };
                if matches!(self.overlays.last(), Some(Overlay::Path(p)) if p.purpose == PathFor::Init)
                {
                    self.overlays.pop();
                }
                let caption = path.file_name().map_or_else(
                    || path.display().to_string(),
                    |n| n.to_string_lossy().into(),
                );
                self.update(Input::InitPinned {
                    file,
                    caption,
                    image,
                })
            }
            Input::Models(listing) => {
                self.dirty = true;
                let current = self.model.path.clone();
                self.overlays
                    .push(Overlay::Models(ModelPicker::new(listing, current)));
                Vec::new()
            }
            Input::Resize => {
                self.dirty = true;
                Vec::new()
            }
        }
    }

    fn on_engine(&mut self, ev: Event) {
        self.queue.on_event(&ev);
        if matches!(ev, Event::Started { .. } | Event::Failed { .. }) {
            self.model.loading = false;
        }
        match ev {
            Event::Image {
                id,
                index,
                seed,
                image,
                infotext,
            } => {
                self.last_seed = Some(seed);
                let job = self.queue.get(id).map(|e| e.job.clone());
                self.preview
                    .show(image.clone(), format!("#{id}.{} seed {seed}", index + 1));
                if let Some(job) = job {
                    self.gallery.push(GalleryItem {
                        job_id: id,
                        index,
                        seed,
                        image,
                        infotext,
                        job,
                    });
                }
            }
            Event::Preview {
                id, step, preview, ..
            } => {
                self.preview.show(preview, format!("#{id} step {step}"));
            }
            Event::Failed { id, message } => {
                self.overlays.push(Overlay::Error(ErrorPopup {
                    title: format!("Job #{id} failed"),
                    message,
                }));
            }
            _ => {}
        }
    }

    fn on_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        if !self.overlays.is_empty() {
            return self.on_overlay_key(key);
        }
        let ctx = self.context();
        let plain = !key
            .modifiers
            .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT);
        if ctx == Context::Prompt && plain {
            let names = self.names.clone();
            match self.editor().completion_key(key.code, &names) {
                Some(Ok(())) => return Vec::new(),
                Some(Err(why)) => {
                    self.error(why);
                    return Vec::new();
                }
                None => {}
            }
        }
        if ctx == Context::Loras && plain {
            match key.code {
                KeyCode::Backspace => {
                    self.loras.backspace();
                    return Vec::new();
                }
                KeyCode::Esc if !self.loras.filter.is_empty() => {
                    self.loras.filter.clear();
                    return Vec::new();
                }
                _ => {}
            }
        }
        match self.keymap.lookup(ctx, &key) {
            Some(action) => self.apply(ctx, action),
            None => {
                if let (KeyCode::Char(c), true) = (key.code, plain) {
                    match ctx {
                        Context::Prompt => {
                            let names = self.names.clone();
                            self.editor().type_char(c, &names);
                        }
                        Context::Loras => self.loras.type_char(c),
                        _ => {}
                    }
                }
                Vec::new()
            }
        }
    }

    fn on_overlay_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        let ctx = self.context();
        let Some(top) = self.overlays.last_mut() else {
            return Vec::new();
        };
        match top {
            Overlay::Help(Help { scroll }) | Overlay::Steps(PromptSteps { scroll, .. }) => {
                match key.code {
                    KeyCode::Up | KeyCode::Char('k') => scroll.by(-1),
                    KeyCode::Down | KeyCode::Char('j') => scroll.by(1),
                    KeyCode::PageUp => scroll.by(-10),
                    KeyCode::PageDown => scroll.by(10),
                    KeyCode::Esc | KeyCode::Char('q') | KeyCode::Char('?') | KeyCode::F(1) => {
                        self.overlays.pop();
                    }
                    _ => {}
                }
            }
            Overlay::Palette(p) => match key.code {
                KeyCode::Esc => {
                    self.overlays.pop();
                }
                KeyCode::Up => p.selected = p.selected.saturating_sub(1),
                KeyCode::Down => p.selected += 1,
                KeyCode::Backspace => {
                    p.query.pop();
                    p.selected = 0;
                }
                KeyCode::Enter => {
                    let chosen = p
                        .entries(&self.keymap, ctx)
                        .get(p.selected)
                        .map(|e| (e.0, e.1));
                    self.overlays.pop();
                    if let Some((c, action)) = chosen {
                        return self.apply(c, action);
                    }
                }
                KeyCode::Char(c) if !key.modifiers.contains(KeyModifiers::CONTROL) => {
                    p.query.push(c);
                    p.selected = 0;
                }
                _ => {}
            },
            Overlay::Confirm(c) => match key.code {
                KeyCode::Char('y') | KeyCode::Char('Y') => {
                    let action = c.action;
                    self.overlays.pop();
                    if action == Action::Quit {
                        return vec![Effect::Quit];
                    }
                    return self.apply(Context::Global, action);
                }
                KeyCode::Char('n') | KeyCode::Esc => {
                    self.overlays.pop();
                }
                _ => {}
            },
            Overlay::Error(_) => {
                if matches!(key.code, KeyCode::Esc | KeyCode::Enter) {
                    self.overlays.pop();
                }
            }
            Overlay::Mask(_) => return self.mask_key(key),
            Overlay::Path(p) => match key.code {
                KeyCode::Esc => {
                    self.overlays.pop();
                }
                KeyCode::Backspace => p.backspace(),
                KeyCode::Char('u') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                    p.text.clear()
                }
                KeyCode::Enter => match (p.purpose, p.path()) {
                    (_, None) => self.error("type the path of a picture file (PNG, JPEG or WebP)"),
                    (PathFor::Mask, Some(path)) => return vec![Effect::LoadMask(path)],
                    (PathFor::Init, Some(path)) => return vec![Effect::LoadInit(path)],
                },
                KeyCode::Char(c) if !key.modifiers.contains(KeyModifiers::CONTROL) => {
                    p.type_char(c)
                }
                _ => {}
            },
            Overlay::Models(m) => match key.code {
                KeyCode::Esc => {
                    self.overlays.pop();
                }
                KeyCode::Up => m.select(-1),
                KeyCode::Down => m.select(1),
                KeyCode::Backspace => m.edit_filter(None),
                KeyCode::Enter => {
                    let Some(e) = m.current_entry().cloned() else {
                        return Vec::new();
                    };
                    if let Some(why) = &e.problem {
                        self.error(format!("{}: {why}", e.name));
                        return Vec::new();
                    }
                    self.overlays.pop();
                    return self.switch_model(e);
                }
                KeyCode::Char(c) if !key.modifiers.contains(KeyModifiers::CONTROL) => {
                    m.edit_filter(Some(c))
                }
                _ => {}
            },
        }
        if let Some(Overlay::Palette(p)) = self.overlays.last_mut() {
            let n = p.entries(&self.keymap, ctx).len();
            p.selected = p.selected.min(n.saturating_sub(1));
        }
        Vec::new()
    }

    /// Runs one action in `ctx`. Public so tests and the palette can drive the app by name.
    pub fn apply(&mut self, ctx: Context, action: Action) -> Vec<Effect> {
        use Action as A;
        let names = self.names.clone();
        match (ctx, action) {
            (_, A::Submit) => return self.submit(),
            (Context::Queue, A::Cancel) => match self.queue.entries.get(self.queue.selected) {
                Some(e) if matches!(e.state, JobState::Queued | JobState::Running { .. }) => {
                    return vec![Effect::Cancel(e.id)]
                }
                Some(_) => self.error("that job has already ended"),
                None => {}
            },
            (_, A::Interrupt) => {
                if self.queue.running().is_some() {
                    self.info("interrupting…");
                    return vec![Effect::Interrupt];
                }
                self.error("nothing is running");
            }
            (_, A::Skip) => {
                if self.queue.running().is_some() {
                    return vec![Effect::Skip];
                }
                self.error("nothing is running");
            }
            (Context::Picture, A::Back | A::Fullscreen) => self.fullscreen = false,
            (_, A::Fullscreen) => {
                if self.preview.image().is_some() {
                    self.fullscreen = true;
                } else {
                    self.error("no picture yet");
                }
            }
            (_, A::Help) => self.overlays.push(Overlay::Help(Help::default())),
            (_, A::PromptSteps) => {
                let steps = PromptSteps::new(
                    self.prompt.text(),
                    self.negative.text(),
                    self.settings.steps as usize,
                );
                self.overlays.push(Overlay::Steps(steps));
            }
            (_, A::Palette) => self.overlays.push(Overlay::Palette(Palette::default())),
            (_, A::FocusNext) | (_, A::FocusPrev) => {
                let order = [Focus::Prompt, Focus::Negative, Focus::Queue, Focus::Gallery];
                let i = order.iter().position(|f| *f == self.focus).unwrap_or(0);
                let d = if action == A::FocusNext { 1 } else { 3 };
                self.view = View::Generate;
                self.focus = order[(i + d) % 4];
            }
            (_, A::ViewGenerate) => self.view = View::Generate,
            (_, A::ViewLoras) => self.view = View::Loras,
            (_, A::ViewSettings) => self.view = View::Settings,
            (_, A::ViewSchedule) => {
                if self.view == View::Generate {
                    if let Some(i) = self.prompt.analysis.tag_at(self.prompt.buf.cursor()) {
                        self.schedule.tag = i;
                        self.schedule.point = 0;
                    }
                }
                self.view = View::Schedule;
            }
            (_, A::Back) => {
                self.view = View::Generate;
            }
            (_, A::Quit) => {
                if self.queue.active() > 0 {
                    self.overlays.push(Overlay::Confirm(Confirm {
                        question: format!(
                            "{} job(s) are queued or running. Quit anyway?",
                            self.queue.active()
                        ),
                        action: A::Quit,
                    }));
                } else {
                    return vec![Effect::Quit];
                }
            }
            (_, A::PickModel) => return vec![Effect::ScanModels],
            (_, A::OpenInit) => self
                .overlays
                .push(Overlay::Path(PathPrompt::new(PathFor::Init))),
            (_, A::Suspend) => return vec![Effect::Suspend],
            (_, A::Redraw) => return vec![Effect::Redraw],
            (Context::Prompt, A::StrengthUp | A::StrengthDown) => {
                let d = if action == A::StrengthUp {
                    STRENGTH_STEP
                } else {
                    -STRENGTH_STEP
                };
                if let Err(e) = self.prompt.nudge_tag_at_cursor(d, &names) {
                    self.error(e);
                }
            }
            (Context::Prompt, a) => {
                self.editor().apply(a, &names);
            }
            (Context::Queue, A::SelectPrev) => self.queue.select(-1),
            (Context::Queue, A::SelectNext) => self.queue.select(1),
            (Context::Gallery, A::SelectPrev) => self.gallery.select(-1),
            (Context::Gallery, A::SelectNext) => self.gallery.select(1),
            (Context::Gallery, A::Show) => {
                if let Some(it) = self.gallery.selected() {
                    let caption = format!("#{}.{} seed {}", it.job_id, it.index + 1, it.seed);
                    let image = it.image.clone();
                    self.preview.show(image, caption);
                }
            }
            (Context::Gallery, A::SendToPrompt) => self.send_to_prompt(),
            (Context::Gallery, A::SendToImg2img) => return self.send_to_img2img(),
            (Context::Gallery, A::SendToInpaint) => {
                if let Some(it) = self.gallery.selected() {
                    let caption = format!("#{}.{} seed {}", it.job_id, it.index + 1, it.seed);
                    self.overlays
                        .push(Overlay::Mask(MaskEditor::new(it.image.clone(), caption)));
                } else {
                    self.error("no picture in the gallery yet");
                }
            }
            (Context::Loras, A::SelectPrev) => self.loras.select(-1),
            (Context::Loras, A::SelectNext) => self.loras.select(1),
            (Context::Loras, A::Insert) => self.insert_lora(),
            (Context::Loras, A::StrengthUp | A::StrengthDown) => {
                let d = if action == A::StrengthUp {
                    STRENGTH_STEP
                } else {
                    -STRENGTH_STEP
                };
                self.nudge_selected_lora(d);
            }
            (Context::Loras, A::Rescan) => return vec![Effect::RescanLoras],
            (Context::Schedule, a) => self.schedule_action(a),
            (Context::Settings, A::SelectPrev) => self.settings.select(-1),
            (Context::Settings, A::SelectNext) => self.settings.select(1),
            (Context::Settings, A::Increase | A::Toggle) => self.settings.adjust(1),
            (Context::Settings, A::Decrease) => self.settings.adjust(-1),
            (Context::Settings, A::RandomSeed) => {
                self.settings.seed = self.next_seed();
                self.settings.seed_mode = SeedMode::Fixed;
            }
            _ => {}
        }
        Vec::new()
    }

    /// Makes `e` the model of the next jobs: the header names it, adapters are checked against its
    /// widths (a rescan), and the engine loads it with the next job. The prompt stays.
    fn switch_model(&mut self, e: crate::tui::model_folders::ModelEntry) -> Vec<Effect> {
        let same = |a: &std::path::Path, b: &std::path::Path| {
            a.canonicalize()
                .ok()
                .zip(b.canonicalize().ok())
                .is_some_and(|(a, b)| a == b)
        };
        if same(&e.path, &self.model.path) {
            self.info(format!("{} is already the model", e.name));
            return Vec::new();
        }
        let keep_vae = e.family.is_some() && e.family == self.model.start_family;
        let mut note = format!(
            "model {} ({}): loads with the next job",
            e.name,
            e.family.unwrap_or("?")
        );
        if e.family != self.model.family {
            note.push_str("; adapters rechecked for it, image size unchanged (F4)");
        }
        self.info(note);
        self.model = ModelInUse {
            name: e.name.clone(),
            path: e.path.clone(),
            family: e.family,
            start_family: self.model.start_family,
            loading: true,
        };
        self.model_widths = e.widths;
        self.offer_embeddings();
        vec![
            Effect::SwitchModel(ModelChoice {
                path: e.path,
                keep_vae,
            }),
            Effect::RescanLoras,
        ]
    }

    fn next_seed(&mut self) -> u64 {
        // xorshift64*: deterministic from the seed given to `new`, good enough for picking seeds.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32
    }

    /// The job the editor and settings describe now, with the seed resolved.
    pub fn build_job(&mut self) -> Result<Job, String> {
        if self.prompt.text().trim().is_empty() {
            return Err("the prompt is empty".into());
        }
        for (which, ed) in [
            ("prompt", &self.prompt),
            ("negative prompt", &self.negative),
        ] {
            if let Some(e) = &ed.analysis.error {
                return Err(format!("fix the {which} first: {}", e.message));
            }
        }
        let s = &self.settings;
        let seed = match s.seed_mode {
            SeedMode::Fixed => s.seed,
            SeedMode::Reuse => match self.last_seed {
                Some(seed) => seed,
                None => self.next_seed(),
            },
            SeedMode::Random => self.next_seed(),
        };
        let s = &self.settings;
        let init = s.init_image()?;
        if let Some(init) = &init {
            // As `generate` checks its --init-image and --mask before submitting: read back,
            // hashes, the mask's size and region, by the same loader.
            crate::image::init::load(init, s.width, s.height).map_err(|e| e.to_string())?;
        }
        let mut job = Job {
            prompt: self.prompt.text().to_string(),
            negative: self.negative.text().to_string(),
            sampler: s.sampler,
            schedule: s.schedule,
            sde_noise: s.sde_noise,
            zero_snr: s.zero_snr,
            sigmas: s.sigmas,
            steps: s.steps,
            cfg: s.cfg,
            width: s.width,
            height: s.height,
            seed,
            batch: s.batch,
            init,
            hires: None,
        };
        job.hires = s.hires_fix(&job)?;
        Ok(job)
    }

    fn submit(&mut self) -> Vec<Effect> {
        match self.build_job() {
            Ok(job) => {
                let text = job.prompt.clone();
                self.prompt.push_history(&text, self.history_size);
                self.info(format!("queued (seed {})", job.seed));
                vec![Effect::Submit(job), Effect::SaveHistory(text)]
            }
            Err(e) => {
                self.error(e);
                Vec::new()
            }
        }
    }

    /// Keys of the mask editor: drawing, then Enter pins the picture and its mask (inpainting).
    fn mask_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        let Some(Overlay::Mask(m)) = self.overlays.last_mut() else {
            return Vec::new();
        };
        let by = if key.modifiers.contains(KeyModifiers::SHIFT) {
            4
        } else {
            1
        };
        match key.code {
            KeyCode::Left => m.move_cursor(-by, 0),
            KeyCode::Right => m.move_cursor(by, 0),
            KeyCode::Up => m.move_cursor(0, -by),
            KeyCode::Down => m.move_cursor(0, by),
            KeyCode::Char(' ') => m.corner(),
            KeyCode::Char('e') => m.toggle_shape(),
            KeyCode::Char('a') => m.subtract = false,
            KeyCode::Char('s') => m.subtract = true,
            KeyCode::Char('v') => m.invert(),
            KeyCode::Char('c') => m.clear(),
            KeyCode::Char('o') => self
                .overlays
                .push(Overlay::Path(PathPrompt::new(PathFor::Mask))),
            KeyCode::Esc if m.anchor.is_some() => m.anchor = None,
            KeyCode::Esc => {
                self.overlays.pop();
            }
            KeyCode::Enter => {
                if m.is_empty() {
                    self.error("the mask is empty: draw a shape first (Space at two corners)");
                    return Vec::new();
                }
                let Some(dir) = self.inputs_dir.clone() else {
                    self.error("no folder for input pictures in this front end");
                    return Vec::new();
                };
                // A loaded file nothing was drawn over is the job's mask itself, as `--mask FILE`.
                let mask = match m.file_as_is() {
                    Some(file) => Effect::UseMask(file.clone()),
                    None => Effect::PinMask {
                        image: m.mask_image(),
                        dir: dir.clone(),
                    },
                };
                let (image, caption) = (m.image.clone(), m.caption.clone());
                self.overlays.pop();
                return vec![
                    Effect::PinInit {
                        image,
                        caption,
                        dir,
                    },
                    mask,
                ];
            }
            _ => {}
        }
        Vec::new()
    }

    /// A mask file read for the mask editor under the path prompt: shown there (the prompt closes),
    /// or the reader's or the size rule's error in the status line, the mask as it was.
    fn mask_read(
        &mut self,
        path: &std::path::Path,
        result: Result<(crate::init_image::FileRef, RgbImage), String>,
    ) {
        let (file, rgb) = match result {
            Ok(r) => r,
            Err(e) => return self.error(e),
        };
        // The size rule of the loader: only masked and outpainting place the mask on the picture.
        let s = &self.settings;
        let same_size = s.inpaint_area == crate::init_image::InpaintArea::Masked || s.outpaint > 0;
        let mode = s.resize_mode;
        let Some(i) = self
            .overlays
            .iter()
            .rposition(|o| matches!(o, Overlay::Mask(_)))
        else {
            return self.error("the mask editor was closed");
        };
        let Overlay::Mask(m) = &mut self.overlays[i] else {
            return;
        };
        match m.load(file, &rgb, mode, same_size) {
            Ok(()) => {
                let fitted = if (rgb.width, rgb.height) == (m.image.width, m.image.height) {
                    String::new()
                } else {
                    format!(", fitted to {}×{}", m.image.width, m.image.height)
                };
                self.overlays.truncate(i + 1);
                self.info(format!(
                    "mask {} ({}×{}{fitted}): Enter uses it",
                    path.display(),
                    rgb.width,
                    rgb.height
                ));
            }
            Err(e) => self.error(e.to_string()),
        }
    }

    /// Asks for the selected gallery picture to be written and pinned; jobs then start from it.
    fn send_to_img2img(&mut self) -> Vec<Effect> {
        let Some(it) = self.gallery.selected() else {
            self.error("no picture in the gallery yet");
            return Vec::new();
        };
        let Some(dir) = self.inputs_dir.clone() else {
            self.error("no folder for input pictures in this front end");
            return Vec::new();
        };
        vec![Effect::PinInit {
            image: it.image.clone(),
            caption: format!("#{}.{} seed {}", it.job_id, it.index + 1, it.seed),
            dir,
        }]
    }

    fn send_to_prompt(&mut self) {
        let Some(it) = self.gallery.selected().cloned() else {
            return;
        };
        let names = self.names.clone();
        self.prompt.set_text(&it.job.prompt, &names);
        self.negative.set_text(&it.job.negative, &names);
        let s = &mut self.settings;
        s.sampler = it.job.sampler;
        s.schedule = it.job.schedule;
        s.sde_noise = it.job.sde_noise;
        s.zero_snr = it.job.zero_snr;
        s.sigmas = it.job.sigmas;
        s.steps = it.job.steps;
        s.cfg = it.job.cfg;
        s.width = it.job.width;
        s.height = it.job.height;
        s.seed = it.seed;
        s.seed_mode = SeedMode::Fixed;
        s.restore_hires(&it.job);
        self.view = View::Generate;
        self.focus = Focus::Prompt;
        self.info(format!(
            "prompt and settings of #{}.{} restored (seed {})",
            it.job_id,
            it.index + 1,
            it.seed
        ));
    }

    /// Gives both prompt editors the embeddings to complete, each checked against the model's text
    /// encoder widths (those of the model picked last, else the start model's).
    fn offer_embeddings(&mut self) {
        let widths = self.model_widths.or(self.start_widths);
        let choices: Vec<EmbeddingChoice> = self
            .embeddings
            .iter()
            .map(|l| {
                let te: Option<Vec<usize>> = widths
                    .filter(|w| w.te.is_some())
                    .map(|w| w.te.into_iter().chain(w.te2).collect());
                let family = widths.map_or("?", |w| w.family.facts().name);
                let refused = l.refusal(te.as_deref(), family);
                let note = match &refused {
                    None => l.summary(),
                    Some(_) => format!("✗ {}", l.made_for()),
                };
                EmbeddingChoice {
                    name: l.name.clone(),
                    note,
                    refused,
                }
            })
            .collect();
        self.prompt.embeddings = choices.clone();
        self.negative.embeddings = choices;
    }

    fn insert_lora(&mut self) {
        let Some(e) = self.loras.current().cloned() else {
            return;
        };
        if let crate::lora::entry::Compat::No(why) = &e.compat {
            self.error(format!("{} cannot be used: {why}", e.name));
            return;
        }
        let (range, text) = crate::tui::components::lora_browser::insertion(
            &e,
            self.prompt.text(),
            self.prompt.buf.cursor(),
            self.settings.trigger_words,
        );
        let names = self.names.clone();
        self.prompt.buf.replace(range, &text);
        self.prompt.refresh(&names);
        self.info(format!("inserted <lora:{}:1>", e.name));
    }

    fn nudge_selected_lora(&mut self, d: f32) {
        let Some(name) = self.loras.current().map(|e| e.name.clone()) else {
            return;
        };
        let names = self.names.clone();
        match self
            .prompt
            .analysis
            .tags
            .iter()
            .position(|t| t.name == name)
        {
            Some(i) => {
                if let Err(e) = self.prompt.nudge_tag(i, d, &names) {
                    self.error(e);
                }
            }
            // → on an adapter not in the prompt adds it, as the key table says (raise its strength).
            None if d > 0.0 => self.insert_lora(),
            None => self.error(format!("{name} is not in the prompt; Enter inserts it")),
        }
    }

    fn schedule_action(&mut self, a: Action) {
        use Action as A;
        let n = self.prompt.analysis.tags.len();
        let edit = match a {
            A::PrevPoint => Edit::PrevPoint,
            A::NextPoint => Edit::NextPoint,
            A::ValueUp => Edit::Value(STRENGTH_STEP),
            A::ValueDown => Edit::Value(-STRENGTH_STEP),
            A::ValueUpBig => Edit::Value(0.25),
            A::ValueDownBig => Edit::Value(-0.25),
            A::MoveLeft => Edit::Move(-0.05),
            A::MoveRight => Edit::Move(0.05),
            A::AddPoint => Edit::Add,
            A::DeletePoint => Edit::Delete,
            A::MakeConstant => Edit::Constant,
            A::NextComponent => return self.schedule.cycle_component(1),
            A::PrevComponent => return self.schedule.cycle_component(-1),
            A::NextTag | A::PrevTag => {
                if n > 0 {
                    let d = if a == A::NextTag { 1 } else { n - 1 };
                    self.schedule.tag = (self.schedule.tag + d) % n;
                    self.schedule.point = 0;
                }
                return;
            }
            _ => return,
        };
        let Some(tag) = self.prompt.analysis.tags.get(self.schedule.tag).cloned() else {
            self.error("no <lora:…> tag to edit");
            return;
        };
        match self.schedule.edit(&tag, edit, self.settings.steps) {
            Ok(Some(new)) => {
                let names = self.names.clone();
                self.prompt.rewrite_tag(self.schedule.tag, &new, &names);
            }
            Ok(None) => {}
            Err(e) => self.error(e),
        }
    }
}
