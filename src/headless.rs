//! Headless front end: `stipple generate` runs jobs on the engine, shows a progress bar on stderr
//! when it is a terminal, prints one JSON line per image on stdout and saves PNGs.
//!
//! [`generate`] is the whole command; `main` only resolves flags into [`GenerateArgs`].

use crate::engine::Engine;
use crate::image::save_png;
use crate::job::{Event, Job};
use crate::pipeline::Generator;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

/// Everything `generate` needs besides the loaded model.
pub struct GenerateArgs {
    pub job: Job,
    pub out_dir: PathBuf,
    /// Print each image inline when stdout is a terminal.
    pub preview: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HeadlessError {
    #[error("generation failed: {0}")]
    Failed(String),
    #[error("interrupted")]
    Cancelled,
    #[error(transparent)]
    Png(#[from] crate::image::PngError),
    #[error("cannot write to stdout: {0}")]
    Stdout(std::io::Error),
}

/// The JSON line printed for each image.
#[derive(serde::Serialize)]
struct ImageLine<'a> {
    path: String,
    seed: u64,
    index: u32,
    infotext: &'a str,
}

/// Runs the job on `generator`, saving each image as it arrives. Returns the saved paths.
pub fn generate(generator: Generator, args: GenerateArgs) -> Result<Vec<PathBuf>, HeadlessError> {
    let (engine, mut events) = Engine::spawn(generator);
    let job = args.job.clone();
    let id = engine.submit(args.job);
    let bar = if std::io::stderr().is_terminal() {
        let pb =
            ProgressBar::with_draw_target(Some(u64::from(job.steps)), ProgressDrawTarget::stderr());
        pb.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        Some(pb)
    } else {
        None
    };
    let mut saved = Vec::new();
    let mut stdout = std::io::stdout();
    let result = loop {
        let Some(event) = events.blocking_recv() else {
            break Err(HeadlessError::Failed("the engine stopped".into()));
        };
        match event {
            Event::Started { .. } | Event::Preview { .. } => {}
            Event::Step(p) => {
                if let Some(pb) = &bar {
                    pb.set_prefix(format!("image {}/{}", p.image + 1, job.batch));
                    pb.set_length(u64::from(p.steps));
                    pb.set_position(u64::from(p.step));
                    pb.set_message(format!("{:.2} it/s", p.it_per_s));
                }
            }
            Event::Image {
                seed,
                index,
                image,
                infotext,
                ..
            } => {
                let mut record = job.clone();
                record.seed = seed;
                record.batch = 1;
                let json = serde_json::to_string(&record).unwrap_or_default();
                let s = save_png(&args.out_dir, &image, seed, &infotext, &json)?;
                let line = ImageLine {
                    path: s.path.display().to_string(),
                    seed,
                    index,
                    infotext: &infotext,
                };
                if let Some(pb) = &bar {
                    pb.suspend(|| print_line(&mut stdout, &line))
                } else {
                    print_line(&mut stdout, &line)
                }
                .map_err(HeadlessError::Stdout)?;
                if args.preview && stdout.is_terminal() {
                    show_inline(&s.path);
                }
                saved.push(s.path);
            }
            Event::Finished { id: done } if done == id => break Ok(()),
            Event::Failed { message, .. } => break Err(HeadlessError::Failed(message)),
            Event::Cancelled { .. } => break Err(HeadlessError::Cancelled),
            Event::Finished { .. } => {}
        }
    };
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }
    engine.shutdown_and_wait();
    result.map(|()| saved)
}

fn print_line(out: &mut std::io::Stdout, line: &ImageLine<'_>) -> std::io::Result<()> {
    let text = serde_json::to_string(line).map_err(std::io::Error::other)?;
    writeln!(out, "{text}")?;
    out.flush()
}

/// Prints a saved image in the terminal with half-block characters (works everywhere, tmux included).
fn show_inline(path: &std::path::Path) {
    let Ok(file) = std::fs::File::open(path) else {
        return;
    };
    let Ok(mut reader) = png::Decoder::new(std::io::BufReader::new(file)).read_info() else {
        return;
    };
    let mut buf = vec![0; reader.output_buffer_size().unwrap_or(0)];
    let Ok(info) = reader.next_frame(&mut buf) else {
        return;
    };
    let (w, h) = (info.width as usize, info.height as usize);
    let cols = w.min(64);
    let scale = w as f32 / cols as f32;
    let rows = ((h as f32 / scale) as usize).max(2);
    let px = |x: usize, y: usize| {
        let sx = ((x as f32 * scale) as usize).min(w - 1);
        let sy = ((y as f32 * scale) as usize).min(h - 1);
        let i = (sy * w + sx) * 3;
        (buf[i], buf[i + 1], buf[i + 2])
    };
    let mut out = String::new();
    for y in (0..rows).step_by(2) {
        for x in 0..cols {
            let (r1, g1, b1) = px(x, y);
            let (r2, g2, b2) = px(x, (y + 1).min(rows - 1));
            out.push_str(&format!(
                "\x1b[38;2;{r1};{g1};{b1}m\x1b[48;2;{r2};{g2};{b2}m▀"
            ));
        }
        out.push_str("\x1b[0m\n");
    }
    print!("{out}");
}
