//! The loop: one `select!` over terminal input, engine events and a slow tick; state changes go
//! through `App::update`, effects are carried out here, and the screen is redrawn only when
//! something changed, at most once per frame interval. Generic over the input stream and the
//! screen, so tests drive it with a channel and a `TestBackend`.

use crate::engine::EngineHandle;
use crate::job::Event;
use crate::lora::entry::LoraSource;
use crate::tui::app::{App, Effect, Input};
use crossterm::event::Event as TermEvent;
use futures_util::{Stream, StreamExt};
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

/// Where frames go: the real terminal or a test backend.
pub trait Screen {
    fn draw(&mut self, app: &mut App) -> io::Result<()>;
    /// Hands the terminal back to the shell until the process is continued (Ctrl-Z / fg).
    fn suspend(&mut self) -> io::Result<()>;
    /// Forgets what is on screen so the next frame repaints everything.
    fn clear(&mut self) -> io::Result<()>;
}

/// What effects act on.
pub struct Services<'a> {
    pub engine: &'a EngineHandle,
    pub catalog: &'a dyn LoraSource,
    /// Prompt history, one JSON string per line; `None` keeps history in memory only.
    pub history_file: Option<PathBuf>,
    /// The model picker's folders and the engine's model sink; `None`: no picker.
    pub models: Option<&'a crate::tui::Models>,
}

/// Floods of step events are folded into one frame per interval.
const FRAME: Duration = Duration::from_millis(16);
const TICK: Duration = Duration::from_millis(250);

/// Carries out `effects`; returns `false` once the app asked to quit.
pub fn perform(
    app: &mut App,
    effects: Vec<Effect>,
    svc: &Services<'_>,
    screen: &mut dyn Screen,
) -> io::Result<bool> {
    for effect in effects {
        match effect {
            Effect::Submit(job) => {
                if let Some(sink) = &app.method_sink {
                    *sink.lock().unwrap_or_else(|p| p.into_inner()) = app.settings.lora_method;
                }
                let id = svc.engine.submit(job.clone());
                tracing::info!(id, seed = job.seed, "submitted");
                let more = app.update(Input::Submitted { id, job });
                if !perform(app, more, svc, screen)? {
                    return Ok(false);
                }
            }
            Effect::Cancel(id) => svc.engine.cancel(id),
            Effect::Interrupt => svc.engine.interrupt(),
            Effect::Skip => svc.engine.skip(),
            Effect::Quit => return Ok(false),
            Effect::Suspend => {
                screen.suspend()?;
                app.dirty = true;
            }
            Effect::Redraw => {
                screen.clear()?;
                app.dirty = true;
            }
            Effect::RescanLoras => {
                let entries = svc.catalog.scan_for(app.model_widths.as_ref());
                app.update(Input::Catalog(entries));
            }
            Effect::PinInit {
                image,
                caption,
                dir,
            } => match pin_picture(&image, &dir) {
                Ok(file) => {
                    app.update(Input::InitPinned {
                        file,
                        caption,
                        image,
                    });
                }
                Err(e) => popup(
                    app,
                    "img2img",
                    format!("cannot keep the picture in {}: {e}", dir.display()),
                ),
            },
            Effect::PinMask { image, dir } => match pin_picture(&image, &dir) {
                Ok(file) => {
                    app.update(Input::MaskPinned { file });
                }
                Err(e) => popup(
                    app,
                    "inpainting",
                    format!("cannot keep the mask in {}: {e}", dir.display()),
                ),
            },
            Effect::LoadMask(path) => {
                let result = read_file(&path);
                app.update(Input::MaskRead { path, result });
            }
            Effect::LoadInit(path) => {
                let result = read_file(&path);
                app.update(Input::InitRead { path, result });
            }
            Effect::UseMask(file) => {
                app.update(Input::MaskPinned { file });
            }
            Effect::ScanModels => match svc.models {
                Some(m) => {
                    app.update(Input::Models(m.scan()));
                }
                None => tracing::info!("no model picker in this front end"),
            },
            Effect::SwitchModel(choice) => {
                if let Some(m) = svc.models {
                    tracing::info!(model = %choice.path.display(), "model picked");
                    *m.sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(choice);
                }
            }
            Effect::LoadPreview(path) => match load_picture(&path) {
                Ok(image) => {
                    app.update(Input::LoraPreview { path, image });
                }
                Err(e) => tracing::info!(path = %path.display(), error = %e, "no LoRA preview"),
            },
            Effect::SaveHistory(text) => {
                if let Some(path) = &svc.history_file {
                    if let Err(e) = append_history(path, &text) {
                        tracing::warn!(path = %path.display(), error = %e, "cannot save prompt history");
                    }
                }
            }
        }
    }
    Ok(true)
}

/// A failure the user must acknowledge, over whatever is on screen.
fn popup(app: &mut App, title: &str, message: String) {
    app.dirty = true;
    app.overlays.push(crate::tui::overlays::Overlay::Error(
        crate::tui::overlays::error::ErrorPopup {
            title: title.into(),
            message,
        },
    ));
}

/// Writes `image` as `<dir>/<sha256 of the pixels, 16 digits>.png` (once per picture) and pins it
/// by the file's hash, as `--init-image` would.
fn pin_picture(
    image: &crate::job::RgbImage,
    dir: &std::path::Path,
) -> Result<crate::init_image::FileRef, String> {
    use sha2::Digest;
    let digest = crate::image::init::hex(&sha2::Sha256::digest(&image.pixels));
    let path = dir.join(format!("{}.png", &digest[..16]));
    if !path.is_file() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let tmp = path.with_extension("png.part");
        image::RgbImage::from_raw(image.width, image.height, image.pixels.clone())
            .ok_or("the picture's size does not match its pixels")?
            .save_with_format(&tmp, image::ImageFormat::Png)
            .map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
    }
    let init = crate::image::init::pin(&path, 0.75, None).map_err(|e| e.to_string())?;
    Ok(init.image)
}

/// A picture file read and pinned as `--init-image` and `--mask` read and pin theirs (see
/// [`crate::image::init::pin`]): same formats, size limits, errors and sha256, one read.
fn read_file(
    path: &std::path::Path,
) -> Result<(crate::init_image::FileRef, crate::job::RgbImage), String> {
    let pic = crate::image::init::read_picture(path).map_err(|e| e.to_string())?;
    let file = crate::init_image::FileRef {
        path: path.to_path_buf(),
        sha256: pic.sha256,
    };
    Ok((file, pic.rgb))
}

/// A picture file, shrunk to at most 512 px a side (the pane is smaller than that anyway).
fn load_picture(path: &std::path::Path) -> Result<crate::job::RgbImage, image::ImageError> {
    let img = image::open(path)?.thumbnail(512, 512).to_rgb8();
    Ok(crate::job::RgbImage {
        width: img.width(),
        height: img.height(),
        pixels: img.into_raw(),
    })
}

fn append_history(path: &std::path::Path, text: &str) -> io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(
        f,
        "{}",
        serde_json::to_string(text).map_err(io::Error::other)?
    )
}

/// Reads the history file written by [`perform`]; bad lines are skipped.
pub fn load_history(path: &std::path::Path, limit: usize) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut v: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if v.len() > limit {
        v.drain(..v.len() - limit);
    }
    v
}

fn translate(ev: TermEvent) -> Option<Input> {
    match ev {
        TermEvent::Key(k) => Some(Input::Key(k)),
        TermEvent::Paste(s) => Some(Input::Paste(s)),
        TermEvent::Resize(..) => Some(Input::Resize),
        _ => None,
    }
}

/// Runs until the app quits or the input stream ends.
pub async fn run<S>(
    app: &mut App,
    screen: &mut dyn Screen,
    mut input: S,
    svc: &Services<'_>,
    events: &mut UnboundedReceiver<Event>,
) -> io::Result<()>
where
    S: Stream<Item = io::Result<TermEvent>> + Unpin,
{
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_draw: Option<Instant> = None;
    let mut engine_open = true;
    loop {
        let wait = match (app.dirty, last_draw) {
            (false, _) => None,
            (true, Some(t)) if t.elapsed() < FRAME => Some(FRAME - t.elapsed()),
            (true, _) => {
                screen.draw(app)?;
                app.dirty = false;
                last_draw = Some(Instant::now());
                None
            }
        };
        let effects = tokio::select! {
            biased;
            ev = input.next() => match ev {
                None => return Ok(()),
                Some(Err(e)) => return Err(e),
                Some(Ok(ev)) => translate(ev).map(|i| app.update(i)).unwrap_or_default(),
            },
            ev = events.recv(), if engine_open => match ev {
                Some(ev) => {
                    app.update(Input::Engine(ev));
                    // Drain what else arrived so a burst of steps costs one frame.
                    while let Ok(ev) = events.try_recv() {
                        app.update(Input::Engine(ev));
                    }
                    Vec::new()
                }
                None => {
                    engine_open = false;
                    tracing::error!("the engine went away");
                    Vec::new()
                }
            },
            _ = tick.tick() => app.update(Input::Tick),
            _ = tokio::time::sleep(wait.unwrap_or(FRAME)), if wait.is_some() => Vec::new(),
        };
        if !perform(app, effects, svc, screen)? {
            return Ok(());
        }
    }
}
