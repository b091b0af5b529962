//! The `tokengate` binary: parses the command line and hands it to [`tokengate::cli::run`].

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc's malloc: a gateway allocates and frees small buffers on every
/// request from two threads, where glibc's arenas cost about a fifth of the CPU (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tokengate::cli::run(tokengate::cli::Cli::parse())
}
