//! The terminal front end: prompt editing with live parse errors, a LoRA browser, a per-step
//! schedule editor, the job queue and inline pictures. [`run`] takes over the terminal until quit.
//! State lives in [`app::App`] (pure updates), drawing in [`view`], I/O in [`event_loop`].

pub mod app;
pub mod components;
pub mod early_input;
pub mod event_loop;
pub mod graphics;
pub mod keymap;
pub mod lang;
pub mod model_folders;
pub mod overlays;
pub mod terminal;
pub mod theme;
pub mod view;

use crate::config::{Config, Dirs};
use crate::engine::EngineHandle;
use crate::job::Event;
use crate::lora::entry::{FolderSource, LoraSource};
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

/// The LoRA method the engine uses for the next job, set from the Settings toggle at each submit.
pub type MethodSink = std::sync::Arc<std::sync::Mutex<crate::live::LoraMethod>>;

/// The model the engine loads for the next job, set by the model picker (`None`: unchanged).
pub type ModelSink = std::sync::Arc<std::sync::Mutex<Option<app::ModelChoice>>>;

/// Where the model picker looks and where its choice goes.
#[derive(Default)]
pub struct Models {
    pub folders: Vec<std::path::PathBuf>,
    /// Listed even outside the folders (the start model and its neighbours).
    pub extra: Vec<std::path::PathBuf>,
    pub cache: crate::tui::model_folders::ScanCache,
    pub sink: ModelSink,
}

impl Models {
    pub fn scan(&self) -> crate::tui::model_folders::ModelListing {
        crate::tui::model_folders::scan(&self.folders, &self.extra, &self.cache)
    }
}

/// What the TUI needs besides the engine.
pub struct TuiOptions {
    pub config: Config,
    pub dirs: Dirs,
    pub catalog: Box<dyn LoraSource>,
    /// Shared with the runner, which reads it before each job.
    pub lora_method: Option<MethodSink>,
    /// The model picker; `None` hides it.
    pub models: Option<Models>,
    /// The model the workstation starts with, for the header.
    pub model: app::ModelInUse,
    /// Its widths, which adapters and embeddings are checked against.
    pub widths: Option<crate::lora::family::ModelWidths>,
    /// The embedding folders, whose names the prompt editors complete.
    pub embedding_dirs: Vec<std::path::PathBuf>,
    /// ONNX image upscalers the hires fix offers (`--upscaler`).
    pub upscalers: Vec<std::path::PathBuf>,
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
            lora_method: None,
            models: None,
            model: app::ModelInUse::default(),
            widths: model,
            embedding_dirs: Vec::new(),
            upscalers: Vec::new(),
        }
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
    // The query must happen before the event stream starts reading stdin; what the user typed
    // meanwhile is replayed first.
    let (picker, typed) = graphics::detect(opts.config.image.protocol);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut app = app::App::new(&opts.config, theme, keymap, picker, seed);
    app.method_sink = opts.lora_method.clone();
    app.model = opts.model.clone();
    app.inputs_dir = Some(opts.dirs.data.join("inputs"));
    app.settings.upscaler_models = opts.upscalers.clone();
    app.prompt.set_history(history);
    app.update(app::Input::Catalog(opts.catalog.scan()));
    app.start_widths = opts.widths;
    app.update(app::Input::Embeddings(crate::embedding::listing::list(
        opts.embedding_dirs.clone(),
    )));
    let svc = event_loop::Services {
        engine: &engine,
        catalog: opts.catalog.as_ref(),
        history_file: Some(history_file),
        models: opts.models.as_ref(),
    };
    let result = runtime.block_on(async {
        use futures_util::StreamExt;
        let input = futures_util::stream::iter(typed.into_iter().map(Ok))
            .chain(crossterm::event::EventStream::new());
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
