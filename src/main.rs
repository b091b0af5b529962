//! The `tokengate` binary: parses the command line and hands it to [`tokengate::cli::run`].

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc's malloc: a gateway allocates and frees small buffers on every
/// request from two threads, where glibc's arenas cost about a fifth of the CPU (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // mimalloc returns freed pages to the system only from a later allocation on the same
    // thread, which an idle worker never makes: every worker collects once a second instead
    // (`tokengate::memory`).
    tokengate::memory::set_tidy(|| {
        // SAFETY: `mi_collect` has no precondition; it works on the calling thread's heap.
        unsafe { libmimalloc_sys::mi_collect(false) }
    });
    tokengate::cli::run(tokengate::cli::Cli::parse())
}
