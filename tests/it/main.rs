//! One integration-test binary (one link step on 2 cores).
mod batch;
mod cli;
mod foundation;
mod pipeline_reference;
mod prompt;
mod util;
