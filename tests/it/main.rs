//! One integration-test binary (one link step on 2 cores).

mod adapters;
mod batch;
mod cli;
mod cuda;
mod deps;
mod foundation;
mod fused_graph;
mod img2img;
mod live;
mod lora;
mod merge;
mod pipeline_reference;
mod prompt;
mod readme;
mod resident;
mod sdxl;
mod sdxl_adapters;
mod single_file;
mod tui_config;
mod tui_flows;
mod tui_screens;
mod tui_smoke;
mod tui_support;
mod util;
