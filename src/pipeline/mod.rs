//! The sampling pipeline: tokenizer, text encoder, noise, scheduler loop with CFG, VAE decode.
//!
//! [`Generator`] runs it on ONNX Runtime; the numerical pieces ([`rng`], [`tokenizer`],
//! [`schedulers`]) are pure Rust and checked against torch / transformers / diffusers.

pub mod adapters;
pub mod generator;
pub mod resident;
pub mod rng;
pub mod schedulers;
pub mod tensor_io;
pub mod tokenizer;
pub mod vae;

pub use generator::{
    validate_job, ComponentDeltas, Generator, LazyGenerator, PipelineError, SavingRunner,
};
