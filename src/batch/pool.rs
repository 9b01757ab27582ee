//! A work queue over several engines: one worker thread per device, each keeping one warm engine and
//! taking the next job for the model it has loaded before switching models, together with the
//! later jobs that can share its UNet calls ([`super::group`]), up to the UNet batch of images.
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
use std::sync::{Arc, Mutex};
use std::time::Instant;
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
}

/// A queued task with what decides whom it may share UNet calls with.
type Queued = (Task, Option<ShareKey>);

/// Jobs grouped by model, models in order of first appearance.
struct Queue {
    by_model: Mutex<Vec<(PathBuf, VecDeque<Queued>)>>,
}

impl Queue {
    fn new(tasks: Vec<Task>) -> Queue {
        let mut by_model: Vec<(PathBuf, VecDeque<Queued>)> = Vec::new();
        for t in tasks {
            let key = ShareKey::of(&t.job);
            match by_model.iter_mut().find(|(m, _)| *m == t.model) {
                Some((_, q)) => q.push_back((t, key)),
                None => by_model.push((t.model.clone(), VecDeque::from([(t, key)]))),
            }
        }
        Queue {
            by_model: Mutex::new(by_model),
        }
    }

    /// The next job for `loaded` if any is left (no session rebuild), else the next job of any
    /// model; with it, the later jobs of that model that can share its UNet calls, up to `limit`
    /// images in all (see [`group::pick`]). Empty when the queue is.
    fn take(&self, loaded: Option<&Path>, limit: usize) -> Vec<Task> {
        let mut q = self.by_model.lock().unwrap_or_else(|p| p.into_inner());
        let at = loaded
            .and_then(|m| q.iter().position(|(k, t)| k == m && !t.is_empty()))
            .or_else(|| q.iter().position(|(_, t)| !t.is_empty()));
        let Some(at) = at else {
            return Vec::new();
        };
        let tasks = &mut q[at].1;
        let candidates: Vec<(Option<&ShareKey>, u32)> = tasks
            .iter()
            .map(|(t, k)| (k.as_ref(), t.job.batch))
            .collect();
        let picked = group::pick(&candidates, limit);
        // Highest position first, so the lower ones stay where they are.
        let mut out: Vec<Task> = picked
            .iter()
            .rev()
            .filter_map(|&i| tasks.remove(i).map(|(t, _)| t))
            .collect();
        out.reverse();
        out
    }
}

/// Starts one worker per device over `tasks`, each running up to `unet_batch` images of
/// compatible jobs together. Setting `stop` ends the workers after the current step of their
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
    for (i, &device) in devices.iter().enumerate() {
        let (loader, queue, stop, tx) = (loader.clone(), queue.clone(), stop.clone(), tx.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("stipple-batch-{i}"))
            .spawn(move || worker(&*loader, device, &queue, unet_batch, &stop, &tx));
        if let Err(e) = spawned {
            // Other workers (if any) still drain the queue; with none, the caller sees no reports.
            tracing::error!("cannot start a worker for {device}: {e}");
        }
    }
    rx
}

struct Warm {
    model: PathBuf,
    handle: EngineHandle,
    events: UnboundedReceiver<Event>,
}

fn worker<L: Loader>(
    loader: &L,
    device: Device,
    queue: &Queue,
    unet_batch: usize,
    stop: &AtomicBool,
    tx: &Sender<Report>,
) {
    let mut warm: Option<Warm> = None;
    // A model that failed to load fails its other jobs at once instead of loading again each time.
    let mut broken: HashMap<PathBuf, String> = HashMap::new();
    let send = |r: Report| {
        let _ = tx.send(r);
    };
    while !stop.load(Ordering::Acquire) {
        let group = queue.take(warm.as_ref().map(|w| w.model.as_path()), unet_batch);
        let Some(model) = group.first().map(|t| t.model.clone()) else {
            break;
        };
        let ended = |key, ending, seconds| Report::Ended {
            key,
            device,
            ending,
            seconds,
        };
        if warm.as_ref().map(|w| &w.model) != Some(&model) {
            if let Some(w) = warm.take() {
                w.handle.shutdown_and_wait();
            }
            let loaded = match broken.get(&model) {
                Some(msg) => Err(msg.clone()),
                None => load(loader, &model, device, &send).inspect_err(|msg| {
                    broken.insert(model.clone(), msg.clone());
                }),
            };
            match loaded {
                Ok(w) => warm = Some(w),
                Err(msg) => {
                    for t in &group {
                        send(ended(t.key, Ending::Failed(msg.clone()), 0.0));
                    }
                    continue;
                }
            }
        }
        let Some(w) = warm.as_mut() else { break };
        let t0 = Instant::now();
        let ids = w
            .handle
            .submit_group(group.iter().map(|t| t.job.clone()).collect());
        let place = |id: JobId| ids.iter().position(|&i| i == id);
        let mut open = vec![true; ids.len()];
        let mut lost = false;
        while open.contains(&true) {
            let Some(event) = w.events.blocking_recv() else {
                // Every job of the group not ended yet ends here.
                for (t, _) in group.iter().zip(&open).filter(|(_, &o)| o) {
                    send(ended(
                        t.key,
                        Ending::Failed("the engine stopped".into()),
                        t0.elapsed().as_secs_f64(),
                    ));
                }
                lost = true;
                break;
            };
            if stop.load(Ordering::Acquire) {
                // The runner checks before each step, so the step under way finishes first.
                w.handle.interrupt();
            }
            let (id, report) = match event {
                Event::Step(p) => (
                    p.id,
                    Some(Report::Step {
                        key: 0,
                        device,
                        image: p.image,
                        step: p.step,
                        steps: p.steps,
                    }),
                ),
                Event::Image {
                    id,
                    index,
                    seed,
                    image,
                    infotext,
                } => (
                    id,
                    Some(Report::Image {
                        key: 0,
                        index,
                        seed,
                        image,
                        infotext,
                    }),
                ),
                Event::Finished { id } => (id, Some(ended(0, Ending::Done, 0.0))),
                Event::Failed { id, message } => (id, Some(ended(0, Ending::Failed(message), 0.0))),
                Event::Cancelled { id } => (id, Some(ended(0, Ending::Cancelled, 0.0))),
                _ => (0, None),
            };
            let (Some(p), Some(mut report)) = (place(id), report) else {
                continue;
            };
            match &mut report {
                Report::Step { key, .. } | Report::Image { key, .. } => *key = group[p].key,
                Report::Ended { key, seconds, .. } => {
                    *key = group[p].key;
                    *seconds = t0.elapsed().as_secs_f64();
                    open[p] = false;
                }
                Report::Loaded { .. } => {}
            }
            send(report);
        }
        if lost {
            warm = None;
        }
    }
    // Waits for the engine thread, so its CUDA sessions are freed before the process exits (freed
    // during exit, after the driver shut down, `stipple batch` ended with SIGSEGV on the GPU).
    if let Some(w) = warm {
        w.handle.shutdown_and_wait();
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
    }

    impl Loader for FakeLoader {
        type Runner = Fake;
        fn load(&self, model: &Path, device: Device) -> Result<Fake, String> {
            if model == Path::new("broken") {
                return Err("no such model".into());
            }
            self.loads.fetch_add(1, Ordering::SeqCst);
            Ok(Fake {
                device,
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
        let keys = |g: Vec<Task>| g.iter().map(|t| t.key).collect::<Vec<_>>();
        assert_eq!(keys(q.take(None, 1)), [0]);
        assert_eq!(keys(q.take(Some(Path::new("a")), 1)), [2]);
        assert_eq!(keys(q.take(Some(Path::new("a")), 1)), [1]);
        assert!(q.take(None, 1).is_empty());
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
}
