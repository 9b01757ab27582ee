//! The sessions of a loaded model and what is fused into them: [`Sessions`] owns the text-encoder,
//! UNet and VAE sessions, brings them to a set of adapter strengths ([`Sessions::fuse`]: rebuilt, or
//! resident weights staged and rewritten in place, or, with the device patch, the kept patch
//! programs re-run at new strengths), rebuilds the VAE for new static shapes and runs
//! the UNet (through fixed buffers for a CUDA graph) and the VAE decoder, whose session is shared
//! with a decode worker through a [`VaeDecoder`] handle. Text encoders that overflow in fp16 are
//! rebuilt in fp32 ([`Sessions::with_text`]).

use super::adapters::{self, ActiveLora, StrengthKey};
use super::device_patch::{self, DeviceStaged};
use super::error::{patch_err, run_err, ComponentDeltas, PipelineError};
use super::keys::{self, FusedKey, Fusion};
use super::rerun;
use super::resident::{self, Net, Staged};
use super::vae::{self, Fallback, VaeDecoder, VaeSlot};
use crate::job::RgbImage;
use crate::lora::ApplyReport;
use crate::model::graph::Graph;
use crate::model::layout::{Component, ComponentKind, GraphKind};
use crate::model::rgb_tail;
use crate::model::Model;
use crate::patch;
use crate::runtime::session::{Precision, TePrecision, VaePrecision};
use crate::runtime::tensor_io::{run, Bound, Input};
use crate::runtime::{build_session, Device, Runtime, SessionOptions};
use ort::session::Session;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

mod spare;

/// SDXL's added conditioning for a UNet call: pooled text embeddings `[b, n]` and time ids `[b, 6]`.
#[derive(Debug, Clone, Copy)]
pub struct Added<'a> {
    pub text_embeds: &'a [f32],
    pub time_ids: &'a [f32],
}

/// One UNet evaluation: `sample` `[b, 4, h, w]`, one timestep for all, context `[b, n, c]` and,
/// for SDXL, the added conditioning.
#[derive(Debug, Clone, Copy)]
pub struct UnetCall<'a> {
    pub sample: &'a [f32],
    pub shape: [usize; 4],
    pub timestep: f32,
    pub context: &'a [f32],
    pub added: Option<Added<'a>>,
}

/// Where the time of the last adapter change went.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct FuseStats {
    /// Planning the adapters: family checks, keys, module types (ΔW itself is computed in the patch
    /// step, each parameter's where it is added).
    pub deltas_s: f64,
    /// Assembling the weight buffers (ΔW, base + ΔW, dtype conversion), summed over components.
    pub patch_s: f64,
    /// ONNX Runtime session creation, summed over components (text encoders and UNet are built
    /// side by side, so the swap's wall time can be less than ΔW + patch + sessions).
    pub session_s: f64,
    /// Wall time of the patch and session builds together.
    pub build_wall_s: f64,
    /// Uploading resident weights rewritten in place (0 when sessions were built instead).
    pub upload_s: f64,
    /// Dropping the replaced sessions (ONNX Runtime frees their device memory).
    pub free_s: f64,
    /// The change re-ran the patch programs already on the device with new strengths (nothing
    /// planned, built or uploaded but the strengths; its time is in `upload_s`).
    pub rerun: bool,
    /// The change swapped in the spare UNet, patched to these strengths beside the step before
    /// ([`spare`]): nothing ran for the UNet before the step.
    pub spare_swap: bool,
}

/// How the device patch brought the weights to new adapter strengths, counted since the load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PatchCounts {
    /// Changes that staged new patch programs (a new adapter set, or a strength change a program
    /// cannot re-run: DoRA, OFT, BOFT).
    pub staged: u64,
    /// Changes that re-ran the kept programs with new strengths.
    pub reruns: u64,
    /// Wall time of those re-runs, summed (µs): each ends when its outputs are synchronized, so
    /// it is what a strength change adds to the step that uses it.
    pub rerun_us: u64,
    /// Weights the staged programs wrote at their commits, summed over components and changes.
    pub staged_writes: u64,
    /// Weights the re-runs wrote, summed: only those whose value scales with a strength.
    pub rerun_writes: u64,
    /// Strength changes met by swapping in the spare UNet, patched ahead ([`spare`]).
    pub spare_swaps: u64,
    /// Re-runs of the spare's program for the next step, and their wall time summed (µs).
    pub prefetches: u64,
    pub prefetch_us: u64,
    /// Of those, the ones that ran beside a UNet step, and how long those steps waited for them
    /// after their own run had ended, summed (µs): the part of the patch the step did not hide.
    pub overlapped: u64,
    pub prefetch_wait_us: u64,
    /// Re-runs of the spare's program that failed (the spare then holds unknown weights until
    /// its next patch; the step patched the UNet itself).
    pub prefetch_failures: u64,
}

/// The strengths inputs of a re-run: one per text encoder, then the UNet's (None: not re-run).
type Reruns = (Vec<Option<Vec<f32>>>, Option<Vec<f32>>);

/// What the text encoders hold besides the base weights, so that an fp16 overflow can rebuild them
/// in fp32 with the same adapters.
#[derive(Clone)]
enum TeSource {
    /// These deltas (none: the base model).
    Deltas(ComponentDeltas),
    /// These adapters at these strengths (the UNet's strengths are not used).
    Adapters(Vec<ActiveLora>, StrengthKey),
}

/// What an adapter change does to one component's session.
enum Change {
    /// A new session (baked weights, or resident ones filled at build).
    Built(Box<Net>),
    /// New contents for some resident weights.
    Staged(Staged),
    /// A patch program that writes them on the device.
    Device(Box<DeviceStaged>),
}

/// A model's sessions, the adapters fused into them and the timings of the last change.
pub struct Sessions {
    runtime: &'static Runtime,
    opts: SessionOptions,
    /// Run the UNet through fixed buffers ([`Bound`]) without a CUDA graph too (tests).
    bound_unet: bool,
    /// Width of the UNet's context (its `cross_attention_dim`).
    context_dim: usize,
    /// One per text encoder of the family, in its order.
    text: Vec<Net>,
    unet: Net,
    /// Shared with the decode worker, which runs it beside the UNet ([`Sessions::vae_decoder`]).
    vae: Arc<Mutex<VaeSlot>>,
    /// Set by a decoder handle when the fp16 VAE overflowed: VAE sessions built after it are fp32.
    vae_overflowed: Arc<AtomicBool>,
    /// The VAE encoder, built at the first image-to-image job, and whether it runs fp16.
    encoder: Option<(Session, bool)>,
    /// Set when an fp16 text encoder gave non-finite output: text encoders are fp32 from then on.
    te_overflowed: bool,
    /// What the text encoders were last built or patched with.
    te_source: TeSource,
    fused: FusedKey,
    /// (latent height, latent width) the VAE session was built for, with static shapes.
    vae_dims: Option<[i64; 2]>,
    /// The decoder cut at its GroupNorms, built at the first tiled decode.
    vae_tiled: Option<super::vae_tiles::TiledDecoder>,
    /// The encoder likewise, built at the first tiled encode.
    encoder_tiled: Option<super::vae_tiles::TiledEncoder>,
    /// When the VAE encoder runs in tiles (the generator's setting, which decides the decoder's).
    vae_tiling: super::vae_tiles::VaeTiling,
    /// The UNet's fixed input and output buffers, when it runs as a CUDA graph.
    unet_io: Option<Bound>,
    /// Runs of the UNet session since it was built.
    unet_runs: u64,
    /// The spare UNet for per-step strength changes, once a job needed it ([`spare`]).
    spare: Option<spare::Spare>,
    /// Set when the spare could not be built: not tried again.
    spare_failed: bool,
    /// A re-run of the spare's program for the next UNet call to run beside it.
    pending: Option<spare::Pending>,
    /// Test hook: the next re-run of the spare's program fails.
    fail_next_prefetch: bool,
    /// The report of the last adapter application (the components that changed).
    last_report: Option<ApplyReport>,
    /// Timings of the last adapter change.
    last_fuse: Option<FuseStats>,
    counts: PatchCounts,
    load_times: Vec<(ComponentKind, f64)>,
}

impl Sessions {
    /// Builds every session of `model` from its pristine base weights.
    pub fn load(
        model: &Model,
        runtime: &'static Runtime,
        opts: SessionOptions,
        bound_unet: bool,
    ) -> Result<Sessions, PipelineError> {
        let (text, unet, vae, load_times) =
            build_sessions(model, runtime, &opts, &ComponentDeltas::new())?;
        let context_dim = model
            .component(ComponentKind::Unet)
            .and_then(|c| c.config.get("cross_attention_dim"))
            .and_then(|v| v.as_u64())
            .unwrap_or(model.index.family.facts().context_dim as u64)
            as usize;
        Ok(Sessions {
            runtime,
            opts,
            bound_unet,
            context_dim,
            text,
            unet,
            vae: Arc::new(Mutex::new(vae)),
            vae_overflowed: Arc::new(AtomicBool::new(false)),
            encoder: None,
            te_overflowed: false,
            te_source: TeSource::Deltas(ComponentDeltas::new()),
            fused: FusedKey::default(),
            vae_dims: None,
            vae_tiled: None,
            encoder_tiled: None,
            vae_tiling: Default::default(),
            unet_io: None,
            unet_runs: 0,
            spare: None,
            spare_failed: false,
            pending: None,
            fail_next_prefetch: false,
            last_report: None,
            last_fuse: None,
            counts: PatchCounts::default(),
            load_times,
        })
    }

    /// How long each component's session took to build at load (built side by side), in the
    /// family's order: text encoders, UNet, VAE decoder.
    pub fn load_times(&self) -> &[(ComponentKind, f64)] {
        &self.load_times
    }

    pub fn opts(&self) -> &SessionOptions {
        &self.opts
    }

    pub fn runtime(&self) -> &'static Runtime {
        self.runtime
    }

    pub fn context_dim(&self) -> usize {
        self.context_dim
    }

    /// The text-encoder sessions, in the family's order.
    pub fn text_mut(&mut self) -> &mut [Net] {
        &mut self.text
    }

    /// What the text encoders have fused in (the key of cached conditioning).
    pub fn fused_te(&self) -> &Fusion {
        &self.fused.te
    }

    /// The report of the last adapter application.
    pub fn last_report(&self) -> Option<&ApplyReport> {
        self.last_report.as_ref()
    }

    /// Timings of the last adapter change.
    pub fn last_fuse(&self) -> Option<FuseStats> {
        self.last_fuse
    }

    /// How the device patch has changed strengths since the load.
    pub fn patch_counts(&self) -> PatchCounts {
        self.counts
    }

    /// The bytes of the UNet's resident weight `name` when they are in host memory (tests).
    #[doc(hidden)]
    pub fn unet_host_weight(&self, name: &str) -> Option<Vec<u8>> {
        self.unet.host_weight(name)
    }

    /// How many weights the UNet's patch programs write: (at the commit, at a re-run).
    pub fn unet_patch_writes(&self) -> Option<(usize, usize)> {
        self.unet.patch_writes()
    }

    /// Whether adapter changes run as patch programs on resident weights, so that a strength
    /// change is a re-run (cheap enough for every step).
    pub fn device_patch(&self) -> bool {
        self.opts.patch_on_device() && self.unet.is_resident()
    }

    /// Records the timings of a change made elsewhere (the live UNet's build).
    pub fn set_last_fuse(&mut self, stats: FuseStats) {
        self.last_fuse = Some(stats);
    }

    /// Whether the text encoders and UNet hold resident weights.
    pub fn resident_weights(&self) -> bool {
        self.unet.is_resident()
    }

    /// Which UNet graph the fused path runs (`plain` or `cuda`).
    pub fn unet_graph(&self, model: &Model) -> &'static str {
        let kind = model
            .component(ComponentKind::Unet)
            .and_then(|c| self.opts.graph.resolve(self.opts.device, c).ok());
        match kind {
            Some(GraphKind::Cuda) => "cuda",
            _ => "plain",
        }
    }

    /// Rebuilds the text encoders with `loras` at `key`'s text-encoder strengths (the UNet
    /// strengths are ignored), when they changed: the live path, whose UNet is its own session.
    pub fn fuse_text(
        &mut self,
        model: &Model,
        loras: &[ActiveLora],
        key: &StrengthKey,
    ) -> Result<(), PipelineError> {
        let want_te = FusedKey::of(loras, key).te;
        if want_te == self.fused.te {
            return Ok(());
        }
        let mut te_key = key.clone();
        te_key.unet.iter_mut().for_each(|u| *u = [0.0; 3]);
        let (deltas, report) = adapters::compute(model, loras, &te_key)?;
        let mut stats = FuseStats::default();
        let opts = self.build_opts();
        self.text = self.build_text(model, &opts, &deltas, &mut stats)?;
        self.fused.te = want_te;
        self.te_source = TeSource::Adapters(loras.to_vec(), te_key);
        self.last_report = Some(report);
        Ok(())
    }

    /// Brings the text-encoder and UNet sessions to `key`'s strengths of `loras`, rebuilding only the
    /// sessions whose part changed. On error nothing is changed.
    pub fn fuse(
        &mut self,
        model: &Model,
        loras: &[ActiveLora],
        key: &StrengthKey,
        unet_dims: Option<[i64; 4]>,
    ) -> Result<(), PipelineError> {
        let want = FusedKey::of(loras, key).with_dims(unet_dims.or(self.fused.unet_dims));
        if want == self.fused {
            return Ok(());
        }
        let mut stats = FuseStats::default();
        let t = Instant::now();
        let rebuild_te = want.te != self.fused.te;
        let mut rebuild_unet =
            want.unet != self.fused.unet || want.unet_dims != self.fused.unet_dims;
        let unet_dims = unet_dim_overrides(want.unet_dims);
        // Resident weights are rewritten in place; a UNet whose shapes change needs a new session.
        let te_in_place = self.text.iter().all(Net::is_resident);
        let unet_in_place = self.unet.is_resident() && want.unet_dims == self.fused.unet_dims;
        // The spare UNet, patched while the last step ran, holds these strengths already.
        if rebuild_unet && unet_in_place && self.swap_spare(&want) {
            rebuild_unet = false;
            if !rebuild_te {
                self.last_fuse = Some(FuseStats {
                    spare_swap: true,
                    ..FuseStats::default()
                });
                self.fused = want;
                return Ok(());
            }
        }
        // A change of strengths alone re-runs the patch programs already on the device.
        if self.opts.patch_on_device() {
            if let Some((te, unet)) = self.rerun_plan(
                model,
                loras,
                key,
                (rebuild_te && te_in_place, rebuild_te),
                (rebuild_unet && unet_in_place, rebuild_unet),
            ) {
                self.rerun(want, (te, unet), t)?;
                if rebuild_te {
                    self.te_source = TeSource::Adapters(loras.to_vec(), key.clone());
                }
                return Ok(());
            }
        }
        let build_opts = self.build_opts();
        let unet_opts = spare::unet_patch_opts(&build_opts);
        let (rt, opts) = (self.runtime, &build_opts);
        let set = keys::adapter_set(loras);
        let te_layouts: Vec<Option<&resident::Layout>> =
            self.text.iter().map(Net::layout).collect();
        let unet_layout = self.unet.layout();
        let planned = adapters::with_plan(model, loras, key, |plan| {
            let plan_s = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let view = |kind: ComponentKind| adapters::PlannedView {
                plan: &plan,
                component: adapters::lora_component(kind)
                    .unwrap_or(crate::lora::TargetComponent::Unet),
            };
            // Staged in place, or built anew; each ΔW is computed inside the patch step, where it
            // is added (never all at once).
            let change = |kind: ComponentKind,
                          layout: Option<&resident::Layout>,
                          in_place: bool,
                          dims: &[(&str, i64)],
                          st: &mut FuseStats|
             -> Result<Change, PipelineError> {
                let Some(layout) = layout.filter(|_| in_place) else {
                    return build_component(model, rt, opts, kind, &view(kind), dims, st)
                        .map(|n| Change::Built(Box::new(n)));
                };
                let t = Instant::now();
                let c = model
                    .component(kind)
                    .ok_or_else(|| PipelineError::Job(format!("the model has no {kind}")))?;
                if opts.patch_on_device() {
                    let opts = if kind == ComponentKind::Unet {
                        &unet_opts
                    } else {
                        opts
                    };
                    let mut staged = device_patch::stage(rt, opts, layout, c, &view(kind))?;
                    staged.adapters = Some(set.clone());
                    st.patch_s += t.elapsed().as_secs_f64();
                    return Ok(Change::Device(Box::new(staged)));
                }
                let staged = layout.stage(c, &view(kind)).map_err(patch_err)?;
                st.patch_s += t.elapsed().as_secs_f64();
                Ok(Change::Staged(staged))
            };
            // The text encoders and the UNet are done side by side: session creation is mostly
            // single-threaded inside ONNX Runtime, so a swap costs the slower of the two.
            let (te, unet) = std::thread::scope(|s| {
                let te = s.spawn(|| -> Result<_, PipelineError> {
                    let mut st = FuseStats::default();
                    if !rebuild_te {
                        return Ok((None, st));
                    }
                    let encoders = model.index.family.facts().encoders;
                    let mut changes = Vec::new();
                    for (enc, layout) in encoders.iter().zip(&te_layouts) {
                        changes.push(change(
                            enc.component,
                            *layout,
                            te_in_place,
                            &TE_DIMS,
                            &mut st,
                        )?);
                    }
                    Ok((Some(changes), st))
                });
                let mut st = FuseStats::default();
                let unet = if rebuild_unet {
                    change(
                        ComponentKind::Unet,
                        unet_layout,
                        unet_in_place,
                        &unet_dims,
                        &mut st,
                    )
                    .map(|u| (Some(u), st))
                } else {
                    Ok((None, st))
                };
                let te = te.join().unwrap_or_else(|_| {
                    Err(PipelineError::Job("text encoder build panicked".into()))
                });
                (te, unet)
            });
            let wall = t.elapsed().as_secs_f64();
            let report = (!loras.is_empty()).then(|| plan.into_report());
            (te, unet, plan_s, wall, report)
        })?;
        let (te, unet, plan_s, wall, report) = planned;
        let (te, te_stats) = te?;
        let (unet, unet_stats) = unet?;
        stats.deltas_s = plan_s;
        stats.patch_s = te_stats.patch_s + unet_stats.patch_s;
        stats.session_s = te_stats.session_s + unet_stats.session_s;
        stats.build_wall_s = wall;
        if adapters::lora_debug() {
            if let Some(r) = &report {
                adapters::log_report(r, std::time::Duration::from_secs_f64(wall));
            }
            tracing::info!(
                target: "stipple::lora",
                "fused: plan {:.3} s, ΔW + patch {:.3} s, session builds {:.3} s",
                stats.deltas_s,
                stats.patch_s,
                stats.session_s
            );
        }
        let device = te
            .iter()
            .flatten()
            .chain(&unet)
            .any(|c| matches!(c, Change::Device(_)));
        let device_writes: usize = te
            .iter()
            .flatten()
            .chain(&unet)
            .map(|c| match c {
                Change::Device(s) => s.commit_entries().len(),
                _ => 0,
            })
            .sum();
        let t = Instant::now();
        let uploaded = self.apply_changes(te, unet);
        stats.upload_s = t.elapsed().as_secs_f64();
        let replaced = match uploaded {
            Ok(r) => r,
            Err(e) => {
                // Some weights may hold the new adapters and some the old: the next change rewrites
                // every buffer the failed one touched.
                self.fused = FusedKey::unknown(self.fused.unet_dims);
                return Err(e);
            }
        };
        let t = Instant::now();
        drop(replaced);
        crate::patch::return_freed_memory();
        stats.free_s = t.elapsed().as_secs_f64();
        self.last_fuse = Some(stats);
        self.fused = want;
        if rebuild_te {
            self.te_source = TeSource::Adapters(loras.to_vec(), key.clone());
        }
        if device {
            self.counts.staged += 1;
            self.counts.staged_writes += device_writes as u64;
        }
        if report.is_some() {
            self.last_report = report;
        }
        Ok(())
    }

    /// The strengths inputs that bring the kept patch programs to `key` (one per text encoder, then
    /// the UNet's; None for a part that does not change), when every part that changes (`te`,
    /// `unet`: (can be patched in place, changes)) can re-run its program; None when any needs a
    /// new one, or when what the weights hold is not known.
    fn rerun_plan(
        &self,
        model: &Model,
        loras: &[ActiveLora],
        key: &StrengthKey,
        te: (bool, bool),
        unet: (bool, bool),
    ) -> Option<Reruns> {
        if self.fused.te.is_none() || self.fused.unet.is_none() {
            return None;
        }
        let set = keys::adapter_set(loras);
        let slots = |net: &Net, kind: ComponentKind| {
            let component = adapters::lora_component(kind)?;
            rerun::slots(net.patch_program()?, &set, loras, key, component)
        };
        let encoders = model.index.family.facts().encoders;
        let te_slots = match te {
            (_, false) => vec![None; self.text.len()],
            (false, true) => return None,
            (true, true) => encoders
                .iter()
                .zip(&self.text)
                .map(|(enc, net)| slots(net, enc.component).map(Some))
                .collect::<Option<Vec<_>>>()?,
        };
        let unet_slots = match unet {
            (_, false) => None,
            (false, true) => return None,
            (true, true) => Some(slots(&self.unet, ComponentKind::Unet)?),
        };
        Some((te_slots, unet_slots))
    }

    /// Re-runs the kept patch programs with new strengths (from [`Self::rerun_plan`]) and records
    /// `want` as fused. On error the programs that ran go back to their old strengths; when that
    /// fails too, what the weights hold is unknown and the next change stages new programs.
    fn rerun(
        &mut self,
        want: FusedKey,
        (te, unet): Reruns,
        started: Instant,
    ) -> Result<(), PipelineError> {
        let deltas_s = started.elapsed().as_secs_f64();
        let t = Instant::now();
        let nets = self.text.iter_mut().chain(std::iter::once(&mut self.unet));
        let mut done: Vec<(&mut Net, Vec<f32>)> = Vec::new();
        let mut failed = None;
        let mut writes = 0;
        for (net, s) in nets.zip(te.into_iter().chain(std::iter::once(unet))) {
            let Some(s) = s else { continue };
            let old = net
                .patch_strengths()
                .map(<[f32]>::to_vec)
                .unwrap_or_default();
            match net.rerun_patch(&s) {
                Ok(()) => {
                    writes += net.patch_writes().map_or(0, |(_, rerun)| rerun);
                    done.push((net, old));
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            let restored = done
                .into_iter()
                .all(|(net, old)| net.rerun_patch(&old).is_ok());
            if !restored {
                self.fused = FusedKey::unknown(self.fused.unet_dims);
            }
            return Err(e.into());
        }
        self.last_fuse = Some(FuseStats {
            deltas_s,
            upload_s: t.elapsed().as_secs_f64(),
            rerun: true,
            ..FuseStats::default()
        });
        self.counts.reruns += 1;
        self.counts.rerun_us += t.elapsed().as_micros() as u64;
        self.counts.rerun_writes += writes as u64;
        self.fused = want;
        Ok(())
    }

    /// Puts new sessions in place and uploads staged weights; returns the replaced sessions.
    fn apply_changes(
        &mut self,
        te: Option<Vec<Change>>,
        unet: Option<Change>,
    ) -> Result<Vec<Net>, PipelineError> {
        let mut replaced = Vec::new();
        let mut apply = |net: &mut Net, change: Change| -> Result<(), PipelineError> {
            match change {
                Change::Built(new) => replaced.push(std::mem::replace(net, *new)),
                Change::Staged(staged) => net.commit(staged)?,
                Change::Device(staged) => net.commit_device(*staged)?,
            }
            Ok(())
        };
        for (net, change) in self.text.iter_mut().zip(te.into_iter().flatten()) {
            apply(net, change)?;
        }
        if let Some(change) = unet {
            if matches!(change, Change::Built(_)) {
                self.unet_io = None;
                self.unet_runs = 0;
            }
            apply(&mut self.unet, change)?;
        }
        Ok(replaced)
    }

    /// Every text encoder of the family, built for its one shape ([`TE_DIMS`]).
    fn build_text(
        &self,
        model: &Model,
        opts: &SessionOptions,
        deltas: &ComponentDeltas,
        stats: &mut FuseStats,
    ) -> Result<Vec<Net>, PipelineError> {
        text_encoders(model)
            .map(|kind| self.build_one(model, opts, kind, deltas, &TE_DIMS, stats))
            .collect()
    }

    fn build_one(
        &self,
        model: &Model,
        opts: &SessionOptions,
        kind: ComponentKind,
        deltas: &ComponentDeltas,
        dims: &[(&str, i64)],
        stats: &mut FuseStats,
    ) -> Result<Net, PipelineError> {
        let empty = HashMap::new();
        build_component(
            model,
            self.runtime,
            opts,
            kind,
            deltas.get(&kind).unwrap_or(&empty),
            dims,
            stats,
        )
    }

    /// With static shapes, rebuilds the VAE decoder for latents of `h` × `w` when they changed.
    pub fn ensure_vae_dims(
        &mut self,
        model: &Model,
        h: usize,
        w: usize,
    ) -> Result<(), PipelineError> {
        let want = [h as i64, w as i64];
        if !self.opts.static_shapes || self.vae_dims == Some(want) {
            return Ok(());
        }
        let dims = [("batch", 1), ("height", want[0]), ("width", want[1])];
        let slot = build_vae(model, self.runtime, &self.build_opts(), &dims)?;
        // A decode under way on the worker finishes with the old session first.
        *vae::lock(&self.vae) = slot;
        self.vae_dims = Some(want);
        Ok(())
    }

    /// Rebuilds every session from the base weights plus `deltas` (empty = the pristine model).
    /// On error the current sessions stay as they were.
    pub fn rebuild(
        &mut self,
        model: &Model,
        deltas: &ComponentDeltas,
    ) -> Result<(), PipelineError> {
        let (text, unet, vae, _) = build_sessions(model, self.runtime, &self.build_opts(), deltas)?;
        (self.text, self.unet) = (text, unet);
        let encoders = model.index.family.facts().encoders;
        let te_deltas = deltas
            .iter()
            .filter(|(k, _)| encoders.iter().any(|e| e.component == **k))
            .map(|(k, d)| (*k, d.clone()))
            .collect();
        self.te_source = TeSource::Deltas(te_deltas);
        *vae::lock(&self.vae) = vae;
        self.unet_io = None;
        self.unet_runs = 0;
        (self.spare, self.pending) = (None, None);
        self.fused = FusedKey::unknown(None);
        Ok(())
    }

    /// One UNet evaluation on the fused session.
    pub fn unet(&mut self, call: UnetCall<'_>) -> Result<Vec<f32>, PipelineError> {
        let shape = call.shape;
        let t = vec![call.timestep; shape[0]];
        let inputs = unet_inputs(call, &t, self.context_dim);
        let bound = self.opts.cuda_graph() || self.bound_unet;
        let device = self.opts.device;
        let out = self.with_prefetch(|net, slot| {
            if !bound {
                return net.run(inputs, &["out_sample"]);
            }
            let io = match slot.take() {
                Some(io) if io.fits(&net.session, &inputs) => io,
                // New shapes or a new session: new buffers (the old ones are freed first).
                _ => Bound::new(
                    &net.session,
                    device,
                    &inputs,
                    &[("out_sample", shape.to_vec())],
                )?,
            };
            slot.insert(io).run(&mut net.session, inputs)
        });
        let out = out.map_err(run_err("UNet"))?;
        self.unet_runs += 1;
        Ok(out.into_iter().next().map(|(_, d)| d).unwrap_or_default())
    }

    /// Decodes latents `[1, 4, h, w]` to an image.
    pub fn decode(
        &mut self,
        model: &Model,
        latents: &[f32],
        h: usize,
        w: usize,
    ) -> Result<RgbImage, PipelineError> {
        self.vae_decoder(model).decode(latents, h, w)
    }

    /// The exact tiled decoder ([`super::vae_tiles`]): the plain fp32 decoder graph cut at its
    /// GroupNorms, one session per segment, built on first use and kept (the VAE takes no adapters).
    pub fn tiled_vae(
        &mut self,
        model: &Model,
    ) -> Result<&mut super::vae_tiles::TiledDecoder, PipelineError> {
        if self.vae_tiled.is_none() {
            self.vae_tiled = Some(self.build_tiled_vae(model)?);
        }
        self.vae_tiled
            .as_mut()
            .ok_or_else(|| PipelineError::Job("no tiled VAE decoder".into()))
    }

    fn build_tiled_vae(
        &self,
        model: &Model,
    ) -> Result<super::vae_tiles::TiledDecoder, PipelineError> {
        let (c, buf) = plain_weights(model, ComponentKind::VaeDecoder)?;
        super::vae_tiles::TiledDecoder::build(
            self.runtime,
            &self.opts,
            &c.graph.bytes,
            &c.weightmap.external_file,
            buf,
            model.vae_scaling(),
        )
    }

    /// When the VAE encoder runs in tiles (the decoder's tiling is the generator's to apply).
    pub fn set_vae_tiling(&mut self, tiling: super::vae_tiles::VaeTiling) {
        self.vae_tiling = tiling;
    }

    /// The tiled encoder, as [`Sessions::tiled_vae`] for the decoder.
    fn tiled_encoder(
        &mut self,
        model: &Model,
    ) -> Result<&mut super::vae_tiles::TiledEncoder, PipelineError> {
        if self.encoder_tiled.is_none() {
            let (c, buf) = plain_weights(model, ComponentKind::VaeEncoder)?;
            self.encoder_tiled = Some(super::vae_tiles::TiledEncoder::build(
                self.runtime,
                &self.opts,
                &c.graph.bytes,
                &c.weightmap.external_file,
                buf,
            )?);
        }
        self.encoder_tiled
            .as_mut()
            .ok_or_else(|| PipelineError::Job("no tiled VAE encoder".into()))
    }

    /// A handle on the VAE decoder session that another thread can decode with; it always runs the
    /// current session (a rebuild for new static shapes waits for a decode under way).
    pub fn vae_decoder(&self, model: &Model) -> VaeDecoder {
        VaeDecoder::new(
            Arc::clone(&self.vae),
            model.vae_scaling(),
            Arc::clone(&self.vae_overflowed),
        )
    }

    /// The options sessions are built with now: fp32 VAEs once the fp16 one overflowed, fp32 text
    /// encoders once an fp16 one did.
    fn build_opts(&self) -> SessionOptions {
        let mut o = self.opts.clone();
        if self.vae_overflowed.load(Ordering::Relaxed) {
            o.vae_precision = VaePrecision::Fp32;
        }
        if self.te_overflowed {
            o.te_precision = TePrecision::Fp32;
        }
        o
    }

    /// Whether the text encoders run their fp16 graphs now (tests, `bench`).
    pub fn te_is_fp16(&self, model: &Model) -> bool {
        self.te_graphs(model)
            .any(|g| matches!(g, GraphKind::Cuda | GraphKind::Fused))
    }

    /// Whether a text encoder runs its fused graph now (`bench`).
    pub fn te_is_fused(&self, model: &Model) -> bool {
        self.te_graphs(model).any(|g| g == GraphKind::Fused)
    }

    /// The graph each text encoder runs now (those [`te_graph`] cannot resolve left out).
    fn te_graphs<'m>(&self, model: &'m Model) -> impl Iterator<Item = GraphKind> + 'm {
        let opts = self.build_opts();
        text_encoders(model).filter_map(move |kind| te_graph(model, &opts, kind).ok())
    }

    /// Runs `f` on the text-encoder sessions. When an fp16 text encoder gave non-finite output
    /// ([`PipelineError::TextNotFinite`]), says so once, rebuilds the text encoders in fp32 (with
    /// the adapters they held) and runs `f` again; they stay fp32.
    pub fn with_text<R>(
        &mut self,
        model: &Model,
        mut f: impl FnMut(&mut [Net]) -> Result<R, PipelineError>,
    ) -> Result<R, PipelineError> {
        match f(&mut self.text) {
            Err(PipelineError::TextNotFinite { .. }) => {
                tracing::warn!(
                    "an fp16 text encoder gave non-finite conditioning (an overflow); the text \
                     encoders run in fp32 from now on (--te-precision fp32 skips the fp16 try)"
                );
                self.te_to_fp32(model)?;
                f(&mut self.text)
            }
            other => other,
        }
    }

    /// Rebuilds the text encoders in fp32 with what they held ([`TeSource`]).
    fn te_to_fp32(&mut self, model: &Model) -> Result<(), PipelineError> {
        self.te_overflowed = true;
        let opts = self.build_opts();
        let deltas = match &self.te_source {
            TeSource::Deltas(d) => d.clone(),
            TeSource::Adapters(loras, key) => {
                let mut te_key = key.clone();
                te_key.unet.iter_mut().for_each(|u| *u = [0.0; 3]);
                adapters::compute(model, loras, &te_key)?.0
            }
        };
        let mut stats = FuseStats::default();
        self.text = self.build_text(model, &opts, &deltas, &mut stats)?;
        Ok(())
    }

    /// The graph the VAE runs now (tests, `bench`): fp16 or fp32.
    pub fn vae_is_fp16(&self) -> bool {
        vae::lock(&self.vae).fallback.is_some()
    }

    /// Whether the VAE decoder's session makes the picture's bytes itself ([`rgb_tail`]).
    pub fn vae_makes_bytes(&self) -> bool {
        vae::makes_bytes(&vae::lock(&self.vae).session)
    }

    /// Whether the VAE decoder runs a fused CUDA graph now (`bench`): the fp16 one, or the f32 one
    /// (fp32 asked for, or after an fp16 overflow: the fallback resolves the graph as this does).
    pub fn vae_is_fused(&self, model: &Model) -> bool {
        matches!(
            vae_graph(model, &self.build_opts(), ComponentKind::VaeDecoder),
            Ok(GraphKind::Fused | GraphKind::Fused32)
        )
    }
}

impl Sessions {
    /// Encodes an image `[1, 3, h, w]` in [-1, 1] to the VAE encoder's `latent_parameters`
    /// `[1, 8, h/f, w/f]` (mean and log-variance).
    pub fn encode(
        &mut self,
        model: &Model,
        chw: &[f32],
        h: usize,
        w: usize,
    ) -> Result<Vec<f32>, PipelineError> {
        let f = model.index.vae_scale_factor.max(1) as usize;
        if self.vae_tiling.applies(h / f, w / f) {
            let tile = self.vae_tiling.tile;
            return self.tiled_encoder(model)?.encode(chw, h, w, h / f, tile);
        }
        let encode = |session: &mut Session| {
            run(
                session,
                vec![Input::F32("sample", vec![1, 3, h, w], chw)],
                &["latent_parameters"],
            )
            .map_err(run_err("VAE encoder"))
            .map(|out| out.into_iter().next().map(|(_, d)| d).unwrap_or_default())
        };
        if self.encoder.is_none() {
            self.encoder = Some(self.build_encoder(model, &self.build_opts())?);
        }
        let Some((session, fp16)) = self.encoder.as_mut() else {
            return Err(PipelineError::Job("the VAE encoder went missing".into()));
        };
        let out = encode(session)?;
        if !*fp16 || out.iter().all(|x| x.is_finite()) {
            return Ok(out);
        }
        tracing::warn!(
            "the fp16 VAE encoder overflowed (non-finite latents); encoding in fp32 from now on \
             (--vae-precision fp32 skips the fp16 try)"
        );
        self.vae_overflowed.store(true, Ordering::Relaxed);
        let mut fp32 = self.build_opts();
        fp32.vae_precision = VaePrecision::Fp32;
        let (session, _) = self.encoder.insert(self.build_encoder(model, &fp32)?);
        encode(session)
    }

    /// The VAE encoder session and whether it runs the fp16 graph.
    fn build_encoder(
        &self,
        model: &Model,
        opts: &SessionOptions,
    ) -> Result<(Session, bool), PipelineError> {
        let kind = ComponentKind::VaeEncoder;
        let fp16 = matches!(
            vae_graph(model, opts, kind)?,
            GraphKind::Cuda | GraphKind::Fused
        );
        let none = HashMap::new();
        let net = build_component(
            model,
            self.runtime,
            opts,
            kind,
            &none,
            &[],
            &mut FuseStats::default(),
        )?;
        Ok((net.session, fp16))
    }
}

/// `kind`'s component of `model` and its plain (fp32) graph's weights, assembled with no adapter.
fn plain_weights(
    model: &Model,
    kind: ComponentKind,
) -> Result<(&Component, Arc<[u8]>), PipelineError> {
    let c = model
        .component(kind)
        .ok_or_else(|| PipelineError::Job(format!("the model has no {kind}")))?;
    let none: HashMap<String, Vec<f32>> = HashMap::new();
    let (buf, _) = patch::assemble_graph(c, GraphKind::Plain, &none)?;
    c.weights.release_pages();
    Ok((c, buf))
}

/// The UNet's named inputs: sample, timestep (one per batch row), context and, for SDXL, the
/// added conditioning.
pub(crate) fn unet_inputs<'a>(
    call: UnetCall<'a>,
    t: &'a [f32],
    context_dim: usize,
) -> Vec<Input<'a>> {
    let UnetCall {
        sample,
        shape,
        context,
        added,
        ..
    } = call;
    let b = shape[0];
    let seq = context.len() / (b * context_dim);
    let mut inputs = vec![
        Input::F32("sample", shape.to_vec(), sample),
        Input::F32("timestep", vec![b], t),
        Input::F32("encoder_hidden_states", vec![b, seq, context_dim], context),
    ];
    if let Some(a) = added {
        inputs.push(Input::F32(
            "text_embeds",
            vec![b, a.text_embeds.len() / b],
            a.text_embeds,
        ));
        inputs.push(Input::F32(
            "time_ids",
            vec![b, a.time_ids.len() / b],
            a.time_ids,
        ));
    }
    inputs
}

/// Free-dimension overrides of the UNet for static shapes: `[batch, height, width, sequence]`, the
/// batch being the CFG batch (twice the images sampled together).
pub(crate) fn unet_dim_overrides(dims: Option<[i64; 4]>) -> Vec<(&'static str, i64)> {
    match dims {
        Some([b, h, w, seq]) => vec![("batch", b), ("height", h), ("width", w), ("sequence", seq)],
        None => Vec::new(),
    }
}

/// Builds `kind`'s session with `deltas` added: with resident weights for the components adapters
/// patch when the options ask for them, else with the weights baked in.
fn build_component(
    model: &Model,
    rt: &'static Runtime,
    opts: &SessionOptions,
    kind: ComponentKind,
    deltas: &dyn patch::DeltaSource,
    dims: &[(&str, i64)],
    stats: &mut FuseStats,
) -> Result<Net, PipelineError> {
    let c = model
        .component(kind)
        .ok_or_else(|| PipelineError::Job(format!("the model has no {kind}")))?;
    let is_vae = matches!(kind, ComponentKind::VaeDecoder | ComponentKind::VaeEncoder);
    let is_te = matches!(
        kind,
        ComponentKind::TextEncoder | ComponentKind::TextEncoder2
    );
    let which = if is_vae {
        vae_graph(model, opts, kind)?
    } else if is_te {
        te_graph(model, opts, kind)?
    } else {
        opts.graph
            .resolve(opts.device, c)
            .map_err(PipelineError::Job)?
    };
    let what = match which {
        GraphKind::Plain => kind.dir_name().to_string(),
        GraphKind::Cuda if is_vae || is_te => format!("{kind} (fp16)"),
        GraphKind::Cuda => format!("{kind} (fused CUDA graph)"),
        GraphKind::Fused => format!("{kind} (fp16, fused CUDA graph)"),
        GraphKind::Fused32 => format!("{kind} (fp32, fused CUDA graph)"),
    };
    // Only a UNet with fixed shapes is captured as a CUDA graph: it is what runs every step, and
    // capture needs the shapes settled (the load-time UNet, built without them, is replaced by the
    // first job's).
    let mut opts = if kind == ComponentKind::Unet && !dims.is_empty() {
        opts.clone()
    } else {
        opts.without_cuda_graph()
    };
    opts.cuda.fused_graph = conv_bias_fusable(kind, which);
    opts.rarely_run = kind != ComponentKind::Unet;
    let opts = &opts;
    let fp16 = is_te && matches!(which, GraphKind::Cuda | GraphKind::Fused);
    if opts.resident_weights() && !is_vae {
        let t = Instant::now();
        let net = resident::build(rt, &what, c, which, deltas, opts, dims)?;
        // Filling, the session build and the upload are one step here.
        stats.session_s += t.elapsed().as_secs_f64();
        return Ok(net.with_fp16(fp16));
    }
    bake(c, rt, opts, which, &what, deltas, dims, stats).map(|s| Net::baked(s).with_fp16(fp16))
}

/// `c`'s `which` graph as a session with its weights (plus `deltas`) baked in.
#[allow(clippy::too_many_arguments)]
pub(super) fn bake(
    c: &Component,
    rt: &'static Runtime,
    opts: &SessionOptions,
    which: GraphKind,
    what: &str,
    deltas: &dyn patch::DeltaSource,
    dims: &[(&str, i64)],
    stats: &mut FuseStats,
) -> Result<Session, PipelineError> {
    let Some((graph, weightmap)) = c.graph_of(which) else {
        return Err(PipelineError::Job(format!(
            "{}: no {which:?} graph",
            c.kind
        )));
    };
    if let Some(session) = bake_staged(c, rt, opts, which, what, deltas, dims, stats)? {
        return Ok(session);
    }
    let t = Instant::now();
    let (buf, _stats) = patch::assemble_graph(c, which, deltas)?;
    c.weights.release_pages();
    stats.patch_s += t.elapsed().as_secs_f64();
    crate::runtime::host_mem::trace(&format!("{what}: weights assembled"));
    let t = Instant::now();
    let session = build_session(
        rt,
        what,
        &session_graph(c, graph, opts.device),
        &weightmap.external_file,
        buf,
        opts,
        dims,
        &[],
    )?;
    stats.session_s += t.elapsed().as_secs_f64();
    crate::runtime::host_mem::trace(&format!("{what}: session built"));
    Ok(session)
}

/// The graph bytes a baked session of `c` runs on `device`: a VAE decoder's with [`rgb_tail`]
/// appended, so the decoder gives the picture's bytes (made on its device) instead of f32 values;
/// any other's, or a decoder graph the tail does not suit, as they are. DirectML keeps the host
/// conversion: the tail has been run on the CPU (the tests) and CUDA (the GPU check), not there.
fn session_graph<'g>(c: &Component, graph: &'g Graph, device: Device) -> Cow<'g, [u8]> {
    if c.kind != ComponentKind::VaeDecoder || matches!(device, Device::DirectMl(_)) {
        return Cow::Borrowed(&graph.bytes);
    }
    match rgb_tail::append(&graph.bytes) {
        Ok(bytes) => Cow::Owned(bytes),
        Err(e) => {
            tracing::debug!("{e}; the decoder's output is converted on the host");
            Cow::Borrowed(&graph.bytes)
        }
    }
}

/// [`bake`] on the CPU through weights staged on disk ([`crate::runtime::staged`]): the buffer is
/// written to a file ONNX Runtime maps, so the build holds the weights once (its pre-packed
/// copies) instead of stipple's buffer, ONNX Runtime's copy of it and the copies it makes from
/// that (SD1.5's UNet, 3.3 GB of weights: 9.9 GB at its build's peak, measured 2026-12-06).
/// `None` where it does not apply (another device, `STIPPLE_STAGE_WEIGHTS=0`, not Unix) or where
/// staging failed on the file system (full, read-only): [`bake`] then builds from memory.
#[allow(clippy::too_many_arguments)]
fn bake_staged(
    c: &Component,
    rt: &'static Runtime,
    opts: &SessionOptions,
    which: GraphKind,
    what: &str,
    deltas: &dyn patch::DeltaSource,
    dims: &[(&str, i64)],
    stats: &mut FuseStats,
) -> Result<Option<Session>, PipelineError> {
    if !crate::runtime::staged::enabled(opts.device) {
        return Ok(None);
    }
    #[cfg(unix)]
    {
        let Some((graph, weightmap)) = c.graph_of(which) else {
            return Ok(None);
        };
        let t = Instant::now();
        let len = crate::model::layout::buffer_len(graph) as u64;
        let staged = crate::runtime::staged::Staged::create(
            &session_graph(c, graph, opts.device),
            &weightmap.external_file,
            len,
        );
        let (staged, file) = match staged {
            Ok(s) => s,
            Err(err) => {
                tracing::warn!(
                    "{what}: staging the weights on disk failed ({err}); building from memory"
                );
                return Ok(None);
            }
        };
        match patch::assemble_graph_to(c, which, deltas, &file) {
            Ok(_) => {}
            Err(patch::PatchError::Staging { message, .. }) => {
                c.weights.release_pages();
                tracing::warn!(
                    "{what}: staging the weights on disk failed ({message}); building from memory"
                );
                return Ok(None);
            }
            Err(err) => return Err(err.into()),
        }
        drop(file);
        c.weights.release_pages();
        stats.patch_s += t.elapsed().as_secs_f64();
        crate::runtime::host_mem::trace(&format!("{what}: weights staged"));
        let t = Instant::now();
        let session =
            crate::runtime::build_session_staged(rt, what, &staged.graph_path(), opts, dims, &[])?;
        // The session maps what it still reads; the names go now.
        drop(staged);
        crate::runtime::staged::count_baked();
        stats.session_s += t.elapsed().as_secs_f64();
        crate::runtime::host_mem::trace(&format!("{what}: session built"));
        Ok(Some(session))
    }
    #[cfg(not(unix))]
    {
        let _ = (c, rt, which, what, deltas, dims, stats);
        Ok(None)
    }
}

/// The graph a VAE component of `model` runs with `opts`: [`VaePrecision::resolve`]'s, then the
/// fused one for the decoder where [`GraphChoice::resolve_fused`] picks it.
fn vae_graph(
    model: &Model,
    opts: &SessionOptions,
    kind: ComponentKind,
) -> Result<GraphKind, PipelineError> {
    let precision = precision_graph(model, opts, kind, opts.vae_precision, model.vae_fp16_safe())?;
    let c = model
        .component(kind)
        .ok_or_else(|| PipelineError::Job(format!("the model has no {kind}")))?;
    opts.vae_graph
        .resolve_fused(opts.device, c, precision)
        .map_err(PipelineError::Job)
}

/// The graph a text encoder of `model` runs with `opts` (`--te-precision`, [`TePrecision`], then
/// `--te-graph`). `auto` takes the fused fp16 graph on CUDA where the model has it (it passed the
/// GPU check and is faster: see [`te_fp16_by_default`]) and fp32 elsewhere; `fp16` asks
/// for the fp16 graphs anywhere (the overflow fallback is [`Sessions::with_text`]). Public for the
/// test of the shipped default.
pub fn te_graph(
    model: &Model,
    opts: &SessionOptions,
    kind: ComponentKind,
) -> Result<GraphKind, PipelineError> {
    let c = model
        .component(kind)
        .ok_or_else(|| PipelineError::Job(format!("the model has no {kind}")))?;
    let by_default = te_fp16_by_default(opts.device, c.fused.is_some());
    let precision = opts
        .te_precision
        .resolve(opts.device, c, by_default)
        .map_err(PipelineError::Job)?;
    opts.te_graph
        .resolve_fused(opts.device, c, precision)
        .map_err(PipelineError::Job)
}

/// The graph component `kind` of `model` runs at `precision` on `opts`' device.
fn precision_graph(
    model: &Model,
    opts: &SessionOptions,
    kind: ComponentKind,
    precision: Precision,
    fp16_safe: bool,
) -> Result<GraphKind, PipelineError> {
    let c = model
        .component(kind)
        .ok_or_else(|| PipelineError::Job(format!("the model has no {kind}")))?;
    precision
        .resolve(opts.device, c, fp16_safe)
        .map_err(PipelineError::Job)
}

/// The components of `model`'s text encoders, in the order their hidden states are concatenated.
fn text_encoders(model: &Model) -> impl Iterator<Item = ComponentKind> {
    model
        .index
        .family
        .facts()
        .encoders
        .iter()
        .map(|e| e.component)
}

/// Whether `--te-precision auto` picks the fp16 text encoders: on CUDA, with the encoder's fused
/// graph, for every family (the GPU check passed with a gain for each: README, `--te-precision`).
/// DirectML and the CPU keep fp32: neither has been checked with them, and the CPU gains nothing.
fn te_fp16_by_default(device: Device, has_fused: bool) -> bool {
    matches!(device, Device::Cuda(_)) && has_fused
}

/// Whether cuDNN's fused convolution + bias (`[cuda] fuse_conv_bias`) may be used for `kind`'s
/// `which` graph: the fused UNet and the fused VAE decoder, where it passed the GPU check (H100,
/// 2026-12-07). The plain graphs' convolutions are left alone: there cuDNN's frontend finds no
/// plan for the UNet's `conv_in` with its fused residual add, and the session fails at its first run.
fn conv_bias_fusable(kind: ComponentKind, which: GraphKind) -> bool {
    matches!(
        (kind, which),
        (ComponentKind::Unet, GraphKind::Cuda) | (ComponentKind::VaeDecoder, GraphKind::Fused)
    )
}

/// A text encoder always runs on one 77-token chunk, so its session is built for that shape on
/// every device: ONNX Runtime then folds the graph's shape arithmetic (about 40 % of the CLIP
/// graph's nodes, each a launch or a host round trip per run) into constants once.
const TE_DIMS: [(&str, i64); 2] = [("batch", 1), ("sequence", 77)];

/// The VAE decoder for latents of `dims`: the fp16 graph where [`VaePrecision`] chooses it, with
/// the fp32 build as its fallback (made from the component's plain twin, on first overflow).
fn build_vae(
    model: &Model,
    rt: &'static Runtime,
    opts: &SessionOptions,
    dims: &[(&'static str, i64)],
) -> Result<VaeSlot, PipelineError> {
    let kind = ComponentKind::VaeDecoder;
    let none = HashMap::new();
    let net = build_component(
        model,
        rt,
        opts,
        kind,
        &none,
        dims,
        &mut FuseStats::default(),
    )?;
    if !matches!(
        vae_graph(model, opts, kind)?,
        GraphKind::Cuda | GraphKind::Fused
    ) {
        return Ok(VaeSlot::fp32(net.session));
    }
    let c = model
        .component(kind)
        .ok_or_else(|| PipelineError::Job(format!("the model has no {kind}")))?;
    let twin = c.plain_twin();
    let mut fp32 = opts.without_cuda_graph();
    fp32.vae_precision = VaePrecision::Fp32;
    let dims = dims.to_vec();
    // The f32 fused graph where the fp16 one ran fused (CUDA), else the plain fp32 graph.
    let which = opts
        .vae_graph
        .resolve_fused(opts.device, &twin, GraphKind::Plain)
        .unwrap_or(GraphKind::Plain);
    let fallback: Fallback = Box::new(move || {
        let what = match which {
            GraphKind::Fused32 => {
                format!("{kind} (fp32, fused CUDA graph, after an fp16 overflow)")
            }
            _ => format!("{kind} (fp32, after an fp16 overflow)"),
        };
        let none: HashMap<String, Vec<f32>> = HashMap::new();
        let mut st = FuseStats::default();
        bake(&twin, rt, &fp32, which, &what, &none, &dims, &mut st)
    });
    Ok(VaeSlot {
        session: net.session,
        fallback: Some(fallback),
    })
}

/// The text encoders, UNet and VAE decoder of `model` with `deltas` added, built side by side:
/// each build is independent, and much of ONNX Runtime's session creation (graph optimisation,
/// initializer placement) runs on one thread. An error names its component; with several, the
/// first in the family's order (text encoders, UNet, VAE decoder) is returned.
/// The text encoders, the UNet, the VAE and how long each took to build.
type BuiltSessions = (Vec<Net>, Net, VaeSlot, Vec<(ComponentKind, f64)>);

fn build_sessions(
    model: &Model,
    rt: &'static Runtime,
    opts: &SessionOptions,
    deltas: &ComponentDeltas,
) -> Result<BuiltSessions, PipelineError> {
    let build = |kind| -> Result<(Net, Option<Fallback>), PipelineError> {
        if kind == ComponentKind::VaeDecoder {
            let slot = build_vae(model, rt, opts, &[])?;
            return Ok((Net::baked(slot.session), slot.fallback));
        }
        let is_text = text_encoders(model).any(|k| k == kind);
        let dims: &[(&str, i64)] = if is_text { &TE_DIMS } else { &[] };
        build_component(
            model,
            rt,
            opts,
            kind,
            deltas.get(&kind).unwrap_or(&HashMap::new()),
            dims,
            &mut FuseStats::default(),
        )
        .map(|n| (n, None))
    };
    let mut kinds: Vec<ComponentKind> = text_encoders(model).collect();
    kinds.extend([ComponentKind::Unet, ComponentKind::VaeDecoder]);
    type Built = ((Net, Option<Fallback>), f64);
    let built: Vec<Result<Built, PipelineError>> = std::thread::scope(|s| {
        let builds: Vec<_> = kinds
            .iter()
            .map(|&kind| {
                (
                    kind,
                    s.spawn(move || {
                        let t = Instant::now();
                        build(kind).map(|b| (b, t.elapsed().as_secs_f64()))
                    }),
                )
            })
            .collect();
        builds
            .into_iter()
            .map(|(kind, b)| {
                b.join().unwrap_or_else(|_| {
                    Err(PipelineError::Job(format!(
                        "{kind}: the session build panicked"
                    )))
                })
            })
            .collect()
    });
    let (mut nets, secs): (Vec<_>, Vec<f64>) = built
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .unzip();
    let times = kinds.iter().copied().zip(secs).collect();
    let vae = nets.pop();
    let unet = nets.pop();
    let text = nets.into_iter().map(|(n, _)| n).collect();
    match (unet, vae) {
        (Some((unet, _)), Some((vae, fallback))) => Ok((
            text,
            unet,
            VaeSlot {
                session: vae.session,
                fallback,
            },
            times,
        )),
        _ => Err(PipelineError::Job("a session build went missing".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_bias_fusion_is_for_the_fused_unet_and_vae_only() {
        use ComponentKind as C;
        use GraphKind as G;
        assert!(conv_bias_fusable(C::Unet, G::Cuda));
        assert!(conv_bias_fusable(C::VaeDecoder, G::Fused));
        for (kind, which) in [
            (C::Unet, G::Plain),
            (C::VaeDecoder, G::Cuda),
            (C::VaeDecoder, G::Plain),
            (C::VaeEncoder, G::Cuda),
            (C::TextEncoder, G::Fused),
            (C::TextEncoder2, G::Cuda),
        ] {
            assert!(!conv_bias_fusable(kind, which), "{kind} {which:?}");
        }
    }

    #[test]
    fn auto_takes_fp16_text_encoders_on_cuda_with_the_fused_graph_only() {
        assert!(te_fp16_by_default(Device::Cuda(0), true));
        assert!(te_fp16_by_default(Device::Cuda(1), true));
        assert!(!te_fp16_by_default(Device::Cuda(0), false));
        assert!(!te_fp16_by_default(Device::Cpu, true));
        assert!(!te_fp16_by_default(Device::DirectMl(0), true));
    }
}
