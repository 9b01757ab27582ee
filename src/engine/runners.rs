//! The engine's runners over the pipeline: [`Runner`] for a loaded [`Generator`], [`LazyGenerator`]
//! (loads the model on the first job) and [`SavingRunner`] (has each image saved on a writer thread
//! as it passes it on).

use super::{Outcome, Reporter, Runner, Stop};
use crate::image::writer::{Save, Writer};
use crate::job::{Event, Job, JobId};
use crate::pipeline::generator::GroupJob;
use crate::pipeline::{Dials, Ended, EngineSpec, Generator};
use crate::runtime::Runtime;
use std::path::PathBuf;

/// Saves every finished image (PNG with both chunks) as it passes its event on: what the TUI uses,
/// since a workstation's images must land on disk like the headless ones. The PNG is encoded and
/// written on a writer thread, so the engine goes on sampling meanwhile; without one (it could not
/// be started) the engine thread writes.
pub struct SavingRunner<R> {
    pub inner: R,
    pub out_dir: PathBuf,
    writer: Option<Writer>,
}

impl<R> SavingRunner<R> {
    pub fn new(inner: R, out_dir: PathBuf) -> Self {
        let writer = Writer::spawn(|(_, saved)| {
            if let Err(err) = saved {
                tracing::error!("saving an image: {err}");
            }
        })
        .map_err(|e| tracing::warn!("no writer thread ({e}); images are written in line"))
        .ok();
        SavingRunner {
            inner,
            out_dir,
            writer,
        }
    }
}

impl<R: Runner> Runner for SavingRunner<R> {
    fn dials(&self) -> Option<Dials> {
        self.inner.dials()
    }

    fn run(&mut self, job: &Job, out: &Reporter<'_>) -> Outcome {
        let dir = self.out_dir.clone();
        let writer = self.writer.as_ref();
        let tap = Reporter::tap(out, move |e: &Event| {
            if let Event::Image {
                seed,
                image,
                infotext,
                ..
            } = e
            {
                let mut record = job.clone();
                record.seed = *seed;
                record.batch = 1;
                let save = Save {
                    tag: *seed,
                    dir: dir.clone(),
                    image: image.clone(),
                    seed: *seed,
                    parameters: infotext.clone(),
                    stipple_json: serde_json::to_string(&record).unwrap_or_default(),
                };
                // Written in line only when the writer thread is missing or gone.
                let save = match writer {
                    Some(w) => match w.save(save) {
                        Ok(()) => return,
                        Err(save) => save,
                    },
                    None => save,
                };
                let saved = crate::image::save_png(
                    &save.dir,
                    &save.image,
                    save.seed,
                    &save.parameters,
                    &save.stipple_json,
                );
                if let Err(err) = saved {
                    tracing::error!("saving an image: {err}");
                }
            }
        });
        self.inner.run(job, &tap)
    }
}

/// Loads the model on the first job, so a front end can start at once; a load failure fails that
/// job (and is retried with the next one).
pub struct LazyGenerator {
    spec: EngineSpec,
    runtime: &'static Runtime,
    dials: Dials,
    generator: Option<Generator>,
    /// The `--vae` given at start: it follows model switches within its family only.
    start_vae: Option<std::path::PathBuf>,
}

impl LazyGenerator {
    pub fn new(spec: EngineSpec, runtime: &'static Runtime) -> Self {
        LazyGenerator {
            start_vae: spec.session.vae.clone(),
            spec,
            runtime,
            dials: Dials::default(),
            generator: None,
        }
    }

    /// What the model is (or will be) loaded with.
    pub fn spec(&self) -> &EngineSpec {
        &self.spec
    }

    /// The model of the next jobs (the workstation's model picker): the loaded one is dropped
    /// first, so two models never sit in memory together. `keep_vae: false` drops a `--vae`.
    pub fn set_model(&mut self, model: std::path::PathBuf, keep_vae: bool) {
        if model == self.spec.model {
            return;
        }
        self.spec.model = model;
        self.spec.session.vae = if keep_vae {
            self.start_vae.clone()
        } else {
            None
        };
        self.generator = None;
    }

    /// The LoRA method of the next job (the workstation's Settings toggle changes it between jobs).
    pub fn set_lora_method(&mut self, method: crate::live::LoraMethod) {
        self.spec.lora_method = method;
    }
}

impl Runner for LazyGenerator {
    fn dials(&self) -> Option<Dials> {
        Some(self.dials.clone())
    }

    fn run(&mut self, job: &Job, out: &Reporter<'_>) -> Outcome {
        // A job interrupted before or while the model loads ends before it starts; a finished
        // load is kept for the next job.
        let interrupted = || out.cancel.get() == Stop::Interrupt;
        if self.generator.is_none() {
            if interrupted() {
                return Outcome::Cancelled;
            }
            match Generator::load(self.spec.clone(), self.runtime) {
                Ok(mut g) => {
                    g.set_dials(self.dials.clone());
                    self.generator = Some(g);
                }
                Err(e) => {
                    return Outcome::Failed(format!("loading {}: {e}", self.spec.model.display()))
                }
            }
        }
        if interrupted() {
            return Outcome::Cancelled;
        }
        match self.generator.as_mut() {
            Some(g) => {
                g.set_lora_method(self.spec.lora_method);
                g.run(job, out)
            }
            None => Outcome::Failed("the model is not loaded".into()),
        }
    }
}

impl Runner for Generator {
    fn dials(&self) -> Option<Dials> {
        Some(Generator::dials(self))
    }

    fn run(&mut self, job: &Job, out: &Reporter<'_>) -> Outcome {
        let id = out.id;
        let ended = checked(self, out, |g, stop| {
            g.generate(job, stop, &mut |e| out.send(e), id)
        });
        outcome(ended.map_err(|e| e.to_string()), out)
    }

    fn run_group(&mut self, jobs: &[(JobId, Job)], out: &Reporter<'_>) -> Vec<Outcome> {
        let group: Vec<GroupJob<'_>> = jobs
            .iter()
            .map(|(id, job)| GroupJob { id: *id, job })
            .collect();
        checked(self, out, |g, stop| {
            g.generate_group(&group, stop, &mut |e| out.send(e))
        })
        .into_iter()
        .map(|ended| outcome(ended, out))
        .collect()
    }
}

/// Runs `f` with `out`'s stop check, which also turns the test dial when one is set; the dial is
/// cleared when `f` returns.
fn checked<R>(
    g: &mut Generator,
    out: &Reporter<'_>,
    f: impl FnOnce(&mut Generator, &dyn Fn() -> Stop) -> R,
) -> R {
    let dial = test_dial().map(|d| (d, Generator::dials(g)));
    let clear = dial.as_ref().map(|(_, dials)| dials.clone());
    let stop = skip_once(out, dial);
    let r = f(g, &stop);
    if let Some(dials) = clear {
        dials.clear();
    }
    r
}

/// A dial turned at a stop check of every job: (check index from 0, adapter name, UNet strength).
type TestDial = (u32, String, f32);

/// The test hook `STIPPLE_TEST_DIAL=CHECK:NAME:STRENGTH` (never a user's setting): at the
/// generator's stop check number CHECK (0-based; one check per step) of every job, adapter NAME's
/// UNet strength is dialled to STRENGTH, as the workstation's dial does, and the dial is cleared
/// when the job ends. It lets `stipple batch` (the GPU check) run a mid-job dial headless.
fn test_dial() -> Option<TestDial> {
    let v = std::env::var("STIPPLE_TEST_DIAL").ok()?;
    let mut it = v.splitn(3, ':');
    let (at, name, value) = (it.next()?, it.next()?, it.next()?);
    match (at.parse(), value.parse()) {
        (Ok(at), Ok(value)) if !name.is_empty() => Some((at, name.to_string(), value)),
        _ => {
            tracing::warn!("STIPPLE_TEST_DIAL={v} is not CHECK:NAME:STRENGTH; ignored");
            None
        }
    }
}

/// The stop check a generator polls: a skip is acted on once, an interrupt stays. With `dial`
/// (the test hook), its strength is set at its check.
fn skip_once(out: &Reporter<'_>, dial: Option<(TestDial, Dials)>) -> impl Fn() -> Stop {
    let cancel = out.cancel.clone();
    let checks = std::cell::Cell::new(0u32);
    move || {
        if let Some(((at, name, value), dials)) = &dial {
            if checks.get() == *at {
                dials.set(name, crate::prompt::Component::Unet, *value);
            }
            checks.set(checks.get() + 1);
        }
        let s = cancel.get();
        if s == Stop::SkipImage {
            cancel.take_skip();
        }
        s
    }
}

/// How a job the generator ran ended, for the engine.
fn outcome(ended: Result<Ended, String>, out: &Reporter<'_>) -> Outcome {
    match ended {
        Ok(Ended::Done) => Outcome::Done,
        Ok(Ended::Cancelled) => Outcome::Cancelled,
        // An interrupt terminates the run in flight, which then fails: that is a cancel.
        Err(_) if out.cancel.get() == Stop::Interrupt => Outcome::Cancelled,
        Err(e) => Outcome::Failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::CancelToken;

    #[test]
    fn a_job_interrupted_before_the_model_loads_is_cancelled_without_loading() {
        let Ok(rt) = Runtime::get(None, false) else {
            assert!(
                std::env::var("CI").is_err(),
                "ONNX Runtime is missing (run scripts/setup)"
            );
            return;
        };
        // A model that cannot load: trying would fail the job instead of cancelling it.
        let mut lazy = LazyGenerator::new(EngineSpec::new("/nonexistent/model"), rt);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let cancel = CancelToken::default();
        let out = Reporter {
            id: 7,
            tx: &tx,
            cancel: &cancel,
            tap: None,
        };
        let job = Job {
            prompt: "a fox".into(),
            negative: String::new(),
            sampler: crate::job::Sampler::Euler,
            schedule: Default::default(),
            sde_noise: Default::default(),
            zero_snr: false,
            sigmas: Default::default(),
            steps: 1,
            cfg: 7.0,
            width: 64,
            height: 64,
            seed: 1,
            batch: 1,
            init: None,
            hires: None,
        };
        cancel.set(Stop::Interrupt);
        assert!(matches!(lazy.run(&job, &out), Outcome::Cancelled));
        assert!(rx.try_recv().is_err(), "no event before the job starts");
        cancel.set(Stop::No);
        assert!(
            matches!(lazy.run(&job, &out), Outcome::Failed(m) if m.contains("/nonexistent/model"))
        );
    }
}
