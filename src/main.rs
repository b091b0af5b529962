//! The `tokengate` binary: parses the command line and hands it to [`tokengate::cli::run`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    tokengate::cli::run(tokengate::cli::Cli::parse())
}
