//! The sampling pipeline: tokenizer, text encoder, noise, scheduler loop with CFG, VAE decode.

pub mod rng;
pub mod schedulers;
pub mod tokenizer;
