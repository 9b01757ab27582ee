//! A work queue over several engines: one worker thread per device, each keeping one warm engine and
//! taking the next job for the model it has loaded before switching models.
//!
//! [`run`] starts the workers and returns the [`Report`] stream; it ends when the queue is empty or
//! the stop flag is set (then running jobs are interrupted at their next step). [`Loader`] makes
//! runners, so the queue can be tested without ONNX Runtime.

use crate::engine::{Engine, EngineHandle, Runner};
use crate::job::{Event, Job, RgbImage};
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

/// Jobs grouped by model, models in order of first appearance.
struct Queue {
    by_model: Mutex<Vec<(PathBuf, VecDeque<Task>)>>,
}

impl Queue {
    fn new(tasks: Vec<Task>) -> Queue {
        let mut by_model: Vec<(PathBuf, VecDeque<Task>)> = Vec::new();
        for t in tasks {
            match by_model.iter_mut().find(|(m, _)| *m == t.model) {
                Some((_, q)) => q.push_back(t),
                None => by_model.push((t.model.clone(), VecDeque::from([t]))),
            }
        }
        Queue {
            by_model: Mutex::new(by_model),
        }
    }

    /// The next job for `loaded` if any is left (no session rebuild), else the next job of any model.
    fn take(&self, loaded: Option<&Path>) -> Option<Task> {
        let mut q = self.by_model.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = loaded {
            if let Some((_, tasks)) = q.iter_mut().find(|(k, _)| k == m) {
                if let Some(t) = tasks.pop_front() {
                    return Some(t);
                }
            }
        }
        q.iter_mut().find_map(|(_, tasks)| tasks.pop_front())
    }
}

/// Starts one worker per device over `tasks`. Setting `stop` ends the workers after the current
/// step of their running job; jobs not started are left out of the reports.
pub fn run<L: Loader>(
    loader: Arc<L>,
    devices: &[Device],
    tasks: Vec<Task>,
    stop: Arc<AtomicBool>,
) -> Receiver<Report> {
    let (tx, rx) = channel();
    let queue = Arc::new(Queue::new(tasks));
    for (i, &device) in devices.iter().enumerate() {
        let (loader, queue, stop, tx) = (loader.clone(), queue.clone(), stop.clone(), tx.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("stipple-batch-{i}"))
            .spawn(move || worker(&*loader, device, &queue, &stop, &tx));
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
        let Some(task) = queue.take(warm.as_ref().map(|w| w.model.as_path())) else {
            break;
        };
        let ended = |ending, seconds| Report::Ended {
            key: task.key,
            device,
            ending,
            seconds,
        };
        if warm.as_ref().map(|w| &w.model) != Some(&task.model) {
            if let Some(w) = warm.take() {
                w.handle.shutdown();
            }
            if let Some(msg) = broken.get(&task.model) {
                send(ended(Ending::Failed(msg.clone()), 0.0));
                continue;
            }
            let t0 = Instant::now();
            match loader.load(&task.model, device) {
                Ok(runner) => {
                    let (handle, events) = Engine::spawn(runner);
                    warm = Some(Warm {
                        model: task.model.clone(),
                        handle,
                        events,
                    });
                    send(Report::Loaded {
                        device,
                        model: task.model.clone(),
                        seconds: t0.elapsed().as_secs_f64(),
                    });
                }
                Err(msg) => {
                    let msg = format!(
                        "cannot load the model {} on {device}: {msg}",
                        task.model.display()
                    );
                    broken.insert(task.model.clone(), msg.clone());
                    send(ended(Ending::Failed(msg), 0.0));
                    continue;
                }
            }
        }
        let Some(w) = warm.as_mut() else { break };
        let t0 = Instant::now();
        let id = w.handle.submit(task.job.clone());
        let ending = loop {
            let Some(event) = w.events.blocking_recv() else {
                break Ending::Failed("the engine stopped".into());
            };
            if stop.load(Ordering::Acquire) {
                // The runner checks before each step, so the step under way finishes first.
                w.handle.interrupt();
            }
            match event {
                Event::Step(p) if p.id == id => send(Report::Step {
                    key: task.key,
                    device,
                    image: p.image,
                    step: p.step,
                    steps: p.steps,
                }),
                Event::Image {
                    id: i,
                    index,
                    seed,
                    image,
                    infotext,
                } if i == id => send(Report::Image {
                    key: task.key,
                    index,
                    seed,
                    image,
                    infotext,
                }),
                Event::Finished { id: i } if i == id => break Ending::Done,
                Event::Failed { id: i, message } if i == id => break Ending::Failed(message),
                Event::Cancelled { id: i } if i == id => break Ending::Cancelled,
                _ => {}
            }
        };
        let lost = matches!(&ending, Ending::Failed(m) if m == "the engine stopped");
        send(ended(ending, t0.elapsed().as_secs_f64()));
        if lost {
            warm = None;
        }
    }
    if let Some(w) = warm {
        w.handle.shutdown();
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
    }

    impl Runner for Fake {
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

    struct FakeLoader {
        loads: AtomicUsize,
    }

    impl Loader for FakeLoader {
        type Runner = Fake;
        fn load(&self, model: &Path, device: Device) -> Result<Fake, String> {
            if model == Path::new("broken") {
                return Err("no such model".into());
            }
            self.loads.fetch_add(1, Ordering::SeqCst);
            Ok(Fake { device })
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
                steps: 3,
                cfg: 7.0,
                width: 8,
                height: 8,
                seed: key as u64,
                batch: 1,
                init: None,
            },
        }
    }

    #[test]
    fn every_task_ends_once_and_all_devices_take_work() {
        let loader = Arc::new(FakeLoader {
            loads: AtomicUsize::new(0),
        });
        let mut tasks: Vec<Task> = (0..40).map(|k| task(k, "a", "x")).collect();
        tasks[7] = task(7, "a", "fail");
        tasks.push(task(40, "broken", "x"));
        tasks.push(task(41, "broken", "x"));
        let devices = [Device::Cuda(0), Device::Cuda(1)];
        let rx = run(
            loader.clone(),
            &devices,
            tasks,
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
        assert_eq!(q.take(None).unwrap().key, 0);
        assert_eq!(q.take(Some(Path::new("a"))).unwrap().key, 2);
        assert_eq!(q.take(Some(Path::new("a"))).unwrap().key, 1);
        assert!(q.take(None).is_none());
    }

    #[test]
    fn stopping_interrupts_the_running_job_and_starts_no_more() {
        let loader = Arc::new(FakeLoader {
            loads: AtomicUsize::new(0),
        });
        let mut tasks: Vec<Task> = (0..5).map(|k| task(k, "a", "x")).collect();
        for t in &mut tasks {
            t.job.steps = 1000;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let rx = run(loader, &[Device::Cpu], tasks, stop.clone());
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
}
