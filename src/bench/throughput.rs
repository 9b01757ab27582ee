//! `stipple bench --throughput N`: images per second over N images of a batch-like workload (N
//! one-image jobs with their own prompts and seeds), made one UNet call per image and then with the
//! engine's UNet batch of compatible jobs sharing each call, on one loaded model; the grouped run
//! once more with the VAE decode on the engine thread instead of beside the next UNet call.
//!
//! [`throughput`] measures and returns a [`ThroughputReport`]; the time covers sampling and VAE
//! decode (the engine thread and its decode worker), not PNG encoding or writing (another thread's
//! work).

use crate::engine::Stop;
use crate::job::{Event, Job, Sampler};
use crate::pipeline::generator::GroupJob;
use crate::pipeline::{EngineSpec, Generator, PipelineError};
use crate::runtime::Runtime;
use std::fmt;
use std::time::Instant;

/// Images per second with and without sharing UNet calls.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ThroughputReport {
    pub model: String,
    pub device: String,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub images: usize,
    /// One UNet call per image (`--unet-batch 1`).
    pub one_at_a_time_images_per_s: f64,
    /// The images of compatible jobs share UNet calls, this many at most.
    pub unet_batch: usize,
    pub grouped_images_per_s: f64,
    /// grouped ÷ one at a time.
    pub speedup: f64,
    /// Grouped, each call's images decoded on the engine thread before the next call (no
    /// pipelining): what the decode worker gains is grouped ÷ this.
    pub grouped_decode_inline_images_per_s: f64,
    /// Images each timed pass made (one at a time, grouped, grouped with the decode inline):
    /// `images` each, or a pass lost some and its figure is not one.
    pub made: [usize; 3],
}

impl fmt::Display for ThroughputReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "throughput of {} on {} at {}x{}, {} steps, {} images (sampling + VAE decode):",
            self.model, self.device, self.width, self.height, self.steps, self.images
        )?;
        writeln!(
            f,
            "  one image per UNet call        {:>8.3} images/s  ({} images)",
            self.one_at_a_time_images_per_s, self.made[0]
        )?;
        writeln!(
            f,
            "  up to {:>2} images per UNet call  {:>8.3} images/s  (×{:.2}, {} images)",
            self.unet_batch, self.grouped_images_per_s, self.speedup, self.made[1]
        )?;
        write!(
            f,
            "  the same, decode not pipelined {:>8.3} images/s  (pipelining ×{:.2}, {} images)",
            self.grouped_decode_inline_images_per_s,
            self.grouped_images_per_s
                / self
                    .grouped_decode_inline_images_per_s
                    .max(f64::MIN_POSITIVE),
            self.made[2]
        )
    }
}

/// Makes `images` one-image jobs of the model's size (or `size`) and `steps` (0: the family's)
/// twice: one image per UNet call, then grouped by `spec.unet_batch`; each pass after a warm-up
/// group of the same shape.
pub fn throughput(
    spec: EngineSpec,
    rt: &'static Runtime,
    images: usize,
    size: Option<(u32, u32)>,
    steps: u32,
) -> Result<ThroughputReport, PipelineError> {
    let images = images.max(1);
    let unet_batch = spec.unet_batch.max(1);
    let device = spec.session.device.to_string();
    let mut g = Generator::load(spec, rt)?;
    let (width, height) = size.unwrap_or_else(|| g.model.default_size());
    let steps = match steps {
        0 => g.model.index.family.facts().default_steps,
        s => s,
    };
    let jobs: Vec<Job> = (0..images)
        .map(|i| Job {
            prompt: format!("a red fox in the snow, picture {i}"),
            negative: String::new(),
            sampler: Sampler::EulerA,
            steps,
            cfg: 7.0,
            width,
            height,
            seed: 1000 + i as u64,
            batch: 1,
            schedule: Default::default(),
            sde_noise: Default::default(),
            zero_snr: false,
            sigmas: Default::default(),
            init: None,
            hires: None,
        })
        .collect();
    let (one, one_made) = images_per_s(&mut g, &jobs, 1)?;
    let (grouped, grouped_made) = images_per_s(&mut g, &jobs, unet_batch)?;
    g.set_pipelined(false);
    let inline = images_per_s(&mut g, &jobs, unet_batch);
    g.set_pipelined(true);
    let (inline, inline_made) = inline?;
    Ok(ThroughputReport {
        model: g.model_name().to_string(),
        device,
        width,
        height,
        steps,
        images,
        one_at_a_time_images_per_s: one,
        unet_batch,
        grouped_images_per_s: grouped,
        speedup: grouped / one.max(f64::MIN_POSITIVE),
        grouped_decode_inline_images_per_s: inline,
        made: [one_made, grouped_made, inline_made],
    })
}

/// Runs `jobs` in groups of `per_call` (as `stipple batch` forms them) and returns images/s and
/// the images made; a first group, not timed, builds what the shape needs.
fn images_per_s(
    g: &mut Generator,
    jobs: &[Job],
    per_call: usize,
) -> Result<(f64, usize), PipelineError> {
    g.set_unet_batch(per_call);
    run_group(g, &jobs[..per_call.min(jobs.len())])?;
    let t = Instant::now();
    let mut made = 0;
    for group in jobs.chunks(per_call) {
        made += run_group(g, group)?;
    }
    Ok((made as f64 / t.elapsed().as_secs_f64().max(1e-9), made))
}

/// Runs `jobs` as one group; the number of images made.
fn run_group(g: &mut Generator, jobs: &[Job]) -> Result<usize, PipelineError> {
    let group: Vec<GroupJob<'_>> = jobs
        .iter()
        .enumerate()
        .map(|(i, job)| GroupJob { id: i as u64, job })
        .collect();
    let mut made = 0;
    let ends = g.generate_group(&group, &|| Stop::No, &mut |e| {
        made += matches!(e, Event::Image { .. }) as usize
    });
    match ends.into_iter().find_map(Result::err) {
        Some(e) => Err(PipelineError::Job(e)),
        None => Ok(made),
    }
}
