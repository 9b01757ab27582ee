//! The sampling pipeline: tokenizer, text encoder, noise, scheduler loop with CFG, VAE decode.
//!
//! [`Generator`] runs it on ONNX Runtime, loaded from an [`EngineSpec`] and composed of parts that
//! own their state ([`text`], [`sessions`], [`stepping`]); the numerical pieces ([`rng`],
//! [`tokenizer`], [`schedulers`]) are pure Rust and checked against torch / transformers / diffusers.

pub mod adapters;
pub mod device_patch;
pub mod device_run;
pub mod dials;
pub mod error;
pub mod generator;
pub mod img2img;
pub mod keys;
pub mod prediction_test;
mod rerun;
pub mod resident;
pub mod rng;
pub mod schedulers;
pub mod seed_sequence;
pub mod sessions;
pub mod spec;
pub mod step_texts;
pub mod stepping;
pub mod stop;
pub mod text;
pub mod tokenizer;
pub mod vae;
pub mod vae_tiles;

pub use dials::Dials;
pub use error::{ComponentDeltas, PipelineError};
pub use generator::{validate_job, Generator};
pub use spec::EngineSpec;
pub use stop::{Ended, Stop};
