//! The spare UNet: a second resident UNet session over weight buffers of its own, for jobs whose
//! UNet strengths change from step to step (schedules, dials). [`Sessions::prepare_next`] readies
//! it for the next step's strengths: a re-run of its patch program that [`Sessions::unet`] runs on
//! another thread beside the step (on CUDA, on the program's own stream), so the patch overlaps the
//! step instead of preceding it; [`Sessions::fuse`] then swaps the two ([`Sessions::swap_spare`]).

use super::{unet_dim_overrides, Sessions};
use crate::model::layout::ComponentKind;
use crate::model::Model;
use crate::pipeline::adapters::{self, ActiveLora, PlannedView, StrengthKey};
use crate::pipeline::device_patch;
use crate::pipeline::error::PipelineError;
use crate::pipeline::keys::{self, FusedKey, Fusion};
use crate::pipeline::rerun;
use crate::pipeline::resident::Net;
use crate::runtime::tensor_io::Bound;
use crate::runtime::SessionOptions;
use std::time::{Duration, Instant};

/// Completed runs a session needs before anything runs beside it. ONNX Runtime's CUDA provider
/// captures a session's CUDA graph (`--cuda-graph`) at its third run on a thread, in the global
/// capture mode, in which another thread's synchronous CUDA call (a copy, a synchronisation)
/// breaks the capture: the UNet sessions' captures run alone. (The spare's programs, which run on
/// other threads, are never captured: [`unet_patch_opts`].)
const WARM_RUNS: u64 = 3;

/// The options the UNet's patch programs are built with: uncaptured while a spare may run them on
/// a helper thread. ONNX Runtime keeps a captured graph per calling thread and captures on that
/// thread's third run, so a program captured on the engine's thread would be captured again on
/// the helper's, beside a UNet step, in the global capture mode. The two nets swap roles, so
/// every UNet program is built so, not only the spare's.
pub(super) fn unet_patch_opts(opts: &SessionOptions) -> SessionOptions {
    let mut o = opts.clone();
    if o.spare_unet() {
        o.cuda.patch_graph = false;
    }
    o
}

/// Device memory a spare must leave free beyond its weights and base copies: its own activations
/// (ONNX Runtime's arena for one UNet run) and what the other sessions' runs may still allocate. A
/// round figure, not a measured one: the spare is an optimisation, so too much margin only costs
/// its speed-up on a nearly full GPU.
const SPARE_HEADROOM: u64 = 4 << 30;

/// The second UNet and what its weights hold.
pub(super) struct Spare {
    pub(super) net: Net,
    /// Its fixed input and output buffers, when the UNet runs through them.
    pub(super) io: Option<Bound>,
    /// What its weights hold, as [`FusedKey::unet`]; None when unknown (a failed run).
    pub(super) holds: Fusion,
    /// The static shapes it was built for, as [`FusedKey::unet_dims`].
    pub(super) dims: Option<[i64; 4]>,
    /// UNet runs since its session was built.
    pub(super) runs: u64,
}

/// A re-run of the spare's program waiting for the next UNet call: its strengths input and what
/// the weights hold after it.
pub(super) struct Pending {
    strengths: Vec<f32>,
    want: Fusion,
}

/// What a re-run of the spare's program took: its wall time, and how long the step waited for it
/// after its own run (None when it did not run beside one).
pub(super) struct Prefetched {
    took: Duration,
    waited: Option<Duration>,
}

/// Re-runs the spare's program (`net`, and what it `holds`) with `p`'s strengths; what the
/// weights hold is unknown until it ends well. Fields, not the [`Spare`], so that the UNet's
/// buffers beside them stay on the step's thread.
fn prefetch(net: &mut Net, holds: &mut Fusion, p: Pending) -> Result<Duration, PipelineError> {
    let t = Instant::now();
    *holds = None;
    net.rerun_patch(&p.strengths)?;
    *holds = p.want;
    Ok(t.elapsed())
}

impl Sessions {
    /// Readies the spare UNet for the next step's strengths `key` of `loras` when they differ from
    /// the current ones (nothing otherwise, or without [`crate::runtime::SessionOptions::spare_unet`]).
    /// The spare is built at the first such step; a new adapter set's program is staged and run
    /// here; a strength change of the same set waits for [`Sessions::unet`]. A spare that cannot
    /// be built or patched is logged and left out: the step then patches the UNet as before.
    pub fn prepare_next(&mut self, model: &Model, loras: &[ActiveLora], key: &StrengthKey) {
        self.pending = None;
        if !self.spare_wanted() {
            return;
        }
        let want = FusedKey::of(loras, key).unet;
        let dims = self.fused.unet_dims;
        if want == self.fused.unet || self.fused.unet.is_none() {
            return;
        }
        if self.spare.as_ref().is_some_and(|s| s.dims != dims) {
            self.spare = None;
        }
        if self.spare.is_none() {
            if let Err(why) = self.room_for_spare() {
                // Asked for (`--spare-unet true`), so said where it is seen by default.
                tracing::warn!(
                    "UNet: no spare session ({why}); strength changes patch before their step"
                );
                self.spare_failed = true;
                return;
            }
            let t = Instant::now();
            match self.build_spare(model, dims) {
                Ok(s) => {
                    tracing::info!(
                        "UNet: a spare session for per-step strength changes, built in {:.2} s",
                        t.elapsed().as_secs_f64()
                    );
                    self.spare = Some(s);
                }
                Err(e) => {
                    tracing::warn!(
                        "UNet: no spare session ({e}); strength changes patch before their step"
                    );
                    self.spare_failed = true;
                    return;
                }
            }
        }
        let Some(spare) = self.spare.as_mut() else {
            return;
        };
        if spare.holds == want {
            return;
        }
        let set = keys::adapter_set(loras);
        let component = crate::lora::TargetComponent::Unet;
        let slots = spare
            .net
            .patch_program()
            .and_then(|p| rerun::slots(p, &set, loras, key, component));
        if let Some(strengths) = slots {
            self.pending = Some(Pending { strengths, want });
            return;
        }
        // Another adapter set, or a term that holds its strength: a new program, run now.
        if let Err(e) = self.stage_spare(model, loras, key, want) {
            tracing::warn!("UNet: the spare session was not patched ({e})");
        }
    }

    /// Whether [`Self::prepare_next`] may use a spare: asked for, resident weights, and not
    /// refused already (so the sampling loop skips the next step's strengths otherwise).
    pub fn spare_wanted(&self) -> bool {
        self.opts.spare_unet() && self.unet.is_resident() && !self.spare_failed
    }

    /// Whether the device has room for a spare: its weights, base copies of as many for the
    /// weights its programs write, and [`SPARE_HEADROOM`] for its activations. Devices whose free
    /// memory is not read (the CPU, DirectML) are not checked.
    fn room_for_spare(&self) -> Result<(), String> {
        let crate::runtime::Device::Cuda(id) = self.opts.device else {
            return Ok(());
        };
        let weights = self.unet.layout().map_or(0, |l| l.bytes());
        let need = 2 * weights + SPARE_HEADROOM;
        match device_patch::cuda_free_bytes(id) {
            Ok(free) if free < need => Err(format!(
                "it needs about {} MiB of device memory, {} MiB are free",
                need >> 20,
                free >> 20
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("the free device memory is unknown: {e}")),
        }
    }

    /// The spare UNet: the primary's graph and shapes, the base weights.
    fn build_spare(&self, model: &Model, dims: Option<[i64; 4]>) -> Result<Spare, PipelineError> {
        let mut stats = super::FuseStats::default();
        let none: std::collections::HashMap<String, Vec<f32>> = Default::default();
        let net = super::build_component(
            model,
            self.runtime,
            &self.build_opts(),
            ComponentKind::Unet,
            &none,
            &unet_dim_overrides(dims),
            &mut stats,
        )?;
        Ok(Spare {
            net,
            io: None,
            holds: Some(Vec::new()),
            dims,
            runs: 0,
        })
    }

    /// Brings the spare to `key` of `loras` with a new patch program (planned, staged, run).
    fn stage_spare(
        &mut self,
        model: &Model,
        loras: &[ActiveLora],
        key: &StrengthKey,
        want: Fusion,
    ) -> Result<(), PipelineError> {
        let opts = unet_patch_opts(&self.build_opts());
        let rt = self.runtime;
        let Some(spare) = self.spare.as_mut() else {
            return Ok(());
        };
        let c = model
            .component(ComponentKind::Unet)
            .ok_or_else(|| PipelineError::Job("the model has no UNet".into()))?;
        let layout = spare
            .net
            .layout()
            .ok_or_else(|| PipelineError::Job("the spare UNet holds no resident weights".into()))?;
        let staged = adapters::with_plan(model, loras, key, |plan| {
            let view = PlannedView {
                plan: &plan,
                component: crate::lora::TargetComponent::Unet,
            };
            device_patch::stage(rt, &opts, layout, c, &view)
        })??;
        let mut staged = staged;
        staged.adapters = Some(keys::adapter_set(loras));
        spare.holds = None;
        spare.net.commit_device(staged)?;
        spare.holds = want;
        Ok(())
    }

    /// Makes the spare's next re-run fail (it is handed one strength too many), as a failure
    /// inside its program would (tests); false when there is no spare.
    #[doc(hidden)]
    pub fn break_spare_for_test(&mut self) -> bool {
        self.fail_next_prefetch = self.spare.is_some();
        self.fail_next_prefetch
    }

    /// Swaps the spare in when its weights hold `want`'s UNet part at the UNet's shapes: the
    /// step then needs no patch. True when it did.
    pub(super) fn swap_spare(&mut self, want: &FusedKey) -> bool {
        let Some(s) = self.spare.as_mut() else {
            return false;
        };
        if s.holds.is_none() || s.holds != want.unet || s.dims != want.unet_dims {
            return false;
        }
        std::mem::swap(&mut self.unet, &mut s.net);
        std::mem::swap(&mut self.unet_io, &mut s.io);
        std::mem::swap(&mut self.unet_runs, &mut s.runs);
        s.holds = std::mem::replace(&mut self.fused.unet, want.unet.clone());
        self.counts.spare_swaps += 1;
        true
    }

    /// Runs `step` (a UNet call on the UNet and its buffers) with the pending re-run of the spare's
    /// program beside it, or before it while the UNet session may still capture ([`WARM_RUNS`]).
    pub(super) fn with_prefetch<R>(
        &mut self,
        step: impl FnOnce(&mut Net, &mut Option<Bound>) -> R,
    ) -> R {
        let pending = self.pending.take();
        let (Some(mut p), Some(spare)) = (pending, self.spare.as_mut()) else {
            return step(&mut self.unet, &mut self.unet_io);
        };
        if std::mem::take(&mut self.fail_next_prefetch) {
            p.strengths.push(0.0);
        }
        // The UNet session about to run is past its capture ([`WARM_RUNS`]).
        let warm = self.unet_runs >= WARM_RUNS;
        let (net, holds) = (&mut spare.net, &mut spare.holds);
        let (out, prefetched) = if warm {
            let (unet, io) = (&mut self.unet, &mut self.unet_io);
            std::thread::scope(|s| {
                let helper = s.spawn(|| prefetch(net, holds, p));
                let out = step(unet, io);
                let done = Instant::now();
                let got = helper.join().unwrap_or_else(|_| {
                    Err(PipelineError::Job("the spare's patch panicked".into()))
                });
                let waited = done.elapsed();
                (
                    out,
                    got.map(|took| Prefetched {
                        took,
                        waited: Some(waited),
                    }),
                )
            })
        } else {
            let got = prefetch(net, holds, p).map(|took| Prefetched { took, waited: None });
            (step(&mut self.unet, &mut self.unet_io), got)
        };
        match prefetched {
            Ok(p) => {
                self.counts.prefetches += 1;
                self.counts.prefetch_us += p.took.as_micros() as u64;
                if let Some(w) = p.waited {
                    self.counts.overlapped += 1;
                    self.counts.prefetch_wait_us += w.as_micros() as u64;
                }
            }
            Err(e) => {
                self.counts.prefetch_failures += 1;
                tracing::warn!(
                    "UNet: the spare session's patch failed ({e}); the step patches the UNet"
                )
            }
        }
        out
    }
}
