//! Decoding beside sampling: a [`Worker`] thread decodes one UNet call's final latents (VAE,
//! post-processing to RGB, infotext) while the engine thread samples the next call, and
//! [`Decodes`] sends what comes back as image events on the engine thread, in the order the images
//! were handed in. At most one call's images are under way; without a worker it sends what the
//! engine thread decoded itself.

use super::super::error::PipelineError;
use super::super::vae::VaeDecoder;
use super::batched::{Ready, State};
use crate::image::inpaint_area::PasteBack;
use crate::image::{format_infotext, Resources};
use crate::job::{Event, Job, RgbImage};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::Scope;

/// One image to decode: its place in the run, its final latents and its infotext's makings.
pub(super) struct Request<'a> {
    pub(super) job: usize,
    pub(super) index: u32,
    pub(super) seed: u64,
    pub(super) latents: Vec<f32>,
    /// Latent (height, width).
    pub(super) size: (usize, usize),
    pub(super) spec: &'a Job,
    pub(super) resources: Resources,
    /// "Only masked" inpainting: the picture the decoded image is pasted back over.
    pub(super) paste: Option<PasteBack>,
}

/// One image decoded, or why not.
pub(super) struct Decoded {
    job: usize,
    index: u32,
    seed: u64,
    made: Result<(RgbImage, String), PipelineError>,
}

type Decode<'d> = dyn FnMut(&[f32], usize, usize) -> Result<RgbImage, PipelineError> + 'd;

impl Request<'_> {
    /// Decodes with `decode` and writes the infotext. `fail` is a test's injected decoder failure:
    /// the seed whose decode fails.
    pub(super) fn finish(self, decode: &mut Decode<'_>, fail: Option<u64>) -> Decoded {
        let made = if fail == Some(self.seed) {
            Err(PipelineError::Run {
                what: "VAE decoder",
                message: format!("injected failure for seed {}", self.seed),
            })
        } else {
            decode(&self.latents, self.size.0, self.size.1).map(|img| {
                let img = match &self.paste {
                    Some(p) => p.apply(&img),
                    None => img,
                };
                (img, format_infotext(self.spec, self.seed, &self.resources))
            })
        };
        Decoded {
            job: self.job,
            index: self.index,
            seed: self.seed,
            made,
        }
    }
}

/// The engine thread's end of the decode thread: one call's images in, decoded images out.
pub(super) struct Worker<'a> {
    to: Sender<Vec<Request<'a>>>,
    from: Receiver<Decoded>,
    /// Images handed in and not taken back yet.
    under_way: usize,
}

impl<'a> Worker<'a> {
    /// Starts the decode thread in `scope`; it decodes with `vae` until the worker is dropped.
    pub(super) fn start<'scope>(
        scope: &'scope Scope<'scope, '_>,
        vae: VaeDecoder,
        fail: Option<u64>,
    ) -> Self
    where
        'a: 'scope,
    {
        let (to, jobs) = channel::<Vec<Request<'a>>>();
        let (done, from) = channel();
        scope.spawn(move || {
            let mut decode = |l: &[f32], h, w| vae.decode(l, h, w);
            for batch in jobs {
                for r in batch {
                    if done.send(r.finish(&mut decode, fail)).is_err() {
                        return;
                    }
                }
            }
        });
        Worker {
            to,
            from,
            under_way: 0,
        }
    }

    /// The next decoded image: waits for it when `block`, else only takes one that is ready.
    fn next(&mut self, block: bool) -> Option<Decoded> {
        if self.under_way == 0 {
            return None;
        }
        let got = match block {
            true => self.from.recv().ok(),
            false => self.from.try_recv().ok(),
        };
        if got.is_some() {
            self.under_way -= 1;
        } else if block {
            // The thread is gone (it panicked: the scope reports it when it ends).
            self.under_way = 0;
        }
        got
    }
}

/// Sends decoded images as events and keeps account of each job's images.
pub(super) struct Decodes<'a> {
    /// None: the engine thread decodes itself and hands in what it made.
    worker: Option<Worker<'a>>,
    /// Images per job not yet sent or skipped.
    left: Vec<u32>,
    /// A lone job's decoder failure ends the run; in a group it fails its own job only.
    lone: bool,
    error: Option<PipelineError>,
}

impl<'a> Decodes<'a> {
    pub(super) fn new(worker: Option<Worker<'a>>, jobs: &[Ready<'_>]) -> Self {
        Decodes {
            worker,
            left: jobs.iter().map(|r| r.job.batch).collect(),
            lone: jobs.len() == 1,
            error: None,
        }
    }

    /// Whether images are decoded on the worker.
    pub(super) fn overlapped(&self) -> bool {
        self.worker.is_some()
    }

    /// A lone job's decoder failure, taken.
    pub(super) fn take_error(&mut self) -> Option<PipelineError> {
        self.error.take()
    }

    pub(super) fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// Hands one call's images to the worker, after sending the previous call's (one call in
    /// flight bounds the memory and keeps the order).
    pub(super) fn hand(
        &mut self,
        batch: Vec<Request<'a>>,
        jobs: &[Ready<'_>],
        states: &mut [State],
        on_event: &mut dyn FnMut(Event),
    ) {
        self.send_finished(true, jobs, states, on_event);
        let Some(w) = &mut self.worker else {
            return;
        };
        let n = batch.len();
        match w.to.send(batch) {
            Ok(()) => w.under_way += n,
            Err(std::sync::mpsc::SendError(batch)) => {
                let mut gone =
                    |_: &[f32], _, _| Err(PipelineError::Job("the decode thread stopped".into()));
                for r in batch {
                    let d = r.finish(&mut gone, None);
                    self.take(d, jobs, states, on_event);
                }
            }
        }
    }

    /// Sends the images the worker has finished; with `wait`, waits for every one under way.
    pub(super) fn send_finished(
        &mut self,
        wait: bool,
        jobs: &[Ready<'_>],
        states: &mut [State],
        on_event: &mut dyn FnMut(Event),
    ) {
        while let Some(d) = self.worker.as_mut().and_then(|w| w.next(wait)) {
            self.take(d, jobs, states, on_event);
        }
    }

    /// Sends one decoded image, or fails its job (the run, for a lone job). Images of a job that
    /// failed already are dropped.
    pub(super) fn take(
        &mut self,
        d: Decoded,
        jobs: &[Ready<'_>],
        states: &mut [State],
        on_event: &mut dyn FnMut(Event),
    ) {
        if self.error.is_some() || states[d.job] != State::Running {
            return;
        }
        match d.made {
            Ok((image, infotext)) => {
                on_event(Event::Image {
                    id: jobs[d.job].id,
                    index: d.index,
                    seed: d.seed,
                    image,
                    infotext,
                });
                self.count(d.job, states);
            }
            Err(e) if self.lone => self.error = Some(e),
            Err(e) => states[d.job] = State::Failed(e.to_string()),
        }
    }

    /// Counts an image of `job` as finished (sent, or skipped); its last one marks the job done.
    pub(super) fn count(&mut self, job: usize, states: &mut [State]) {
        self.left[job] = self.left[job].saturating_sub(1);
        if self.left[job] == 0 && states[job] == State::Running {
            states[job] = State::Done;
        }
    }
}
