//! Sampling several images through the UNet together: the images of one job, or of several
//! compatible jobs ([`Generator::generate_group`]), share each UNet call as one batch
//! `[uncond × k, cond × k]`, while each keeps its own seed, noise, scheduler state and prompts, so
//! it comes out as it would alone.
//!
//! Jobs share a UNet batch when they agree on everything the weights and the timesteps depend on
//! ([`Ready::shares_batch_with`]); prompts, negative prompts, seeds, CFG scale and batch size may
//! differ.

use super::super::adapters::ActiveLora;
use super::super::img2img::{Blend, Init};
use super::super::rng::TorchRng;
use super::super::schedulers::{self, Scheduler};
use super::super::sessions::{Added, UnetCall};
use super::super::step_texts::{self, StepCond, StepTexts};
use super::super::stop::{Ended, Stop};
use super::super::vae;
use super::decodes::{Decodes, Request, Worker};
use super::{lora_hashes, parse_prompts, time_ids, Generator, PipelineError};
use crate::image::Resources;
use crate::job::{Event, Job, Progress};
use std::time::Instant;

/// One job of [`Generator::generate_group`], with the id its events carry.
#[derive(Debug, Clone, Copy)]
pub struct GroupJob<'a> {
    pub id: u64,
    pub job: &'a Job,
}

/// A job read and resolved: what sampling it needs besides the model.
pub(super) struct Ready<'a> {
    pub(super) id: u64,
    pub(super) job: &'a Job,
    /// The texts of the prompt's `AND` parts and of the negative prompt per UNet call.
    texts: StepTexts,
    /// UNet calls per image over the whole schedule (img2img skips the first ones).
    calls: usize,
    loras: Vec<ActiveLora>,
    /// Context length in tokens: rows of one UNet batch must agree on it.
    pub(super) seq: usize,
}

impl Ready<'_> {
    /// Whether the two jobs can share UNet calls: same weights at every step (adapters, their
    /// strengths and schedules), same timesteps (sampler, schedule type, steps), same latent and
    /// context shapes.
    fn shares_batch_with(&self, o: &Ready<'_>) -> bool {
        let (a, b) = (self.job, o.job);
        // An image-to-image job starts at its own step from its own picture: it runs alone.
        a.init.is_none()
            && b.init.is_none()
            && a.hires.is_none()
            && b.hires.is_none()
            && a.sampler == b.sampler
            && a.schedule == b.schedule
            && a.zero_snr == b.zero_snr
            && a.sigmas == b.sigmas
            && a.steps == b.steps
            && a.width == b.width
            && a.height == b.height
            && self.seq == o.seq
            // One UNet row per `AND` part: the batch layout is the same for every image.
            && self.texts.parts() == o.texts.parts()
            && self.loras.len() == o.loras.len()
            && self
                .loras
                .iter()
                .zip(&o.loras)
                .all(|(x, y)| x.tag == y.tag && x.path == y.path)
    }
}

/// What every UNet call of a run shares, settled before the first.
struct Run<'r> {
    /// Latent (height, width) of the first pass.
    size: (usize, usize),
    /// Images per UNet call at most.
    width: usize,
    static_shapes: bool,
    dims: Option<[i64; 4]>,
    /// img2img's first step (0 otherwise).
    first_step: usize,
    steps: usize,
    inits: &'r [Option<Init>],
}

/// Where a job of a group stands.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum State {
    Running,
    Done,
    Failed(String),
}

/// One image under way: its job (index into the group), place in that job and sampling state.
pub(super) struct Slot {
    job: usize,
    index: u32,
    pub(super) seed: u64,
    pub(super) rng: TorchRng,
    pub(super) sched: Box<dyn Scheduler>,
    pub(super) latents: Vec<f32>,
    /// Inpainting: the picture's latents, put back outside the mask after every step.
    pub(super) blend: Option<Blend>,
}

impl Generator {
    /// Reads and resolves `job` (prompts, family checks, adapters) without running anything.
    pub(super) fn ready<'a>(&mut self, job: &'a Job, id: u64) -> Result<Ready<'a>, PipelineError> {
        let (pos, neg) = parse_prompts(job)?;
        pos.check_family(self.model.index.family)
            .map_err(|e| PipelineError::Prompt(e.render(&job.prompt)))?;
        let loras = self.adapters.resolve(&pos, &job.prompt)?;
        let steps = job.steps.max(1) as usize;
        let calls = schedulers::build_styled(
            job.sampler,
            job.schedule,
            job.sigmas,
            self.model.index.family,
            &self.scheduler.for_job(job.zero_snr),
            steps,
        )?
        .timesteps()
        .len();
        let schedule = step_texts::schedule_steps(steps, calls);
        let mut texts = StepTexts::new((&pos, &job.prompt), (&neg, &job.negative), schedule)?;
        texts.zero_negative =
            job.negative.trim().is_empty() && self.text.zeros_for_empty_negative();
        let seq = self.text.context_len(&texts.texts);
        Ok(Ready {
            id,
            job,
            texts,
            calls,
            loras,
            seq,
        })
    }

    /// Runs several jobs, putting the images of compatible ones through the UNet together (at most
    /// the engine's UNet batch at a time); one result per job, in order. A job that fails on its
    /// own (its prompt, its adapters) fails alone; a failure of a shared UNet call fails the jobs
    /// of that batch that had images left. Images arrive in job order, each job's in index order.
    pub fn generate_group(
        &mut self,
        jobs: &[GroupJob<'_>],
        stop: &dyn Fn() -> Stop,
        on_event: &mut dyn FnMut(Event),
    ) -> Vec<Result<Ended, String>> {
        let mut ends: Vec<Option<Result<Ended, String>>> = vec![None; jobs.len()];
        let mut ready: Vec<(usize, Ready<'_>)> = Vec::new();
        for (k, g) in jobs.iter().enumerate() {
            match self.ready(g.job, g.id) {
                Ok(r) => ready.push((k, r)),
                Err(e) => ends[k] = Some(Err(e.to_string())),
            }
        }
        while !ready.is_empty() {
            // The first job left and every later one compatible with it run together.
            let (mut together, rest): (Vec<_>, Vec<_>) = {
                let first = &ready[0].1;
                let keep: Vec<bool> = ready
                    .iter()
                    .map(|(_, r)| r.shares_batch_with(first))
                    .collect();
                let mut flags = keep.into_iter();
                ready
                    .into_iter()
                    .partition(|_| flags.next().unwrap_or(false))
            };
            ready = rest;
            let (keys, rs): (Vec<usize>, Vec<Ready<'_>>) = together.drain(..).unzip();
            let mut states = vec![State::Running; rs.len()];
            let ended = self.sample(&rs, stop, on_event, &mut states);
            for (k, s) in keys.into_iter().zip(states) {
                ends[k] = Some(match (s, &ended) {
                    (State::Done, _) => Ok(Ended::Done),
                    (State::Failed(m), _) => Err(m),
                    (State::Running, Ok(e)) => Ok(*e),
                    (State::Running, Err(e)) => Err(e.to_string()),
                });
            }
            if matches!(ended, Ok(Ended::Cancelled)) {
                break;
            }
        }
        ends.into_iter()
            .map(|e| e.unwrap_or(Ok(Ended::Cancelled)))
            .collect()
    }

    /// Samples the images of `jobs` (compatible with each other) in UNet batches of at most the
    /// engine's UNet batch. `states` says per job whether all its images were sent (`Done`) or it
    /// failed on its own (`Failed`, only with more than one job: a lone job's error is returned).
    pub(super) fn sample<'a>(
        &mut self,
        jobs: &[Ready<'a>],
        stop: &dyn Fn() -> Stop,
        on_event: &mut dyn FnMut(Event),
        states: &mut [State],
    ) -> Result<Ended, PipelineError> {
        let Some(lead) = jobs.first() else {
            return Ok(Ended::Done);
        };
        let (loras, steps) = (&lead.loras, lead.job.steps as usize);
        let factor = self.model.index.vae_scale_factor.max(1) as usize;
        let (h, w) = (
            lead.job.height as usize / factor,
            lead.job.width as usize / factor,
        );
        let total: usize = jobs.iter().map(|r| r.job.batch as usize).sum();
        let width = self.unet_batch.min(total).max(1);
        let static_shapes = self.sessions.opts().static_shapes;
        // With fixed shapes every call has the same batch (a short last one is padded), so one
        // session serves the whole run.
        let rows = (1 + lead.texts.parts()) * width;
        let dims = static_shapes.then_some([rows as i64, h as i64, w as i64, lead.seq as i64]);
        // Everything that can fail on the adapters' side fails here, before the first step.
        let first = self.live.step_key(loras, 0, steps);
        let mode = self.live.live_mask(loras, self.sessions.device_patch());
        self.live
            .fuse_step(&self.model, &mut self.sessions, loras, &mode, &first, dims)?;
        self.sessions.ensure_vae_dims(&self.model, h, w)?;
        let mut inits: Vec<Option<Init>> = Vec::with_capacity(jobs.len());
        for r in jobs {
            inits.push(Init::prepare(&mut self.sessions, &self.model, r.job, h, w)?);
        }
        // img2img skips the schedule's first steps (the same for every image: it runs alone).
        let first_step = inits[0].as_ref().map_or(0, Init::first_step);
        self.text.begin_job();
        // A prompt that cannot be encoded fails its own job only.
        let te = self.sessions.fused_te().clone();
        for (j, r) in jobs.iter().enumerate() {
            let text_side = &mut self.text;
            let got = self.sessions.with_text(&self.model, |nets| {
                (0..r.calls.saturating_sub(first_step))
                    .try_for_each(|call| r.texts.conds(text_side, nets, &te, call).map(drop))
            });
            if let Err(e) = got {
                if jobs.len() == 1 {
                    return Err(e);
                }
                states[j] = State::Failed(e.to_string());
            }
        }
        let mut pending: Vec<(usize, u32)> = Vec::new();
        for (j, r) in jobs.iter().enumerate() {
            if states[j] != State::Running {
                continue;
            }
            on_event(Event::Started {
                id: r.id,
                images: r.job.batch,
                // The steps that run: all of them but img2img's skipped first ones, and the
                // hires fix's second pass.
                steps: r.job.steps - inits[j].as_ref().map_or(0, |i| i.first_step() as u32)
                    + r.job.hires.as_ref().map_or(0, |f| f.runs(r.job.steps)),
            });
            pending.extend((0..r.job.batch).map(|i| (j, i)));
        }
        let run = Run {
            size: (h, w),
            width,
            static_shapes,
            dims,
            first_step,
            steps,
            inits: &inits,
        };
        // The decode of one UNet call's images overlaps the next call where the decoded image is
        // final and whole: not with the hires fix (its second pass decodes and encodes inside the
        // job) nor with tiled decoding (which rebuilds a static-shape decoder per tile size).
        let overlap = self.pipelined && lead.job.hires.is_none() && !self.vae_tiling.applies(h, w);
        let vae = self.sessions.vae_decoder(&self.model);
        let fail = self.fail_decode;
        std::thread::scope(|scope| {
            let worker = overlap.then(|| Worker::start(scope, vae, fail));
            let mut decodes = Decodes::new(worker, jobs);
            let ended =
                self.sample_calls(jobs, &run, pending, &mut decodes, stop, on_event, states);
            // What the worker holds is sent however the run ended (interrupted, a UNet failure):
            // those images were finished before it.
            decodes.send_finished(true, jobs, states, on_event);
            match decodes.take_error() {
                Some(e) if ended.is_ok() => Err(e),
                _ => ended,
            }
        })
    }

    /// Samples `pending` (job, image index) in UNet calls of `run.width` images, handing each
    /// call's final latents to `decodes`; a job that failed meanwhile has its images left out.
    #[allow(clippy::too_many_arguments)]
    fn sample_calls<'a>(
        &mut self,
        jobs: &[Ready<'a>],
        run: &Run<'_>,
        pending: Vec<(usize, u32)>,
        decodes: &mut Decodes<'a>,
        stop: &dyn Fn() -> Stop,
        on_event: &mut dyn FnMut(Event),
        states: &mut [State],
    ) -> Result<Ended, PipelineError> {
        let loras = &jobs[0].loras;
        let (h, w) = run.size;
        let n = 4 * h * w;
        let mut resources: Option<Resources> = None;
        let mut pending = pending.into_iter();
        loop {
            let chunk: Vec<(usize, u32)> = pending
                .by_ref()
                .filter(|&(j, _)| states[j] == State::Running)
                .take(run.width)
                .collect();
            if chunk.is_empty() {
                return Ok(Ended::Done);
            }
            let mut slots: Vec<Slot> = Vec::with_capacity(chunk.len());
            for &(j, index) in &chunk {
                let seed = jobs[j].job.seed.wrapping_add(u64::from(index));
                let mut rng = TorchRng::new(seed);
                let cfg = self.scheduler.for_job(jobs[j].job.zero_snr);
                let mut sched = schedulers::build_styled(
                    jobs[j].job.sampler,
                    jobs[j].job.schedule,
                    jobs[j].job.sigmas,
                    self.model.index.family,
                    &cfg,
                    run.steps,
                )?;
                if jobs[j].job.sde_noise.is_brownian() {
                    sched.use_brownian_noise(seed, n, run.first_step);
                }
                let sigma0 = sched.init_noise_sigma();
                let (latents, blend) = match &run.inits[j] {
                    Some(init) => init.start(&mut rng, &*sched, &cfg),
                    None => (rng.randn(n).into_iter().map(|x| x * sigma0).collect(), None),
                };
                slots.push(Slot {
                    job: j,
                    index,
                    seed,
                    rng,
                    sched,
                    latents,
                    blend,
                });
            }
            let rows = if run.static_shapes {
                run.width
            } else {
                slots.len()
            };
            // Images the worker finished go out between steps, ahead of the step's own event.
            let mut emit = |e: Event| {
                decodes.send_finished(false, jobs, states, on_event);
                on_event(e);
            };
            let ended = self.sample_chunk(
                jobs,
                &mut slots,
                rows,
                run.first_step,
                (h, w),
                run.dims,
                stop,
                &mut emit,
            )?;
            // The hires fix redraws the images larger: the latents change size.
            let (ended, (h, w)) = match ended {
                None => {
                    match self.hires_pass(&jobs[0], &mut slots, rows, (h, w), stop, &mut emit)? {
                        Ok(size) => (None, size),
                        Err(e) => (Some(e), (h, w)),
                    }
                }
                other => (other, (h, w)),
            };
            match ended {
                Some(Ended::Cancelled) => return Ok(Ended::Cancelled),
                // Skipped: the images of this UNet batch are dropped, as one image alone would be.
                Some(Ended::Done) => slots.iter().for_each(|s| decodes.count(s.job, states)),
                None => {
                    let mut batch = Vec::with_capacity(slots.len());
                    for s in slots {
                        let mut r = self.request(jobs, s, (h, w), loras, &mut resources);
                        // "Only masked" pastes the decoded image back over the picture.
                        r.paste = run.inits[r.job]
                            .as_ref()
                            .and_then(Init::paste_back)
                            .cloned();
                        batch.push(r);
                    }
                    if decodes.overlapped() {
                        decodes.hand(batch, jobs, states, on_event);
                    } else {
                        let fail = self.fail_decode;
                        let mut decode = |l: &[f32], h, w| self.decode_image(l, h, w);
                        for r in batch {
                            if decodes.failed() {
                                break;
                            }
                            let d = r.finish(&mut decode, fail);
                            decodes.take(d, jobs, states, on_event);
                        }
                    }
                }
            }
            if let Some(e) = decodes.take_error() {
                return Err(e);
            }
        }
    }

    /// What the decode of `slot`'s final latents needs, its infotext's resources included.
    fn request<'a>(
        &mut self,
        jobs: &[Ready<'a>],
        slot: Slot,
        size: (usize, usize),
        loras: &[ActiveLora],
        resources: &mut Option<Resources>,
    ) -> Request<'a> {
        self.take_hashes();
        let resources = resources.get_or_insert_with(|| Resources {
            lora_hashes: lora_hashes(loras),
            ..self.resources.clone()
        });
        let ready = &jobs[slot.job];
        Request {
            job: slot.job,
            index: slot.index,
            seed: slot.seed,
            latents: slot.latents,
            size,
            spec: ready.job,
            resources: Resources {
                ti_hashes: self.text.ti_hashes(&ready.texts.texts),
                ..resources.clone()
            },
            paste: None,
        }
    }

    /// Runs every step from `first` on for `slots` as one UNet batch of `rows` images (the last
    /// slot repeated to fill it). `Some(Ended::Done)` when the images were skipped, `Some(Cancelled)` when
    /// interrupted, `None` when their latents are ready to decode.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn sample_chunk(
        &mut self,
        jobs: &[Ready<'_>],
        slots: &mut [Slot],
        rows: usize,
        first: usize,
        (h, w): (usize, usize),
        dims: Option<[i64; 4]>,
        stop: &dyn Fn() -> Stop,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Option<Ended>, PipelineError> {
        let lead = &jobs[slots[0].job];
        let loras = &lead.loras;
        let n = 4 * h * w;
        let mode = self.live.live_mask(loras, self.sessions.device_patch());
        let blocks = 1 + lead.texts.parts();
        let chunks = lead.seq / 77;
        let time_ids = time_ids(lead.job.width, lead.job.height, blocks * rows);
        let timesteps = slots[0].sched.timesteps().to_vec();
        let last = slots.len() - 1;
        let row = |r: usize| r.min(last);
        let started = Instant::now();
        let mut last_preview = started;
        for (i, &t) in timesteps.iter().enumerate().skip(first) {
            let key = self.live.step_key(loras, i, timesteps.len());
            self.live
                .fuse_step(&self.model, &mut self.sessions, loras, &mode, &key, dims)?;
            let te = self.sessions.fused_te().clone();
            let mut conds: Vec<StepCond> = Vec::with_capacity(slots.len());
            for s in slots.iter() {
                let text_side = &mut self.text;
                conds.push(self.sessions.with_text(&self.model, |nets| {
                    jobs[s.job].texts.conds(text_side, nets, &te, i - first)
                })?);
            }
            let padded = conds
                .iter()
                .any(|c| (0..blocks).any(|b| c.needs_padding(b, chunks)));
            let empty = match padded {
                true => {
                    let text_side = &mut self.text;
                    self.sessions
                        .with_text(&self.model, |nets| text_side.cond(nets, &te, &[]))?
                        .chunks[0]
                        .clone()
                }
                false => Vec::new(),
            };
            match stop() {
                Stop::Interrupt => return Ok(Some(Ended::Cancelled)),
                Stop::SkipImage => return Ok(Some(Ended::Done)),
                Stop::No => {}
            }
            // diffusers' CFG layout, widened: every image's uncond row, then every image's row of
            // the first `AND` part, and so on (one part: `[uncond × k, cond × k]`).
            let xs: Vec<Vec<f32>> = slots
                .iter()
                .map(|s| s.sched.scale_model_input(&s.latents, i))
                .collect();
            let mut sample = Vec::with_capacity(blocks * rows * n);
            let mut context = Vec::new();
            let mut embeds: Option<Vec<f32>> = None;
            for b in 0..blocks {
                for r in 0..rows {
                    sample.extend_from_slice(&xs[row(r)]);
                    // A 9-channel inpainting UNet also reads the mask and the masked picture.
                    if let Some(blend) = &slots[row(r)].blend {
                        sample.extend_from_slice(blend.unet_channels());
                    }
                    conds[row(r)].push_row(b, chunks, &empty, &mut context, &mut embeds);
                }
            }
            let added = embeds.as_deref().map(|e| Added {
                text_embeds: e,
                time_ids: &time_ids,
            });
            // Fused adapters whose strengths change at the next step: the spare UNet is patched
            // for it while this step runs.
            if !mode.contains(&true) && i + 1 < timesteps.len() && self.sessions.spare_wanted() {
                let next = self.live.step_key(loras, i + 1, timesteps.len());
                self.sessions.prepare_next(&self.model, loras, &next);
            }
            let out = self.live.unet_step(
                &mut self.sessions,
                mode.contains(&true).then_some((&loras[..], &key)),
                UnetCall {
                    sample: &sample,
                    shape: [blocks * rows, sample.len() / (blocks * rows * h * w), h, w],
                    timestep: t as f32,
                    context: &context,
                    added,
                },
            )?;
            for (r, s) in slots.iter_mut().enumerate() {
                let at = |b: usize| &out[(b * rows + r) * n..(b * rows + r + 1) * n];
                let parts: Vec<(f32, &[f32])> = (1..blocks)
                    .map(|b| (conds[r].parts[b - 1].0, at(b)))
                    .collect();
                // Samplers that need the unconditional prediction (CFG++) get it; with `AND` parts
                // the condition is their weighted sum, so `u + cfg (c − u)` stays A1111's guidance.
                let summed;
                let cond: &[f32] = match parts.as_slice() {
                    [(w, c)] if *w == 1.0 => c,
                    _ => {
                        summed = step_texts::guide(at(0), &parts, 1.0);
                        &summed
                    }
                };
                let guidance = schedulers::Guidance {
                    uncond: at(0),
                    cond,
                    scale: jobs[s.job].job.cfg,
                };
                let rng = &mut s.rng;
                s.latents = s
                    .sched
                    .step_guided(guidance, i, &s.latents, &mut |k| rng.randn(k));
                if let Some(b) = &s.blend {
                    let cfg = self.scheduler.for_job(jobs[s.job].job.zero_snr);
                    b.apply(&mut s.latents, &*s.sched, &cfg, i);
                }
            }
            // Live previews for front ends, at most ten a second (cheap: no VAE).
            if self.previews && last_preview.elapsed().as_millis() >= 100 {
                last_preview = Instant::now();
                let factors = &self.model.index.family.facts().latent_rgb;
                on_event(Event::Preview {
                    id: jobs[slots[0].job].id,
                    image: slots[0].index,
                    step: (i - first) as u32 + 1,
                    preview: vae::preview(&slots[0].latents, w, h, factors),
                });
            }
            let elapsed = started.elapsed().as_secs_f32().max(1e-6);
            // One step event per job in this batch, for its first image here.
            for (k, s) in slots.iter().enumerate() {
                if k > 0 && slots[k - 1].job == s.job {
                    continue;
                }
                on_event(Event::Step(Progress {
                    id: jobs[s.job].id,
                    image: s.index,
                    step: (i - first) as u32 + 1,
                    steps: (timesteps.len() - first) as u32,
                    it_per_s: (i + 1 - first) as f32 / elapsed,
                }));
            }
        }
        Ok(None)
    }

    /// Takes the model and VAE file hashes once their thread is done (waited for at the first
    /// image).
    fn take_hashes(&mut self) {
        if let Some(h) = self.hashing.take() {
            if let Ok((model, vae)) = h.join() {
                self.resources.model_hash = model;
                self.resources.vae_hash = vae;
            }
        }
    }
}
