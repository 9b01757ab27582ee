//! Test helpers for the TUI: a scripted fake engine runner, a ready-made app with a fixed
//! catalog, key helpers, and rendering to text through ratatui's TestBackend.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use std::sync::mpsc::{Receiver, Sender};
use std::time::Duration;
use stipple::config::Config;
use stipple::engine::{Outcome, Reporter, Runner, Stop};
use stipple::job::{Event, Job, Progress, RgbImage};
use stipple::lora::entry::{Compat, LoraEntry};
use stipple::tui::app::{App, Effect, Input};
use stipple::tui::event_loop::Screen;
use stipple::tui::graphics::Graphics;
use stipple::tui::keymap::Keymap;
use stipple::tui::terminal::TestScreen;
use stipple::tui::theme::Theme;

/// Emits Started, one Step per sampling step, a Preview halfway, and an Image per batch item,
/// honouring interrupt and skip. With a gate, each step waits for a token from the test.
/// A prompt containing `FAIL` fails after the first step.
pub struct ScriptedRunner {
    pub gate: Option<Receiver<()>>,
}

impl ScriptedRunner {
    pub fn free() -> ScriptedRunner {
        ScriptedRunner { gate: None }
    }

    pub fn gated() -> (ScriptedRunner, Sender<()>) {
        let (tx, rx) = std::sync::mpsc::channel();
        (ScriptedRunner { gate: Some(rx) }, tx)
    }
}

pub fn gradient(w: u32, h: u32, seed: u64) -> RgbImage {
    let mut pixels = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            pixels.extend_from_slice(&[
                (x * 255 / w.max(1)) as u8,
                (y * 255 / h.max(1)) as u8,
                (seed % 255) as u8,
            ]);
        }
    }
    RgbImage {
        width: w,
        height: h,
        pixels,
    }
}

impl Runner for ScriptedRunner {
    fn run(&mut self, job: &Job, out: &Reporter<'_>) -> Outcome {
        let id = out.id;
        out.send(Event::Started {
            id,
            images: job.batch,
            steps: job.steps,
        });
        for image in 0..job.batch {
            let mut skipped = false;
            for step in 1..=job.steps {
                if let Some(gate) = &self.gate {
                    if gate.recv_timeout(Duration::from_secs(10)).is_err() {
                        return Outcome::Failed("test gate timed out".into());
                    }
                }
                match out.cancel.get() {
                    Stop::Interrupt => return Outcome::Cancelled,
                    Stop::SkipImage => {
                        out.cancel.take_skip();
                        skipped = true;
                        break;
                    }
                    Stop::No => {}
                }
                out.send(Event::Step(Progress {
                    id,
                    image,
                    step,
                    steps: job.steps,
                    it_per_s: 4.0,
                }));
                if job.prompt.contains("FAIL") {
                    return Outcome::Failed("scripted failure: the UNet exploded".into());
                }
                if step == job.steps / 2 {
                    out.send(Event::Preview {
                        id,
                        image,
                        step,
                        preview: gradient(8, 8, 1),
                    });
                }
            }
            if !skipped {
                let seed = job.seed + u64::from(image);
                out.send(Event::Image {
                    id,
                    index: image,
                    seed,
                    image: gradient(16, 16, seed),
                    infotext: format!("{}\nSteps: {}, Seed: {seed}", job.prompt, job.steps),
                });
            }
        }
        Outcome::Done
    }
}

pub fn catalog() -> Vec<LoraEntry> {
    let e = |name: &str,
             kind: &str,
             family: &str,
             rank: u32,
             size: u64,
             triggers: &[&str],
             compat: Compat| LoraEntry {
        name: name.into(),
        path: format!("/loras/{name}.safetensors").into(),
        size,
        kind: Some(kind.into()),
        family: Some(family.into()),
        rank: Some(rank),
        triggers: triggers.iter().map(|s| s.to_string()).collect(),
        preview: Some(format!("/loras/{name}.png").into()),
        compat,
        ..LoraEntry::default()
    };
    vec![
        e(
            "ink-style",
            "LoRA",
            "sd1",
            16,
            37_800_000,
            &["ink wash"],
            Compat::Yes,
        ),
        e(
            "pixel-art",
            "LoCon",
            "sd1",
            32,
            75_500_000,
            &[],
            Compat::Unknown,
        ),
        e(
            "xl-detail",
            "LoRA",
            "sdxl",
            64,
            228_000_000,
            &["hyperdetailed"],
            Compat::No("made for sdxl, the model is sd1".into()),
        ),
    ]
}

pub fn app() -> App {
    let theme = Theme::load("dark", None).expect("dark theme");
    let mut app = App::new(
        &Config::default().with_model_size((512, 512)),
        theme,
        Keymap::default(),
        Some(Graphics::halfblocks()),
        42,
    );
    app.update(Input::Catalog(catalog().into()));
    app
}

/// What effects act on in a test: `engine`, the adapters of `cat`, no history file, and the model
/// picker's folders when given.
pub fn services<'a>(
    engine: &'a stipple::engine::EngineHandle,
    cat: &'a dyn stipple::lora::entry::LoraSource,
    models: Option<&'a stipple::tui::Models>,
) -> stipple::tui::event_loop::Services<'a> {
    stipple::tui::event_loop::Services {
        engine,
        catalog: cat,
        history_file: None,
        models,
    }
}

pub fn key(app: &mut App, code: KeyCode, mods: KeyModifiers) -> Vec<Effect> {
    app.update(Input::Key(KeyEvent::new(code, mods)))
}

pub fn press(app: &mut App, code: KeyCode) -> Vec<Effect> {
    key(app, code, KeyModifiers::NONE)
}

pub fn type_text(app: &mut App, text: &str) {
    for c in text.chars() {
        key(app, KeyCode::Char(c), KeyModifiers::NONE);
    }
}

pub fn render(app: &mut App, w: u16, h: u16) -> String {
    let mut screen = TestScreen::new(w, h);
    screen.draw(app).expect("draw");
    format!("{}", screen.terminal.backend())
}

/// A state with a finished job (image in gallery and preview), a running one and a queued one.
pub fn busy_app() -> App {
    let mut app = app();
    type_text(
        &mut app,
        "a watercolor fox <lora:ink-style:0.8>, (autumn forest:1.2) BREAK soft morning light",
    );
    app.update(Input::Key(KeyEvent::new(KeyCode::Tab, KeyModifiers::NONE)));
    type_text(&mut app, "blurry, lowres");
    app.update(Input::Key(KeyEvent::new(
        KeyCode::BackTab,
        KeyModifiers::NONE,
    )));
    let job = app.build_job().expect("job");
    for id in 1..=3 {
        app.update(Input::Submitted {
            id,
            job: Job {
                seed: 1000 + id,
                ..job.clone()
            },
        });
    }
    app.update(Input::Engine(Event::Started {
        id: 1,
        images: 1,
        steps: 20,
    }));
    app.update(Input::Engine(Event::Step(Progress {
        id: 1,
        image: 0,
        step: 20,
        steps: 20,
        it_per_s: 5.0,
    })));
    app.update(Input::Engine(Event::Image {
        id: 1,
        index: 0,
        seed: 1001,
        image: gradient(256, 256, 7),
        infotext: "a watercolor fox\nNegative prompt: blurry, lowres\nSteps: 20, Sampler: Euler a, Seed: 1001".into(),
    }));
    app.update(Input::Engine(Event::Finished { id: 1 }));
    app.update(Input::Engine(Event::Started {
        id: 2,
        images: 1,
        steps: 20,
    }));
    app.update(Input::Engine(Event::Step(Progress {
        id: 2,
        image: 0,
        step: 7,
        steps: 20,
        it_per_s: 2.5,
    })));
    app
}
