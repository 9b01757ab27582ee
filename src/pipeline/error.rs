//! [`PipelineError`]: everything that can go wrong turning a job into images, and
//! [`ComponentDeltas`], the ΔW per component that adapters hand the session builds.

use super::resident::ResidentError;
use super::schedulers::SchedulerError;
use super::tokenizer::TokenizerError;
use crate::live::LiveError;
use crate::model::layout::ComponentKind;
use crate::model::ModelError;
use crate::patch::PatchError;
use crate::runtime::{RuntimeError, SessionError};
use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Patch(#[from] PatchError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error("{what}: {message}")]
    Run { what: &'static str, message: String },
    #[error("invalid job: {0}")]
    Job(String),
    #[error("{0}")]
    Prompt(String),
    #[error("{0}")]
    Adapter(String),
    #[error(transparent)]
    Live(#[from] LiveError),
    #[error("{0}")]
    Resident(String),
    #[error(
        "a UNet captured as a CUDA graph (cuda_graph in [cuda] of the config, --cuda-graph) cannot \
         run adapters live, and {0}. Use constant strengths with lora_method fuse, or turn \
         cuda_graph off"
    )]
    CudaGraph(&'static str),
    /// Text encoder `encoder` (1-based), running its fp16 graph, gave NaN or infinite conditioning:
    /// an overflow, which [`super::sessions::Sessions::with_text`] redoes in fp32.
    #[error("text encoder {encoder} overflowed in fp16 (non-finite conditioning)")]
    TextNotFinite { encoder: usize },
}

pub(crate) fn run_err(what: &'static str) -> impl Fn(ort::Error) -> PipelineError {
    move |e| PipelineError::Run {
        what,
        message: e.to_string(),
    }
}

/// Deltas per component: parameter name → ΔW (torch layout, f32, strengths applied).
pub type ComponentDeltas = HashMap<ComponentKind, HashMap<String, Vec<f32>>>;

/// A patch failure as the pipeline reports it: a ΔW that cannot be computed is the adapter's fault.
pub(crate) fn patch_err(e: PatchError) -> PipelineError {
    match e {
        PatchError::Delta { message, .. } => PipelineError::Adapter(message),
        e => PipelineError::Patch(e),
    }
}

impl From<ResidentError> for PipelineError {
    fn from(e: ResidentError) -> Self {
        match e {
            ResidentError::Session(e) => PipelineError::Session(e),
            ResidentError::Patch(e) => patch_err(e),
            e => PipelineError::Resident(e.to_string()),
        }
    }
}
