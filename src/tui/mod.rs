//! The terminal front end: prompt editing with live parse errors, a LoRA browser, a per-step
//! schedule editor, the job queue and inline pictures. [`run`] takes over the terminal until quit.
//! State lives in [`app::App`] (pure updates), drawing in [`view`], I/O in [`event_loop`].

pub mod app;
pub mod components;
pub mod event_loop;
pub mod keymap;
pub mod lang;
pub mod overlays;
pub mod terminal;
pub mod theme;
pub mod view;

use crate::config::{Config, Dirs, ImageProtocol};
use crate::engine::EngineHandle;
use crate::job::Event;
use crate::lora::entry::{FolderSource, LoraSource};
use ratatui_image::picker::{Picker, ProtocolType};
use tokio::sync::mpsc::UnboundedReceiver;

#[derive(Debug, thiserror::Error)]
pub enum TuiError {
    #[error("terminal: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Theme(#[from] theme::ThemeError),
    #[error(transparent)]
    Keymap(#[from] keymap::KeymapError),
}

/// What the TUI needs besides the engine.
pub struct TuiOptions {
    pub config: Config,
    pub dirs: Dirs,
    pub catalog: Box<dyn LoraSource>,
}

impl TuiOptions {
    /// Adapters from the configured folders, checked against the loaded model's widths if known.
    pub fn new(
        config: Config,
        dirs: Dirs,
        model: Option<crate::lora::family::ModelWidths>,
    ) -> TuiOptions {
        let catalog = Box::new(FolderSource {
            dirs: crate::lora::catalog::LoraDirs::new(config.lora_folders.clone()),
            model,
        });
        TuiOptions {
            config,
            dirs,
            catalog,
        }
    }
}

/// The picture protocol: the terminal's answer to a query unless the config names one.
fn picker_for(protocol: ImageProtocol) -> Option<Picker> {
    // ratatui-image's query leaves a thread reading stdin when nothing answers, which would eat
    // the user's keys; only ask a terminal that answers a cursor-position request (crossterm
    // times that out cleanly), else fall back to halfblocks.
    let answers = crossterm::cursor::position().is_ok();
    let queried = || {
        if answers {
            Picker::from_query_stdio().unwrap_or_else(|_| Picker::halfblocks())
        } else {
            tracing::warn!("the terminal does not answer queries; pictures use halfblocks");
            Picker::halfblocks()
        }
    };
    let forced = |p: ProtocolType| {
        let mut picker = queried();
        picker.set_protocol_type(p);
        Some(picker)
    };
    match protocol {
        ImageProtocol::Off => None,
        ImageProtocol::Auto => Some(queried()),
        ImageProtocol::Halfblocks => Some(Picker::halfblocks()),
        ImageProtocol::Kitty => forced(ProtocolType::Kitty),
        ImageProtocol::Sixel => forced(ProtocolType::Sixel),
        ImageProtocol::Iterm2 => forced(ProtocolType::Iterm2),
    }
}

/// Logs go to `<state dir>/stipple.log`, never to the screen. Returns the writer's guard, or
/// `None` when a global subscriber was already installed by the caller.
fn init_logging(dirs: &Dirs) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    std::fs::create_dir_all(&dirs.state).ok()?;
    let (writer, guard) = tracing_appender::non_blocking(tracing_appender::rolling::never(
        &dirs.state,
        "stipple.log",
    ));
    let filter = tracing_subscriber::EnvFilter::try_from_env("STIPPLE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(false)
        .with_env_filter(filter)
        .try_init()
        .ok()
        .map(|()| guard)
}

/// Runs the TUI until the user quits, then shuts the engine down. Call it without a stderr
/// tracing subscriber installed (it logs to a file itself).
pub fn run(
    opts: TuiOptions,
    engine: EngineHandle,
    mut events: UnboundedReceiver<Event>,
) -> Result<(), TuiError> {
    let _log = init_logging(&opts.dirs);
    let theme = theme::Theme::load(&opts.config.theme, Some(&opts.dirs.themes()))?;
    let keymap = keymap::Keymap::with_overrides(&opts.config.keys)?;
    let history_file = opts.dirs.data.join("history.jsonl");
    let history = event_loop::load_history(&history_file, opts.config.history_size);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    terminal::install_panic_hook();
    let mut term = terminal::Term::enter()?;
    // The query must happen before the event stream starts reading stdin.
    let picker = picker_for(opts.config.image.protocol);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut app = app::App::new(&opts.config, theme, keymap, picker, seed);
    app.prompt.set_history(history);
    app.update(app::Input::Catalog(opts.catalog.scan()));
    let svc = event_loop::Services {
        engine: &engine,
        catalog: opts.catalog.as_ref(),
        history_file: Some(history_file),
    };
    let result = runtime.block_on(async {
        let input = crossterm::event::EventStream::new();
        let main = event_loop::run(&mut app, &mut term, input, &svc, &mut events);
        // A closed SSH connection (SIGHUP) or a kill (SIGTERM) ends the session like a quit,
        // so the engine is shut down and the terminal restored where it still exists.
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term_sig = signal(SignalKind::terminate())?;
            let mut hup = signal(SignalKind::hangup())?;
            tokio::select! {
                r = main => r,
                _ = term_sig.recv() => { tracing::info!("SIGTERM"); Ok(()) }
                _ = hup.recv() => { tracing::info!("SIGHUP"); Ok(()) }
            }
        }
        #[cfg(not(unix))]
        main.await
    });
    drop(term);
    engine.shutdown();
    tracing::info!("tui closed");
    Ok(result?)
}
