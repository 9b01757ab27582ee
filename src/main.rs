//! The `stipple` command: parse the command line, run it (see [`stipple::cli`]), print the error
//! and exit with its code: 0 done, 1 failed, 2 usage (clap's own usage errors exit 2 too).

use clap::Parser;
use std::process::ExitCode;
use stipple::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command.is_some() {
        cli::init_logging();
    }
    match cli::run(&cli) {
        Ok(()) => ExitCode::from(cli::error::EXIT_DONE),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
