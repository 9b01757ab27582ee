//! One integration-test binary (one link step on 2 cores).
mod adapters;
mod cli;
mod foundation;
mod lora;
mod merge;
mod pipeline_reference;
mod prompt;
mod util;
