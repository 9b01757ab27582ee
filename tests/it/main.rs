//! One integration-test binary (one link step on 2 cores).
mod adapters;
mod cli;
mod foundation;
mod lora;
mod pipeline_reference;
mod prompt;
mod sdxl;
mod sdxl_adapters;
mod util;
