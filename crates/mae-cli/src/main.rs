//! `mae`: pre-train, inspect and use Masked Autoencoders from the command line (the code is in
//! the library, `src/lib.rs`).

use std::process::ExitCode;

/// Training allocates and frees many large tensors; glibc's malloc returns them to the OS and
/// page-faults them back in every step (docs/benchmarks.md: the profile). mimalloc keeps them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    mae_cli::main()
}
