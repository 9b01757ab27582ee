//! Live stepping: [`LiveStepper`] owns how adapters reach the weights ([`LoraMethod`]), the front
//! end's strength [`Dials`] and the live UNet, decides per adapter whether it runs live, brings the
//! sessions to each step's strengths and runs the step's UNet on the live session or the fused one.

use super::adapters::{self, ActiveLora, StrengthKey};
use super::dials::Dials;
use super::error::PipelineError;
use super::keys::{FactorsKey, FusedKey, LiveSessionKey};
use super::sessions::{unet_dim_overrides, unet_inputs, FuseStats, Sessions, UnetCall};
use crate::live::{self, LiveOptions, LiveUnet, LoraMethod};
use crate::model::layout::ComponentKind;
use crate::model::Model;
use std::collections::HashMap;

/// A live UNet with what it was built for.
struct Built {
    unet: LiveUnet,
    session: LiveSessionKey,
    factors: FactorsKey,
}

/// The live side of sampling: method, dials and the live UNet.
pub struct LiveStepper {
    method: LoraMethod,
    opts: LiveOptions,
    dials: Dials,
    live: Option<Built>,
}

impl LiveStepper {
    pub fn new(method: LoraMethod, opts: LiveOptions) -> Self {
        LiveStepper {
            method,
            opts,
            dials: Dials::default(),
            live: None,
        }
    }

    pub fn method(&self) -> LoraMethod {
        self.method
    }

    pub fn set_method(&mut self, method: LoraMethod) {
        self.method = method;
    }

    pub fn options(&self) -> LiveOptions {
        self.opts
    }

    /// The dials front ends turn (shared with the engine handle).
    pub fn dials(&self) -> Dials {
        self.dials.clone()
    }

    pub fn set_dials(&mut self, dials: Dials) {
        self.dials = dials;
    }

    /// The live UNet's factors (layers, SVD approximations), when the last job ran live.
    pub fn factors(&self) -> Option<&live::factors::Factors> {
        self.live.as_ref().map(|l| &l.unet.factors)
    }

    /// Strengths at a step: the prompt's schedules with the front end's dials on top.
    pub fn step_key(&self, loras: &[ActiveLora], step: usize, steps: usize) -> StrengthKey {
        let mut key = adapters::strengths_at(loras, step, steps);
        for (i, l) in loras.iter().enumerate() {
            self.dials
                .apply(&l.tag.name, &mut key.te[i], &mut key.unet[i]);
        }
        key
    }

    /// Which adapters run live on the UNet. The text encoder is always fused: it is small, and
    /// conditioning is cached per distinct text-encoder strength set anyway. With the device patch
    /// (`device_patch`, [`Sessions::device_patch`]) schedules and dials are fused too: a strength
    /// change there re-runs the patch program before the step, cheaper than live branches.
    pub fn live_mask(&self, loras: &[ActiveLora], device_patch: bool) -> Vec<bool> {
        loras
            .iter()
            .map(|l| match self.method {
                LoraMethod::Refuse => false,
                LoraMethod::Live => true,
                LoraMethod::Fuse if device_patch => false,
                LoraMethod::Fuse => {
                    [&l.tag.in_, &l.tag.mid, &l.tag.out]
                        .iter()
                        .any(|s| s.is_scheduled())
                        || self.dials.dialled(&l.tag.name)
                }
            })
            .collect()
    }

    /// Brings the sessions to `key`: the plain fuse path when nothing is live; otherwise the text
    /// encoder is fused and the live UNet built (once per set of layers and static adapters).
    pub fn fuse_step(
        &mut self,
        model: &Model,
        sessions: &mut Sessions,
        loras: &[ActiveLora],
        mode: &[bool],
        key: &StrengthKey,
        dims: Option<[i64; 4]>,
    ) -> Result<(), PipelineError> {
        if !mode.iter().any(|&m| m) {
            return sessions.fuse(model, loras, key, dims);
        }
        if sessions.opts().cuda_graph() {
            return Err(PipelineError::CudaGraph(match self.method {
                LoraMethod::Live => "lora_method live (--lora-method live) runs every adapter live",
                _ => "strength schedules (`te=0.1@1,0.6@6`) and dialled strengths run live",
            }));
        }
        sessions.fuse_text(model, loras, key)?;
        // Static adapters are fused into the live session's weights; live ones are branches.
        let mut static_key = key.clone();
        static_key.te.iter_mut().for_each(|t| *t = 0.0);
        for (u, _) in static_key.unet.iter_mut().zip(mode).filter(|(_, &m)| m) {
            *u = [0.0; 3];
        }
        let factors_key: FactorsKey = loras
            .iter()
            .zip(mode)
            .filter(|(_, &m)| m)
            .map(|(l, _)| (l.path.clone(), l.tag.dyn_))
            .collect();
        let fresh = match &self.live {
            Some(l) if l.factors == factors_key => None,
            _ => {
                let live: Vec<(usize, &ActiveLora)> =
                    loras.iter().enumerate().filter(|(i, _)| mode[*i]).collect();
                Some(live::factors::compute(
                    model,
                    &live,
                    self.opts.svd_max_error,
                )?)
            }
        };
        let layers = match &fresh {
            Some(f) => live::layer_key(f),
            None => self
                .live
                .as_ref()
                .map(|l| live::layer_key(&l.unet.factors))
                .unwrap_or_default(),
        };
        let session_key = LiveSessionKey {
            layers,
            fused_unet: FusedKey::of(loras, &static_key).unet,
            dims,
        };
        match (&mut self.live, fresh) {
            (Some(l), Some(f)) if l.session == session_key => {
                l.unet.set_factors(f)?;
                l.factors = factors_key;
            }
            (Some(l), None) if l.session == session_key => {}
            (current, fresh) => {
                let factors = match (fresh, current.take()) {
                    (Some(f), _) => f,
                    (None, Some(l)) => l.unet.factors,
                    (None, None) => live::factors::Factors::default(),
                };
                let deltas = if static_key.unet_active() {
                    let (mut d, _) = adapters::compute(model, loras, &static_key)?;
                    d.remove(&ComponentKind::Unet).unwrap_or_default()
                } else {
                    HashMap::new()
                };
                let unet = LiveUnet::build(
                    model,
                    sessions.runtime(),
                    sessions.opts(),
                    &deltas,
                    factors,
                    &unet_dim_overrides(dims),
                )?;
                sessions.set_last_fuse(FuseStats {
                    session_s: unet.build_s,
                    ..FuseStats::default()
                });
                *current = Some(Built {
                    unet,
                    session: session_key,
                    factors: factors_key,
                });
            }
        }
        Ok(())
    }

    /// One CFG UNet evaluation on the live session when adapters are live, else the fused one.
    pub fn unet_step(
        &mut self,
        sessions: &mut Sessions,
        live: Option<(&[ActiveLora], &StrengthKey)>,
        call: UnetCall<'_>,
    ) -> Result<Vec<f32>, PipelineError> {
        let Some((loras, key)) = live else {
            return sessions.unet(call);
        };
        let Some(l) = self.live.as_mut() else {
            return Err(PipelineError::Job("the live UNet is not built".into()));
        };
        let scales = live::scale::scales(&l.unet.factors, loras, key);
        let t = vec![call.timestep; call.shape[0]];
        let inputs = unet_inputs(call, &t, sessions.context_dim());
        Ok(l.unet.run(inputs, &scales)?)
    }
}
