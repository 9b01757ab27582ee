//! A1111's one-step test for an SD 2.x checkpoint that does not say whether it predicts v: the
//! plain UNet graph runs once on the CPU at an 8×8 latent, and the model's prediction is set from
//! its output ([`crate::model::prediction::from_test_mean`]).
//!
//! [`settle`] runs it when the model asks ([`Model::prediction_pending`]); `doctor` calls it after
//! opening, generation on a GPU runs [`one_step_mean`] beside the session builds and [`apply`]s it.

use super::error::{run_err, PipelineError};
use crate::model::layout::{ComponentKind, GraphKind};
use crate::model::prediction::{self, Prediction};
use crate::model::Model;
use crate::runtime::tensor_io::{run, Input};
use crate::runtime::{Device, Runtime, SessionOptions};
use std::collections::HashMap;

/// The test's latent side, context tokens, timestep and fill value (A1111's).
const SIDE: usize = 8;
const TOKENS: usize = 2;
const TIMESTEP: f32 = 999.0;
const FILL: f32 = 0.5;

/// UNet weights up to this many bytes make the test cheap enough to run beside the CPU's session
/// builds too (the tiny test models; every real SD 2.x UNet is far above it).
const SMALL_UNET: usize = 256 << 20;

/// Whether the test runs beside the session builds (which do not depend on it) instead of before
/// them. It builds a CPU session of the whole UNet (seconds for a real one): on a GPU that overlaps
/// the GPU sessions' builds; on the CPU it runs first for a big UNet, so that two of its sessions
/// are never built at once in the machine's memory.
pub fn beside_sessions(model: &Model, device: Device) -> bool {
    let unet_bytes: usize = model
        .component(ComponentKind::Unet)
        .map(|c| c.weightmap.initializers.iter().map(|e| e.length).sum())
        .unwrap_or(0);
    device != Device::Cpu || unet_bytes <= SMALL_UNET
}

/// Settles a pending prediction type with the one-step test; a model that already knows its
/// prediction is left as it is.
pub fn settle(model: &mut Model, rt: &'static Runtime) -> Result<(), PipelineError> {
    if !model.prediction_pending {
        return Ok(());
    }
    let t = std::time::Instant::now();
    let mean = one_step_mean(model, rt)?;
    apply(model, mean, t.elapsed().as_secs_f64())
}

/// Sets `model`'s prediction from the test's `mean`, which took `secs`.
pub fn apply(model: &mut Model, mean: f32, secs: f64) -> Result<(), PipelineError> {
    let p = prediction::from_test_mean(mean);
    let why = format!(
        "no metadata says; A1111's one-step UNet test: mean {mean:.3} {} -1, {:.1} s; \
         --prediction epsilon|v overrides",
        if p == Prediction::V { "<" } else { ">=" },
        secs
    );
    tracing::info!("{}: prediction {p:?} ({why})", model.dir.display());
    model.set_prediction(p, &why)?;
    Ok(())
}

/// The mean of the UNet's output minus its input for latents of 0.5 at timestep 999 with a
/// two-token context of 0.5, run on the CPU with the plain graph and the base weights.
pub fn one_step_mean(model: &Model, rt: &'static Runtime) -> Result<f32, PipelineError> {
    let unet = model
        .component(ComponentKind::Unet)
        .ok_or_else(|| PipelineError::Job("the model has no UNet".into()))?;
    let dim = |key: &str, default: u64| {
        unet.config
            .get(key)
            .and_then(|v| v.as_u64())
            .unwrap_or(default) as usize
    };
    let in_channels = dim("in_channels", 4);
    let out_channels = dim("out_channels", 4);
    let context_dim = dim(
        "cross_attention_dim",
        model.index.family.facts().context_dim as u64,
    );
    let none: HashMap<String, Vec<f32>> = HashMap::new();
    // Built as the load's sessions are (staged on disk on the CPU), so the test costs no more
    // memory than the UNet session that follows it.
    let mut session = super::sessions::bake(
        unet,
        rt,
        &SessionOptions {
            run_once: true,
            ..SessionOptions::default()
        },
        GraphKind::Plain,
        "unet (prediction test)",
        &none,
        &[],
        &mut Default::default(),
    )?;
    let sample = vec![FILL; in_channels * SIDE * SIDE];
    let context = vec![FILL; TOKENS * context_dim];
    let t = [TIMESTEP];
    let out = run(
        &mut session,
        vec![
            Input::F32("sample", vec![1, in_channels, SIDE, SIDE], &sample),
            Input::F32("timestep", vec![1], &t),
            Input::F32(
                "encoder_hidden_states",
                vec![1, TOKENS, context_dim],
                &context,
            ),
        ],
        &["out_sample"],
    )
    .map_err(run_err("UNet (prediction test)"))?;
    let (_, data) = out.into_iter().next().unwrap_or_default();
    let n = out_channels * SIDE * SIDE;
    if data.len() != n {
        return Err(PipelineError::Job(format!(
            "the prediction test's UNet output has {} values, expected {n}",
            data.len()
        )));
    }
    Ok(data.iter().map(|v| (v - FILL) as f64).sum::<f64>() as f32 / n as f32)
}
