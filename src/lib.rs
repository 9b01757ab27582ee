//! stipple: Stable Diffusion with LoRA-family adapters on ONNX Runtime, for the terminal.
//!
//! The data path (README, "Working on stipple"): [`prompt`] parses the prompt language, a [`job::Job`] goes to the
//! [`engine`], which owns the [`model`], applies [`lora`] adapters through [`patch`], builds ONNX
//! Runtime sessions in [`runtime`] and runs the [`pipeline`]; front ends ([`tui`], [`headless`]) see
//! only jobs and events.

pub mod bake;
pub mod batch;
pub mod bench;
pub mod cli;
pub mod config;
pub mod embedding;
pub mod engine;
pub mod export;
pub mod family;
pub mod fuzzing;
pub mod headless;
pub mod hires;
pub mod image;
pub mod init_image;
pub mod job;
pub mod live;
pub mod lora;
pub mod model;
pub mod patch;
pub mod pipeline;
pub mod prompt;
pub mod runtime;
pub mod safetensors_out;
pub mod tui;
