//! The engine thread: a queue of [`Job`]s run one at a time by a [`Runner`], reporting [`Event`]s.
//!
//! [`Engine::spawn`] returns an [`EngineHandle`] (submit, cancel, interrupt, skip) and the event
//! receiver. The real runners ([`runners`]) wrap [`crate::pipeline::Generator`]; front ends can be
//! tested with a fake. [`EngineSpec`] (defined beside the generator, re-exported here) holds every
//! load-time setting.

pub mod runners;

use crate::job::{Event, Job, JobId};
use crate::pipeline::Dials;
pub use crate::pipeline::{EngineSpec, Stop};
use crate::prompt::Component;
use crate::runtime::run_guard::RunGuard;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Shared flag the runner polls once per sampling step; an interrupt also terminates the ONNX
/// Runtime run in flight on the engine thread (through its [`RunGuard`]).
#[derive(Debug, Default, Clone)]
pub struct CancelToken(Arc<AtomicU8>, RunGuard);

impl CancelToken {
    pub fn get(&self) -> Stop {
        match self.0.load(Ordering::Acquire) {
            1 => Stop::SkipImage,
            2 => Stop::Interrupt,
            _ => Stop::No,
        }
    }
    pub fn set(&self, stop: Stop) {
        let v = match stop {
            Stop::No => 0,
            Stop::SkipImage => 1,
            Stop::Interrupt => 2,
        };
        self.0.store(v, Ordering::Release);
        match stop {
            Stop::Interrupt => self.1.terminate(),
            Stop::No => self.1.reset(),
            Stop::SkipImage => {}
        }
    }

    /// The run options this token terminates; the engine thread installs them.
    pub fn run_guard(&self) -> &RunGuard {
        &self.1
    }
    /// Clears a `SkipImage` once the runner has acted on it, leaving `Interrupt` in place.
    pub fn take_skip(&self) -> bool {
        self.0
            .compare_exchange(1, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// Sees each event before it is sent (see [`Reporter::tap`]).
type Tap<'a> = Box<dyn Fn(&Event) + 'a>;

/// Where a runner sends its events.
pub struct Reporter<'a> {
    pub id: JobId,
    tx: &'a UnboundedSender<Event>,
    pub cancel: &'a CancelToken,
    tap: Option<Tap<'a>>,
}

impl<'a> Reporter<'a> {
    pub fn send(&self, event: Event) {
        if let Some(tap) = &self.tap {
            tap(&event);
        }
        // A closed receiver means the front end went away; nothing useful to do with the event.
        let _ = self.tx.send(event);
    }

    /// The same channel and cancel token for job `id` of a group (without a tap).
    pub fn for_job(&self, id: JobId) -> Reporter<'a> {
        Reporter {
            id,
            tx: self.tx,
            cancel: self.cancel,
            tap: None,
        }
    }
    /// A reporter that shows every event to `f` before sending it on (e.g. to save images).
    pub fn tap(parent: &Reporter<'a>, f: impl Fn(&Event) + 'a) -> Reporter<'a> {
        Reporter {
            id: parent.id,
            tx: parent.tx,
            cancel: parent.cancel,
            tap: Some(Box::new(f)),
        }
    }
}

/// How a job ended, as told by the runner.
#[derive(Debug)]
pub enum Outcome {
    Done,
    Cancelled,
    Failed(String),
}

/// Something that turns a job into images. Implemented by the ONNX pipeline and by test fakes.
pub trait Runner: Send + 'static {
    /// Runs `job`, sending `Started`, `Step` and `Image` events; the engine sends the final one.
    fn run(&mut self, job: &Job, out: &Reporter<'_>) -> Outcome;

    /// Runs jobs submitted together ([`EngineHandle::submit_group`]), sending each one's events
    /// under its own id; one outcome per job, in order. A runner that can share work between them
    /// (one UNet batch) overrides this; the default runs them one after another.
    fn run_group(&mut self, jobs: &[(JobId, Job)], out: &Reporter<'_>) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(jobs.len());
        for (id, job) in jobs {
            let cancelled = matches!(outcomes.last(), Some(Outcome::Cancelled));
            outcomes.push(if cancelled {
                Outcome::Cancelled
            } else {
                self.run(job, &out.for_job(*id))
            });
        }
        outcomes
    }
    /// The strength dials the running job reads at every step, if this runner has any.
    fn dials(&self) -> Option<Dials> {
        None
    }
}

struct Queue {
    jobs: Mutex<QueueState>,
    wake: Condvar,
}

struct QueueState {
    /// Groups of jobs submitted together (most hold one job).
    pending: VecDeque<Vec<(JobId, Job)>>,
    running: Vec<JobId>,
    closed: bool,
}

/// Front ends' side of the engine. Cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    queue: Arc<Queue>,
    next_id: Arc<AtomicU64>,
    cancel: CancelToken,
    events: UnboundedSender<Event>,
    dials: Option<Dials>,
}

impl EngineHandle {
    /// Changes adapter `name`'s strength for `component` (te, unet, in, mid, out) to `value`: the
    /// running job uses it from its next step (no session rebuild when the adapter runs live), and
    /// later jobs too until [`clear_strengths`](Self::clear_strengths). False when the runner has
    /// no dials.
    pub fn set_strength(&self, name: &str, component: Component, value: f32) -> bool {
        match &self.dials {
            Some(d) => {
                d.set(name, component, value);
                true
            }
            None => false,
        }
    }

    /// Drops every strength set through [`set_strength`](Self::set_strength).
    pub fn clear_strengths(&self) {
        if let Some(d) = &self.dials {
            d.clear();
        }
    }

    /// Queues a job and returns its id. Jobs run in submission order.
    pub fn submit(&self, job: Job) -> JobId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut q = lock(&self.queue.jobs);
        q.pending.push_back(vec![(id, job)]);
        self.queue.wake.notify_one();
        id
    }
    /// Queues jobs to run together (the runner may put their images through the UNet as one
    /// batch); returns their ids, in order. Cancelling one while they run interrupts them all.
    pub fn submit_group(&self, jobs: Vec<Job>) -> Vec<JobId> {
        let group: Vec<(JobId, Job)> = jobs
            .into_iter()
            .map(|job| (self.next_id.fetch_add(1, Ordering::Relaxed), job))
            .collect();
        let ids = group.iter().map(|(id, _)| *id).collect();
        if !group.is_empty() {
            let mut q = lock(&self.queue.jobs);
            q.pending.push_back(group);
            self.queue.wake.notify_one();
        }
        ids
    }

    /// Removes a queued job, or interrupts it if it is running. Unknown ids are ignored.
    pub fn cancel(&self, id: JobId) {
        let mut q = lock(&self.queue.jobs);
        if q.running.contains(&id) {
            self.cancel.set(Stop::Interrupt);
            return;
        }
        for g in 0..q.pending.len() {
            if let Some(pos) = q.pending[g].iter().position(|(j, _)| *j == id) {
                q.pending[g].remove(pos);
                if q.pending[g].is_empty() {
                    q.pending.remove(g);
                }
                let _ = self.events.send(Event::Cancelled { id });
                return;
            }
        }
    }

    /// Interrupts the running job (if any).
    pub fn interrupt(&self) {
        if !lock(&self.queue.jobs).running.is_empty() {
            self.cancel.set(Stop::Interrupt);
        }
    }

    /// Skips the image being made now (with the images sharing its UNet calls); the job goes on
    /// with the next ones of its batch.
    pub fn skip(&self) {
        if !lock(&self.queue.jobs).running.is_empty() {
            self.cancel.set(Stop::SkipImage);
        }
    }

    /// Ids of the jobs waiting, in order.
    pub fn pending(&self) -> Vec<JobId> {
        lock(&self.queue.jobs)
            .pending
            .iter()
            .flatten()
            .map(|(id, _)| *id)
            .collect()
    }

    /// Stops the engine thread after the running job; pending jobs are dropped.
    pub fn shutdown(&self) {
        let mut q = lock(&self.queue.jobs);
        q.closed = true;
        self.cancel.set(Stop::Interrupt);
        self.queue.wake.notify_all();
    }

    /// [`shutdown`](Self::shutdown), then waits for the thread to end, so the runner (and its ONNX
    /// Runtime sessions) is dropped now: a CUDA session freed during process exit, after the driver
    /// has shut down, aborts the process.
    pub fn shutdown_and_wait(&self) {
        self.shutdown();
        let handle = lock(&self.thread).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic inside the engine thread must not take the front end down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Spawns engines.
pub struct Engine;

impl Engine {
    /// Starts `runner` on its own thread.
    pub fn spawn<R: Runner>(mut runner: R) -> (EngineHandle, UnboundedReceiver<Event>) {
        let (tx, rx) = unbounded_channel();
        let queue = Arc::new(Queue {
            jobs: Mutex::new(QueueState {
                pending: VecDeque::new(),
                running: Vec::new(),
                closed: false,
            }),
            wake: Condvar::new(),
        });
        let handle = EngineHandle {
            thread: Arc::new(Mutex::new(None)),
            queue: queue.clone(),
            next_id: Arc::new(AtomicU64::new(1)),
            cancel: CancelToken::default(),
            events: tx.clone(),
            dials: runner.dials(),
        };
        let cancel = handle.cancel.clone();
        let thread = std::thread::Builder::new()
            .name("stipple-engine".into())
            .spawn(move || loop {
                cancel.run_guard().install();
                let group = {
                    let mut q = lock(&queue.jobs);
                    loop {
                        if q.closed {
                            return;
                        }
                        if let Some(next) = q.pending.pop_front() {
                            q.running = next.iter().map(|(id, _)| *id).collect();
                            cancel.set(Stop::No);
                            break next;
                        }
                        q = queue.wake.wait(q).unwrap_or_else(|p| p.into_inner());
                    }
                };
                let Some(&(id, _)) = group.first() else {
                    continue;
                };
                let reporter = Reporter {
                    id,
                    tx: &tx,
                    cancel: &cancel,
                    tap: None,
                };
                let outcomes =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &group[..] {
                        [(_, job)] => vec![runner.run(job, &reporter)],
                        _ => runner.run_group(&group, &reporter),
                    }))
                    .unwrap_or_default();
                lock(&queue.jobs).running.clear();
                let mut outcomes = outcomes.into_iter();
                for (id, _) in &group {
                    let last = match outcomes.next() {
                        Some(Outcome::Done) => Event::Finished { id: *id },
                        Some(Outcome::Cancelled) => Event::Cancelled { id: *id },
                        Some(Outcome::Failed(message)) => Event::Failed { id: *id, message },
                        // A panic (or a runner that lost count) ends the job as failed.
                        None => Event::Failed {
                            id: *id,
                            message: "internal error: the engine panicked".into(),
                        },
                    };
                    let _ = tx.send(last);
                }
            })
            .expect("spawning the engine thread");
        *lock(&handle.thread) = Some(thread);
        (handle, rx)
    }
}
