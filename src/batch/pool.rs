//! A work queue over several engines: one worker thread per device, each keeping one warm engine and
//! taking the next job for the model it has loaded before switching models, together with the
//! later jobs that can share its UNet calls ([`super::group`]), up to the UNet batch of images.
//! A model a device cannot load, and a job that fails on a device, go back to the queue for the
//! other devices (a job once); what no running device can take fails.
//!
//! [`run`] starts the workers and returns the [`Report`] stream; it ends when the queue is empty or
//! the stop flag is set (then running jobs are interrupted at their next step). [`Loader`] makes
//! runners, so the queue can be tested without ONNX Runtime.

use super::group::{self, ShareKey};
use crate::engine::{Engine, EngineHandle, Runner};
use crate::job::{Event, Job, JobId, RgbImage};
use crate::runtime::Device;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

/// Loads a model onto a device, giving something that runs jobs.
pub trait Loader: Send + Sync + 'static {
    type Runner: Runner;
    fn load(&self, model: &Path, device: Device) -> Result<Self::Runner, String>;
}

/// One job to run; `key` is the caller's, handed back in reports.
#[derive(Debug, Clone)]
pub struct Task {
    pub key: usize,
    pub model: PathBuf,
    pub job: Job,
}

#[derive(Debug)]
pub enum Ending {
    Done,
    Failed(String),
    Cancelled,
}

/// What the workers tell the caller, in order per task: steps and images, then its end.
#[derive(Debug)]
pub enum Report {
    Loaded {
        device: Device,
        model: PathBuf,
        seconds: f64,
    },
    Step {
        key: usize,
        device: Device,
        image: u32,
        step: u32,
        steps: u32,
    },
    Image {
        key: usize,
        index: u32,
        seed: u64,
        image: RgbImage,
        infotext: String,
    },
    Ended {
        key: usize,
        device: Device,
        ending: Ending,
        /// From submission to the end, model loading not included.
        seconds: f64,
    },
    /// `device` could not load `model`; its jobs wait for another device (or fail when none can
    /// load it).
    Refused {
        device: Device,
        model: PathBuf,
        message: String,
    },
    /// Task `key` failed on `device` (or its engine stopped): it runs again, whole, on another
    /// device (its images so far are to be dropped); a second failure ends it.
    Requeued {
        key: usize,
        device: Device,
        why: String,
    },
}

/// A queued task, with what decides whom it may share UNet calls with, and the workers it failed
/// on (with what the first said).
struct Queued {
    task: Task,
    share: Option<ShareKey>,
    failed_on: Vec<usize>,
    first_error: Option<String>,
}

impl Queued {
    fn new(task: Task) -> Queued {
        let share = ShareKey::of(&task.job);
        Queued {
            task,
            share,
            failed_on: Vec::new(),
            first_error: None,
        }
    }
}

/// What becomes of a task that failed on a worker.
enum AfterFailure {
    /// Back in the queue for another device, with why it failed.
    Again(usize, String),
    /// Failed for good, with why.
    Failed(usize, String),
}

/// What a worker does next.
enum Next {
    Run(Vec<Queued>),
    /// Tasks no worker still running can load the model of, with why.
    Fail(Vec<(Task, String)>),
    Done,
}

/// Jobs grouped by model (models in order of first appearance), the models each worker could not
/// load, and how many workers hold a group: only those can put tasks back.
#[derive(Default)]
struct State {
    by_model: Vec<(PathBuf, VecDeque<Queued>)>,
    refused: HashMap<PathBuf, Vec<(usize, String)>>,
    alive: Vec<usize>,
    busy: usize,
}

impl State {
    /// Whether `worker` may run `q`: it loaded `q`'s model (or has not tried) and `q` has not
    /// failed on it.
    fn may_take(&self, worker: usize, q: &Queued) -> bool {
        let refused = self
            .refused
            .get(&q.task.model)
            .is_some_and(|r| r.iter().any(|(w, _)| *w == worker));
        !refused && !q.failed_on.contains(&worker)
    }

    /// Whether some worker still running may run `q`.
    fn anyone_takes(&self, q: &Queued) -> bool {
        self.alive.iter().any(|&w| self.may_take(w, q))
    }

    /// The queued tasks that no worker still running may take, with why (what the loads of the
    /// model said, else the task's first failure).
    fn take_hopeless(&mut self) -> Vec<(Task, String)> {
        let mut by_model = std::mem::take(&mut self.by_model);
        let mut out = Vec::new();
        for (model, tasks) in &mut by_model {
            if tasks.iter().all(|q| self.anyone_takes(q)) {
                continue;
            }
            let mut said: Vec<&str> = Vec::new();
            for (_, m) in self.refused.get(model.as_path()).into_iter().flatten() {
                if !said.contains(&m.as_str()) {
                    said.push(m);
                }
            }
            let loads = said.join("; ");
            let (kept, gone): (VecDeque<Queued>, VecDeque<Queued>) =
                tasks.drain(..).partition(|q| self.anyone_takes(q));
            *tasks = kept;
            out.extend(gone.into_iter().map(|q| {
                let why = q.first_error.unwrap_or_else(|| loads.clone());
                (q.task, why)
            }));
        }
        self.by_model = by_model;
        out
    }

    /// The queue of `model`'s tasks, made at the end when it has none yet.
    fn queue_of(&mut self, model: &Path) -> &mut VecDeque<Queued> {
        let at = match self.by_model.iter().position(|(m, _)| m == model) {
            Some(at) => at,
            None => {
                self.by_model.push((model.to_path_buf(), VecDeque::new()));
                self.by_model.len() - 1
            }
        };
        &mut self.by_model[at].1
    }

    fn is_empty(&self) -> bool {
        self.by_model.iter().all(|(_, t)| t.is_empty())
    }

    /// Puts tasks back at the front of their model's queue, in their order.
    fn put_back(&mut self, mut tasks: Vec<Queued>) {
        tasks.sort_by_key(|q| q.task.key);
        for q in tasks.into_iter().rev() {
            let model = q.task.model.clone();
            self.queue_of(&model).push_front(q);
        }
    }
}

/// The tasks of every worker, and a signal for workers waiting for tasks to come back.
struct Queue {
    state: Mutex<State>,
    changed: Condvar,
}

impl Queue {
    fn new(tasks: Vec<Task>) -> Queue {
        let mut state = State::default();
        for t in tasks {
            let model = t.model.clone();
            state.queue_of(&model).push_back(Queued::new(t));
        }
        Queue {
            state: Mutex::new(state),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next job for `loaded` if any is left (no session rebuild), else the next job of any
    /// model `worker` has not failed to load; with it, the later jobs of that model that can share
    /// its UNet calls, up to `limit` images in all (see [`group::pick`]). Empty when there is none.
    #[cfg(test)]
    fn take(&self, worker: usize, loaded: Option<&Path>, limit: usize) -> Vec<Queued> {
        let mut s = self.lock();
        Self::take_locked(&mut s, worker, loaded, limit)
    }

    fn take_locked(
        s: &mut State,
        worker: usize,
        loaded: Option<&Path>,
        limit: usize,
    ) -> Vec<Queued> {
        let open = |t: &VecDeque<Queued>| t.iter().any(|q| s.may_take(worker, q));
        let at = loaded
            .and_then(|m| s.by_model.iter().position(|(k, t)| k == m && open(t)))
            .or_else(|| s.by_model.iter().position(|(_, t)| open(t)));
        let Some(at) = at else {
            return Vec::new();
        };
        let allowed: Vec<usize> = (0..s.by_model[at].1.len())
            .filter(|&i| s.may_take(worker, &s.by_model[at].1[i]))
            .collect();
        let tasks = &mut s.by_model[at].1;
        let candidates: Vec<(Option<&ShareKey>, u32)> = allowed
            .iter()
            .map(|&i| (tasks[i].share.as_ref(), tasks[i].task.job.batch))
            .collect();
        let picked = group::pick(&candidates, limit);
        // Highest position first, so the lower ones stay where they are.
        let mut out: Vec<Queued> = picked
            .iter()
            .rev()
            .filter_map(|&i| tasks.remove(allowed[i]))
            .collect();
        out.reverse();
        out
    }

    /// What `worker` does next: a group to run, tasks to fail, or nothing (the queue is empty
    /// and no worker can put tasks back, or `stop` is set). Waits while the only tasks left are
    /// ones it cannot load and another worker may yet run or put back.
    fn next(&self, worker: usize, loaded: Option<&Path>, limit: usize, stop: &AtomicBool) -> Next {
        let mut s = self.lock();
        loop {
            if stop.load(Ordering::Acquire) {
                return Next::Done;
            }
            let hopeless = s.take_hopeless();
            if !hopeless.is_empty() {
                return Next::Fail(hopeless);
            }
            let group = Self::take_locked(&mut s, worker, loaded, limit);
            if !group.is_empty() {
                s.busy += 1;
                return Next::Run(group);
            }
            if s.busy == 0 && s.is_empty() {
                return Next::Done;
            }
            // Polled as well, so that `stop` is seen without a notification.
            s = match self.changed.wait_timeout(s, Duration::from_millis(50)) {
                Ok((s, _)) => s,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// `worker` is done with a group: `back` goes to the front of the queue for the others, and
    /// `refused` (a model and why) records a model it could not load.
    fn give_back(&self, worker: usize, back: Vec<Queued>, refused: Option<(PathBuf, String)>) {
        let mut s = self.lock();
        s.busy = s.busy.saturating_sub(1);
        if let Some((model, why)) = refused {
            s.refused.entry(model).or_default().push((worker, why));
        }
        s.put_back(back);
        drop(s);
        self.changed.notify_all();
    }

    /// `q` failed on `worker`, saying `why`: it is to run again on a device it has not failed on
    /// the first time it fails while such a device is running; else it fails for good.
    fn after_failure(&self, worker: usize, q: &mut Queued, why: String) -> AfterFailure {
        let s = self.lock();
        q.failed_on.push(worker);
        if q.first_error.is_none() && s.anyone_takes(q) {
            q.first_error = Some(why.clone());
            return AfterFailure::Again(q.task.key, why);
        }
        let why = match &q.first_error {
            Some(first) if *first != why => format!("{why} (before that: {first})"),
            _ => why,
        };
        AfterFailure::Failed(q.task.key, why)
    }

    fn join(&self, worker: usize) {
        self.lock().alive.push(worker);
    }

    /// `worker` takes no more tasks: models only it could load may now be hopeless.
    fn leave(&self, worker: usize) {
        self.lock().alive.retain(|&w| w != worker);
        self.changed.notify_all();
    }
}

/// Starts one worker per device over `tasks`, each running up to `unet_batch` images of
/// compatible jobs together. A model one device cannot load goes to the other devices, and so
/// does a job that fails on one (or whose engine stopped), once; a model no device can load fails
/// its jobs. Setting `stop` ends the workers after the current step of their
/// running jobs; jobs not started are left out of the reports.
pub fn run<L: Loader>(
    loader: Arc<L>,
    devices: &[Device],
    tasks: Vec<Task>,
    unet_batch: usize,
    stop: Arc<AtomicBool>,
) -> Receiver<Report> {
    let (tx, rx) = channel();
    let queue = Arc::new(Queue::new(tasks));
    // Every worker counts before any starts, so none decides a model is hopeless too early.
    for i in 0..devices.len() {
        queue.join(i);
    }
    for (i, &device) in devices.iter().enumerate() {
        let (loader, mine, stop, tx) = (loader.clone(), queue.clone(), stop.clone(), tx.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("stipple-batch-{i}"))
            .spawn(move || {
                let me = Worker {
                    index: i,
                    device,
                    queue: &mine,
                    tx: &tx,
                };
                me.run(&*loader, unet_batch, &stop);
            });
        if let Err(e) = spawned {
            // The other workers (if any) still drain the queue.
            tracing::error!("cannot start a worker for {device}: {e}");
            queue.leave(i);
        }
    }
    rx
}

struct Warm {
    model: PathBuf,
    handle: EngineHandle,
    events: UnboundedReceiver<Event>,
}

/// One device's worker: takes groups from the queue and runs them on its warm engine.
struct Worker<'a> {
    index: usize,
    device: Device,
    queue: &'a Queue,
    tx: &'a Sender<Report>,
}

impl Drop for Worker<'_> {
    fn drop(&mut self) {
        self.queue.leave(self.index);
    }
}

impl Worker<'_> {
    fn send(&self, r: Report) {
        let _ = self.tx.send(r);
    }

    fn ended(&self, key: usize, ending: Ending, seconds: f64) -> Report {
        Report::Ended {
            key,
            device: self.device,
            ending,
            seconds,
        }
    }

    fn run<L: Loader>(&self, loader: &L, unet_batch: usize, stop: &AtomicBool) {
        let mut warm: Option<Warm> = None;
        loop {
            let loaded = warm.as_ref().map(|w| w.model.clone());
            let group = match self
                .queue
                .next(self.index, loaded.as_deref(), unet_batch, stop)
            {
                Next::Done => break,
                Next::Fail(tasks) => {
                    for (t, why) in tasks {
                        self.send(self.ended(t.key, Ending::Failed(why), 0.0));
                    }
                    continue;
                }
                Next::Run(group) => group,
            };
            let Some(model) = group.first().map(|q| q.task.model.clone()) else {
                self.queue.give_back(self.index, Vec::new(), None);
                continue;
            };
            if warm.as_ref().map(|w| &w.model) != Some(&model) {
                if let Some(w) = warm.take() {
                    w.handle.shutdown_and_wait();
                }
                match load(loader, &model, self.device, &|r| self.send(r)) {
                    Ok(w) => warm = Some(w),
                    Err(msg) => {
                        // Another device may load it: its jobs go back to the queue.
                        self.send(Report::Refused {
                            device: self.device,
                            model: model.clone(),
                            message: msg.clone(),
                        });
                        let refused = Some((model, msg));
                        self.queue.give_back(self.index, group, refused);
                        continue;
                    }
                }
            }
            let Some(w) = warm.as_mut() else {
                self.queue.give_back(self.index, group, None);
                break;
            };
            let (again, lost) = self.run_group(w, group, stop);
            if lost {
                warm = None;
            }
            self.queue.give_back(self.index, again, None);
        }
        // Waits for the engine thread, so its CUDA sessions are freed before the process exits
        // (freed during exit, after the driver shut down, `stipple batch` ended with SIGSEGV on
        // the GPU).
        if let Some(w) = warm {
            w.handle.shutdown_and_wait();
        }
    }

    /// Runs `group` on `w`, reporting as it goes; returns the jobs that failed and are to run
    /// again on another device ([`Queue::after_failure`]; when the engine stopped, every one left
    /// unfinished failed) and whether it stopped.
    fn run_group(
        &self,
        w: &mut Warm,
        mut group: Vec<Queued>,
        stop: &AtomicBool,
    ) -> (Vec<Queued>, bool) {
        let t0 = Instant::now();
        let ids = w
            .handle
            .submit_group(group.iter().map(|q| q.task.job.clone()).collect());
        let place = |id: JobId| ids.iter().position(|&i| i == id);
        let mut open = vec![true; ids.len()];
        let mut again = vec![false; ids.len()];
        let mut lost = false;
        while open.contains(&true) {
            let (p, report) = match w.events.blocking_recv() {
                None => {
                    lost = true;
                    let why = format!("the engine on {} stopped", self.device);
                    for p in 0..open.len() {
                        if !std::mem::replace(&mut open[p], false) {
                            continue;
                        }
                        let r = self.failed(&mut group[p], why.clone(), t0, &mut again[p]);
                        self.send(r);
                    }
                    break;
                }
                Some(event) => {
                    if stop.load(Ordering::Acquire) {
                        // The runner checks before each step, so the step under way finishes
                        // first.
                        w.handle.interrupt();
                    }
                    let Some((id, report)) = self.report(event, t0) else {
                        continue;
                    };
                    let Some(p) = place(id) else { continue };
                    (p, report)
                }
            };
            let key = group[p].task.key;
            let report = match report {
                Report::Ended {
                    ending: Ending::Failed(why),
                    ..
                } => {
                    open[p] = false;
                    self.failed(&mut group[p], why, t0, &mut again[p])
                }
                mut r => {
                    match &mut r {
                        Report::Step { key: k, .. } | Report::Image { key: k, .. } => *k = key,
                        Report::Ended { key: k, .. } => {
                            *k = key;
                            open[p] = false;
                        }
                        _ => {}
                    }
                    r
                }
            };
            self.send(report);
        }
        let back = group
            .into_iter()
            .zip(again)
            .filter_map(|(q, a)| a.then_some(q))
            .collect();
        (back, lost)
    }

    /// An engine event as a report (its key still to be set), with the job it is about.
    fn report(&self, event: Event, t0: Instant) -> Option<(JobId, Report)> {
        let device = self.device;
        let seconds = t0.elapsed().as_secs_f64();
        Some(match event {
            Event::Step(p) => (
                p.id,
                Report::Step {
                    key: 0,
                    device,
                    image: p.image,
                    step: p.step,
                    steps: p.steps,
                },
            ),
            Event::Image {
                id,
                index,
                seed,
                image,
                infotext,
            } => (
                id,
                Report::Image {
                    key: 0,
                    index,
                    seed,
                    image,
                    infotext,
                },
            ),
            Event::Finished { id } => (id, self.ended(0, Ending::Done, seconds)),
            Event::Failed { id, message } => (id, self.ended(0, Ending::Failed(message), seconds)),
            Event::Cancelled { id } => (id, self.ended(0, Ending::Cancelled, seconds)),
            _ => return None,
        })
    }

    /// What to report of `q`'s failure: it runs again elsewhere (`again` is set) or it ended.
    fn failed(&self, q: &mut Queued, why: String, t0: Instant, again: &mut bool) -> Report {
        match self.queue.after_failure(self.index, q, why) {
            AfterFailure::Again(key, why) => {
                *again = true;
                Report::Requeued {
                    key,
                    device: self.device,
                    why,
                }
            }
            AfterFailure::Failed(key, why) => {
                self.ended(key, Ending::Failed(why), t0.elapsed().as_secs_f64())
            }
        }
    }
}

/// Loads `model` on `device` and starts its engine, reporting the load.
fn load<L: Loader>(
    loader: &L,
    model: &Path,
    device: Device,
    send: &dyn Fn(Report),
) -> Result<Warm, String> {
    let t0 = Instant::now();
    match loader.load(model, device) {
        Ok(runner) => {
            let (handle, events) = Engine::spawn(runner);
            send(Report::Loaded {
                device,
                model: model.to_path_buf(),
                seconds: t0.elapsed().as_secs_f64(),
            });
            Ok(Warm {
                model: model.to_path_buf(),
                handle,
                events,
            })
        }
        Err(msg) => Err(format!(
            "cannot load the model {} on {device}: {msg}",
            model.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Outcome, Reporter};
    use crate::job::{Progress, Sampler};
    use std::sync::atomic::AtomicUsize;

    /// Makes one 1×1 image per job after a short sleep; fails jobs whose prompt is "fail".
    struct Fake {
        device: Device,
        /// Fails every job, as a broken GPU would.
        failing: bool,
        /// The size of every group of jobs it was handed.
        groups: Arc<Mutex<Vec<usize>>>,
    }

    impl Runner for Fake {
        fn run_group(&mut self, jobs: &[(JobId, Job)], out: &Reporter<'_>) -> Vec<Outcome> {
            self.groups.lock().unwrap().push(jobs.len());
            jobs.iter()
                .map(|(id, job)| self.run(job, &out.for_job(*id)))
                .collect()
        }

        fn run(&mut self, job: &Job, out: &Reporter<'_>) -> Outcome {
            if job.prompt == "fail" {
                return Outcome::Failed("asked to fail".into());
            }
            if self.failing {
                std::thread::sleep(std::time::Duration::from_millis(2));
                return Outcome::Failed(format!("CUDA failure on {}", self.device));
            }
            for step in 1..=job.steps {
                if out.cancel.get() == crate::engine::Stop::Interrupt {
                    return Outcome::Cancelled;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
                out.send(Event::Step(Progress {
                    id: out.id,
                    image: 0,
                    step,
                    steps: job.steps,
                    it_per_s: 1.0,
                }));
            }
            let tag = match self.device {
                Device::Cuda(i) => i as u8,
                _ => 255,
            };
            out.send(Event::Image {
                id: out.id,
                index: 0,
                seed: job.seed,
                image: RgbImage {
                    width: 1,
                    height: 1,
                    pixels: vec![tag; 3],
                },
                infotext: String::new(),
            });
            Outcome::Done
        }
    }

    #[derive(Default)]
    struct FakeLoader {
        loads: AtomicUsize,
        groups: Arc<Mutex<Vec<usize>>>,
        /// A device no model loads on.
        no_load: Option<Device>,
        /// A device whose engines fail every job.
        failing: Option<Device>,
    }

    impl Loader for FakeLoader {
        type Runner = Fake;
        fn load(&self, model: &Path, device: Device) -> Result<Fake, String> {
            if model == Path::new("broken") {
                return Err("no such model".into());
            }
            if self.no_load == Some(device) {
                return Err("out of device memory".into());
            }
            self.loads.fetch_add(1, Ordering::SeqCst);
            Ok(Fake {
                device,
                failing: self.failing == Some(device),
                groups: self.groups.clone(),
            })
        }
    }

    fn task(key: usize, model: &str, prompt: &str) -> Task {
        Task {
            key,
            model: model.into(),
            job: Job {
                prompt: prompt.into(),
                negative: String::new(),
                sampler: Sampler::Euler,
                schedule: Default::default(),
                sde_noise: Default::default(),
                zero_snr: false,
                sigmas: Default::default(),
                steps: 3,
                cfg: 7.0,
                width: 8,
                height: 8,
                seed: key as u64,
                batch: 1,
                init: None,
                hires: None,
            },
        }
    }

    #[test]
    fn every_task_ends_once_and_all_devices_take_work() {
        let loader = Arc::new(FakeLoader::default());
        let mut tasks: Vec<Task> = (0..40).map(|k| task(k, "a", "x")).collect();
        tasks[7] = task(7, "a", "fail");
        tasks.push(task(40, "broken", "x"));
        tasks.push(task(41, "broken", "x"));
        let devices = [Device::Cuda(0), Device::Cuda(1)];
        let rx = run(
            loader.clone(),
            &devices,
            tasks,
            1,
            Arc::new(AtomicBool::new(false)),
        );
        let mut ended = vec![0; 42];
        let mut image_devices = std::collections::HashSet::new();
        let mut failed = Vec::new();
        for r in rx {
            match r {
                Report::Ended { key, ending, .. } => {
                    ended[key] += 1;
                    if let Ending::Failed(m) = ending {
                        failed.push((key, m));
                    }
                }
                Report::Image { image, .. } => {
                    image_devices.insert(image.pixels[0]);
                }
                _ => {}
            }
        }
        assert!(ended.iter().all(|&n| n == 1), "{ended:?}");
        failed.sort();
        assert_eq!(failed.len(), 3, "{failed:?}");
        assert_eq!(failed[0], (7, "asked to fail".to_string()));
        assert!(failed[1].1.contains("no such model"), "{failed:?}");
        assert_eq!(image_devices.len(), 2, "both devices made images");
        // Model "a" once per device: a warm engine is reused, not reloaded per job.
        assert_eq!(loader.loads.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_worker_prefers_the_model_it_has_loaded() {
        let q = Queue::new(vec![
            task(0, "a", "x"),
            task(1, "b", "x"),
            task(2, "a", "x"),
        ]);
        let keys = |g: Vec<Queued>| g.iter().map(|q| q.task.key).collect::<Vec<_>>();
        assert_eq!(keys(q.take(0, None, 1)), [0]);
        assert_eq!(keys(q.take(0, Some(Path::new("a")), 1)), [2]);
        assert_eq!(keys(q.take(0, Some(Path::new("a")), 1)), [1]);
        assert!(q.take(0, None, 1).is_empty());
    }

    #[test]
    fn stopping_interrupts_the_running_job_and_starts_no_more() {
        let loader = Arc::new(FakeLoader::default());
        let mut tasks: Vec<Task> = (0..5).map(|k| task(k, "a", "x")).collect();
        for t in &mut tasks {
            t.job.steps = 1000;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let rx = run(loader, &[Device::Cpu], tasks, 1, stop.clone());
        let mut endings = Vec::new();
        for r in rx {
            match r {
                Report::Step { step: 3, .. } => stop.store(true, Ordering::Release),
                Report::Ended { key, ending, .. } => endings.push((key, ending)),
                _ => {}
            }
        }
        assert_eq!(endings.len(), 1, "{endings:?}");
        assert!(matches!(endings[0], (0, Ending::Cancelled)), "{endings:?}");
    }

    #[test]
    fn compatible_jobs_run_as_groups_and_each_ends_once_in_order() {
        let loader = Arc::new(FakeLoader::default());
        let mut tasks: Vec<Task> = (0..6).map(|k| task(k, "a", "x")).collect();
        tasks[1].job.prompt = "another prompt".into();
        tasks[2] = task(2, "a", "fail");
        // Other steps: cannot share the first group's UNet calls.
        tasks[4].job.steps = 5;
        let stop = Arc::new(AtomicBool::new(false));
        let rx = run(loader.clone(), &[Device::Cpu], tasks, 4, stop);
        let (mut ended, mut images) = (Vec::new(), Vec::new());
        for r in rx {
            match r {
                Report::Ended { key, ending, .. } => ended.push((key, ending)),
                Report::Image { key, .. } => images.push(key),
                _ => {}
            }
        }
        // Groups: jobs 0-3 (four images, the limit), then 4 alone (other steps), then 5.
        assert_eq!(*loader.groups.lock().unwrap(), [4]);
        let keys: Vec<usize> = ended.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, [0, 1, 2, 3, 4, 5]);
        for (k, e) in &ended {
            let failed = matches!(e, Ending::Failed(m) if m == "asked to fail");
            assert_eq!(failed, *k == 2, "job {k}: {e:?}");
            assert!(failed || matches!(e, Ending::Done), "job {k}: {e:?}");
        }
        // The failed job made no image; the others of its group did, in order.
        assert_eq!(images, [0, 1, 3, 4, 5]);
    }

    /// Every report of a run over `devices`, in order.
    fn reports(loader: FakeLoader, devices: &[Device], tasks: Vec<Task>) -> Vec<Report> {
        let stop = Arc::new(AtomicBool::new(false));
        run(Arc::new(loader), devices, tasks, 1, stop)
            .into_iter()
            .collect()
    }

    /// Each task's endings, by key.
    fn endings(reports: &[Report], n: usize) -> Vec<Vec<String>> {
        let mut out = vec![Vec::new(); n];
        for r in reports {
            if let Report::Ended { key, ending, .. } = r {
                out[*key].push(match ending {
                    Ending::Done => "done".to_string(),
                    Ending::Failed(m) => m.clone(),
                    Ending::Cancelled => "cancelled".to_string(),
                });
            }
        }
        out
    }

    #[test]
    fn a_device_that_cannot_load_the_model_leaves_its_jobs_to_the_others() {
        let loader = FakeLoader {
            no_load: Some(Device::Cuda(1)),
            ..FakeLoader::default()
        };
        let tasks: Vec<Task> = (0..12).map(|k| task(k, "a", "x")).collect();
        let got = reports(loader, &[Device::Cuda(0), Device::Cuda(1)], tasks);
        for (k, e) in endings(&got, 12).iter().enumerate() {
            assert_eq!(e, &["done"], "job {k}");
        }
        let refused: Vec<&String> = got
            .iter()
            .filter_map(|r| match r {
                Report::Refused {
                    device, message, ..
                } if *device == Device::Cuda(1) => Some(message),
                _ => None,
            })
            .collect();
        assert_eq!(refused.len(), 1, "one load tried on cuda:1: {refused:?}");
        assert!(refused[0].contains("out of device memory"), "{refused:?}");
        // Every image came from cuda:0.
        assert!(got.iter().all(|r| !matches!(r,
            Report::Image { image, .. } if image.pixels[0] != 0)));
    }

    #[test]
    fn jobs_that_fail_on_a_broken_device_run_again_on_another_and_end_once() {
        let loader = FakeLoader {
            failing: Some(Device::Cuda(1)),
            ..FakeLoader::default()
        };
        let mut tasks: Vec<Task> = (0..16).map(|k| task(k, "a", "x")).collect();
        tasks[5] = task(5, "a", "fail");
        let got = reports(loader, &[Device::Cuda(0), Device::Cuda(1)], tasks);
        let ends = endings(&got, 16);
        for (k, e) in ends.iter().enumerate() {
            if k == 5 {
                assert_eq!(e.len(), 1, "{e:?}");
                assert!(e[0].contains("asked to fail"), "{e:?}");
            } else {
                assert_eq!(e, &["done"], "job {k}");
            }
        }
        let requeued: Vec<usize> = got
            .iter()
            .filter_map(|r| match r {
                // Job 5 fails everywhere: its first failure may be on either device.
                Report::Requeued { key: 5, .. } => None,
                Report::Requeued { key, device, why } => {
                    assert_eq!(*device, Device::Cuda(1));
                    assert!(why.contains("CUDA failure on cuda:1"), "{why}");
                    Some(*key)
                }
                _ => None,
            })
            .collect();
        assert!(!requeued.is_empty(), "cuda:1 took at least one job");
        // Each requeued job's end comes after its requeue, and its images after that are cuda:0's.
        for k in &requeued {
            let at = |f: &dyn Fn(&Report) -> bool| got.iter().position(f);
            let back = at(&|r| matches!(r, Report::Requeued { key, .. } if key == k));
            let end = at(&|r| matches!(r, Report::Ended { key, .. } if key == k));
            assert!(back < end, "job {k}");
        }
    }

    #[test]
    fn a_job_that_fails_on_every_device_fails_once() {
        let loader = FakeLoader {
            failing: Some(Device::Cuda(1)),
            ..FakeLoader::default()
        };
        let tasks = vec![task(0, "a", "x"), task(1, "a", "fail")];
        // One device: no second try.
        let got = reports(FakeLoader::default(), &[Device::Cuda(0)], tasks.clone());
        assert!(!got.iter().any(|r| matches!(r, Report::Requeued { .. })));
        assert_eq!(endings(&got, 2)[1], ["asked to fail"]);
        // Two devices, one broken: job 1 fails on both and ends once.
        let got = reports(loader, &[Device::Cuda(1), Device::Cuda(0)], tasks);
        let ends = endings(&got, 2);
        assert_eq!(ends[0], ["done"]);
        assert_eq!(ends[1].len(), 1, "{ends:?}");
        let requeues = got
            .iter()
            .filter(|r| matches!(r, Report::Requeued { .. }))
            .count();
        assert!(requeues <= 2, "at most one retry per job: {requeues}");
    }

    #[test]
    fn a_model_no_device_loads_fails_its_jobs_once_naming_each_device() {
        let tasks = vec![task(0, "broken", "x"), task(1, "a", "x")];
        let got = reports(
            FakeLoader::default(),
            &[Device::Cuda(0), Device::Cuda(1)],
            tasks,
        );
        let ends = endings(&got, 2);
        assert_eq!(ends[1], ["done"]);
        assert_eq!(ends[0].len(), 1, "{ends:?}");
        assert!(
            ends[0][0].contains("on cuda:0") && ends[0][0].contains("on cuda:1"),
            "{ends:?}"
        );
    }
}
