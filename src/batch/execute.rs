//! Running a planned batch: skip what the manifests list, queue the rest on the engines, save each
//! image as it arrives, list a job in the manifest once all its images are in place.
//!
//! [`execute`] is the run; [`image_names`] gives a job's output names (also for `--dry-run`).

use super::jobfile::Origin;
use super::manifest::{ImageRecord, Manifest};
use super::naming::NameFields;
use super::plan::Planned;
use super::pool::{self, Ending, Loader, Report, Task};
use super::report::{Reporter, ResultLine};
use super::store::Store;
use super::{invalid_line, signal, BatchError, Item};
use crate::job::Job;
use crate::live::LoraMethod;
use crate::pipeline::{EngineSpec, Generator};
use crate::prompt::LoraDirs;
use crate::runtime::{Device, Runtime, SessionOptions};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

pub struct Options {
    pub out: PathBuf,
    pub manifest: PathBuf,
    pub devices: Vec<Device>,
    /// Load-time options of every engine (each with its own device).
    pub session: SessionOptions,
    pub lora_method: LoraMethod,
    /// Images per UNet call at most: a job's batch, or compatible jobs run together.
    pub unet_batch: usize,
    pub lora_dirs: LoraDirs,
    pub ort_lib: Option<PathBuf>,
}

/// Loads [`Generator`]s. `lora_dirs` travels with it so that each engine can resolve `<lora:...>`
/// tags once the generator takes LoRA folders; the planner already resolves and fingerprints them.
pub struct GeneratorLoader {
    pub runtime: &'static Runtime,
    pub session: SessionOptions,
    pub lora_method: LoraMethod,
    pub unet_batch: usize,
    pub lora_dirs: LoraDirs,
}

impl Loader for GeneratorLoader {
    type Runner = Generator;
    fn load(&self, model: &Path, device: Device) -> Result<Generator, String> {
        let mut spec = EngineSpec::new(model)
            .with_session(SessionOptions {
                device,
                ..self.session.clone()
            })
            .with_lora_dirs(self.lora_dirs.roots.clone());
        spec.lora_method = self.lora_method;
        spec.unet_batch = self.unet_batch;
        Generator::load(spec, self.runtime).map_err(|e| e.to_string())
    }
}

/// Each image of a job: (path relative to the output folder, seed, index).
pub fn image_names(p: &Planned, origin: &Origin) -> Vec<(PathBuf, u64, u32)> {
    (0..p.job.batch)
        .map(|index| {
            let seed = p.job.seed.wrapping_add(u64::from(index));
            let rel = p.out.render(&NameFields {
                hash: p.hash.short(),
                seed,
                index,
                line: origin.line,
                item: origin.item,
            });
            (rel, seed, index)
        })
        .collect()
}

/// A manifest line: enough to find the images, replay the job and see where it ran.
#[derive(Serialize)]
struct ManifestLine<'a> {
    hash: &'a str,
    images: &'a [ImageRecord],
    source: &'a str,
    line: usize,
    item: usize,
    job: &'a Job,
    model: String,
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    vars: serde_json::Map<String, serde_json::Value>,
    device: String,
    seconds: f64,
    finished_unix: u64,
}

#[derive(Default)]
struct Progress {
    images: Vec<ImageRecord>,
    save_error: Option<String>,
}

fn base_line(status: &'static str, origin: &Origin, p: &Planned) -> ResultLine {
    ResultLine {
        status,
        source: origin.source.clone(),
        line: origin.line,
        item: origin.item,
        hash: Some(p.hash.0.clone()),
        ..Default::default()
    }
}

pub fn execute(
    items: Vec<Item>,
    finished: &HashSet<String>,
    opts: &Options,
) -> Result<(), BatchError> {
    let started = Instant::now();
    let total = items.len();
    let mut reporter = Reporter::without_bar();
    let (mut invalid, mut skipped) = (0usize, 0usize);
    let mut planned: Vec<(Origin, Planned)> = Vec::new();
    let mut queued: HashSet<String> = HashSet::new();
    let mut tasks = Vec::new();
    for it in items {
        match it.planned {
            Err(reason) => {
                invalid += 1;
                reporter.note(&format!("{}: {reason}", it.origin));
                reporter.result(&invalid_line(&it.origin, &reason));
            }
            Ok(p) if finished.contains(&p.hash.0) || queued.contains(&p.hash.0) => {
                // A repeated job makes the same images under the same names: once is enough.
                let status = if finished.contains(&p.hash.0) {
                    "skipped"
                } else {
                    "duplicate"
                };
                skipped += 1;
                reporter.result(&base_line(status, &it.origin, &p));
            }
            Ok(p) => {
                queued.insert(p.hash.0.clone());
                tasks.push(Task {
                    key: planned.len(),
                    model: p.model.clone(),
                    job: p.job.clone(),
                });
                planned.push((it.origin, p));
            }
        }
    }
    let to_run = tasks.len();
    let (mut done, mut failed, mut images_made) = (0usize, 0usize, 0usize);
    let mut fatal: Option<BatchError> = None;
    let mut interrupted = false;
    if to_run > 0 {
        let store = Store::new(&opts.out)?;
        let mut manifest = Manifest::open(&opts.manifest)?;
        let runtime = Runtime::get(
            opts.ort_lib.as_deref(),
            opts.devices.iter().any(|d| d.is_gpu()),
        )?;
        let stop = signal::install();
        reporter = Reporter::new(to_run);
        let loader = Arc::new(GeneratorLoader {
            runtime,
            session: opts.session.clone(),
            lora_method: opts.lora_method,
            unet_batch: opts.unet_batch,
            lora_dirs: opts.lora_dirs.clone(),
        });
        let reports = pool::run(loader, &opts.devices, tasks, opts.unet_batch, stop.clone());
        let mut progress: HashMap<usize, Progress> = HashMap::new();
        for report in reports {
            match report {
                Report::Loaded {
                    device,
                    model,
                    seconds,
                } => reporter.note(&format!(
                    "stipple batch: {} loaded on {device} in {seconds:.2} s",
                    model.display()
                )),
                // With one device its jobs fail at once, with the same message.
                Report::Refused { message, .. } if opts.devices.len() > 1 => reporter.note(
                    &format!("stipple batch: {message}; its jobs wait for another device"),
                ),
                Report::Refused { .. } => {}
                Report::Requeued { key, device, why } => {
                    // It runs again whole elsewhere; the images it saved are written again.
                    progress.remove(&key);
                    let (origin, _) = &planned[key];
                    reporter.note(&format!(
                        "stipple batch: {origin} failed on {device} ({why}); it runs again on another device"
                    ));
                }
                Report::Step {
                    key,
                    device,
                    image,
                    step,
                    steps,
                } => {
                    let (origin, p) = &planned[key];
                    reporter.step(&format!(
                        "{device}: {origin} image {}/{} step {step}/{steps}",
                        image + 1,
                        p.job.batch
                    ));
                }
                Report::Image {
                    key,
                    index,
                    seed,
                    image,
                    infotext,
                } => {
                    let (origin, p) = &planned[key];
                    let entry = progress.entry(key).or_default();
                    if entry.save_error.is_some() {
                        continue;
                    }
                    let rel = p.out.render(&NameFields {
                        hash: p.hash.short(),
                        seed,
                        index,
                        line: origin.line,
                        item: origin.item,
                    });
                    let mut record = p.job.clone();
                    record.seed = seed;
                    record.batch = 1;
                    let json = serde_json::to_string(&record).unwrap_or_default();
                    match store.save(&rel, &image, seed, &infotext, &json) {
                        Ok(_) => entry.images.push(ImageRecord {
                            path: rel,
                            seed,
                            index,
                        }),
                        Err(e) => entry.save_error = Some(e.to_string()),
                    }
                }
                Report::Ended {
                    key,
                    device,
                    ending,
                    seconds,
                } => {
                    let (origin, p) = &planned[key];
                    let got = progress.remove(&key).unwrap_or_default();
                    let mut line = base_line("done", origin, p);
                    line.device = Some(device.to_string());
                    line.seconds = Some(seconds);
                    let error = match ending {
                        Ending::Done => match got.save_error {
                            Some(e) => Some(e),
                            None if got.images.len() != p.job.batch as usize => Some(format!(
                                "{} of {} images were made",
                                got.images.len(),
                                p.job.batch
                            )),
                            None => None,
                        },
                        Ending::Failed(m) => Some(m),
                        Ending::Cancelled => {
                            interrupted = true;
                            line.status = "cancelled";
                            reporter.result(&line);
                            continue;
                        }
                    };
                    if let Some(e) = error {
                        failed += 1;
                        reporter.job_ended(&format!("stipple batch: {origin}: failed: {e}"));
                        // Without a bar, job_ended has printed it already.
                        if reporter.has_bar() {
                            reporter.note(&format!("{origin}: {e}"));
                        }
                        line.status = "failed";
                        line.error = Some(e);
                        reporter.result(&line);
                        continue;
                    }
                    let record = ManifestLine {
                        hash: &p.hash.0,
                        images: &got.images,
                        source: &origin.source,
                        line: origin.line,
                        item: origin.item,
                        job: &p.job,
                        model: p.model.display().to_string(),
                        vars: p.vars.iter().cloned().collect(),
                        device: device.to_string(),
                        seconds,
                        finished_unix: std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_secs())
                            .unwrap_or(0),
                    };
                    if let Err(e) = manifest.append(&record) {
                        // Without a manifest nothing more can be recorded: stop cleanly.
                        stop.store(true, Ordering::Release);
                        fatal.get_or_insert(e.into());
                        failed += 1;
                        continue;
                    }
                    done += 1;
                    images_made += got.images.len();
                    reporter.job_ended(&format!(
                        "stipple batch: [{}/{to_run}] {origin} done: {} image(s) in {seconds:.2} s on {device}",
                        done + failed,
                        got.images.len()
                    ));
                    line.images = got
                        .images
                        .into_iter()
                        .map(|i| ImageRecord {
                            path: opts.out.join(i.path),
                            ..i
                        })
                        .collect();
                    reporter.result(&line);
                }
            }
        }
        interrupted |= stop.load(Ordering::Acquire);
        reporter.finish();
        drop(store);
    }
    let wall = started.elapsed().as_secs_f64();
    let per_image = if images_made > 0 {
        format!(" ({:.3} s per image)", wall / images_made as f64)
    } else {
        String::new()
    };
    reporter.note(&format!(
        "stipple batch: {done} done, {skipped} skipped, {} failed, {invalid} invalid; {images_made} images in {wall:.2} s{per_image}",
        failed
    ));
    if let Some(e) = fatal {
        return Err(e);
    }
    if interrupted {
        return Err(BatchError::Interrupted {
            done,
            left: to_run - done - failed,
        });
    }
    if failed + invalid > 0 {
        return Err(BatchError::Failed {
            failed,
            invalid,
            total,
        });
    }
    Ok(())
}
