//! `cargo xtask`: workspace automation for the MAE workspace.
//!
//! Run `cargo xtask --help`; docs/xtask.md describes every subcommand.
//! Deliberately std-only so that it compiles in seconds before each task.

mod args;
mod bench;
mod build_cmd;
mod ci;
mod fixtures;
mod fuzz;
mod gpu_bundle;
mod gpu_check;
mod python;
mod standalone;
mod toolkit;
mod util;

use std::process::ExitCode;

use util::Error;

const HELP: &str = "\
cargo xtask: automation for the MAE workspace (see docs/xtask.md)

USAGE:
    cargo xtask <SUBCOMMAND> [OPTIONS]

SUBCOMMANDS:
    ci          cargo fmt --check, clippy -D warnings, cargo test (stops at the first failure)
    fixtures    regenerate the numerical fixtures with Python (xtask/fixtures/make_fixtures.py)
    build       build the workspace with a GPU backend: --cuda (nvcc; --fetch-nvcc) or --metal
    gpu-check   one-shot check on an NVIDIA GPU machine: release CUDA build, tests, benchmarks
    gpu-bundle  CUDA binaries built here for a GPU machine without Rust (run there: xtask/gpu/run-bundle.sh)
    bench       time training steps (ours, optionally vs PyTorch), peak memory, loader throughput
    fuzz        fuzz the readers of untrusted input for a while (crates/mae-fuzz)
    help        print this help, or a subcommand's: cargo xtask help <SUBCOMMAND>

Run `cargo xtask <SUBCOMMAND> --help` for a subcommand's options.
Exit codes: 0 success, 1 a step failed, 2 bad command line.
";

type Main = fn(Vec<String>) -> util::Result<()>;

const SUBCOMMANDS: [(&str, Main, &str); 7] = [
    ("ci", ci::main, ci::HELP),
    ("fixtures", fixtures::main, fixtures::HELP),
    ("build", build_cmd::main, build_cmd::HELP),
    ("gpu-check", gpu_check::main, gpu_check::HELP),
    ("gpu-bundle", gpu_bundle::main, gpu_bundle::HELP),
    ("bench", bench::bench, bench::HELP),
    ("fuzz", fuzz::main, fuzz::HELP),
];

fn main() -> ExitCode {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() {
        eprint!("{HELP}");
        return ExitCode::from(2);
    }
    let sub = argv.remove(0);
    let result = match sub.as_str() {
        "-h" | "--help" => {
            print!("{HELP}");
            Ok(())
        }
        "help" => match argv.first() {
            None => {
                print!("{HELP}");
                Ok(())
            }
            Some(name) => match SUBCOMMANDS.iter().find(|(n, _, _)| n == name) {
                Some((_, _, help)) => {
                    print!("{help}");
                    Ok(())
                }
                None => Err(Error::Usage { cmd: "help", msg: format!("unknown subcommand `{name}`") }),
            },
        },
        name => match SUBCOMMANDS.iter().find(|(n, _, _)| *n == name) {
            Some((_, run, _)) => run(argv),
            None => Err(Error::Usage { cmd: "", msg: format!("unknown subcommand `{name}`") }),
        },
    };
    util::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::Usage { cmd, msg }) => {
            let help = if cmd.is_empty() || cmd == "help" {
                "cargo xtask --help".to_string()
            } else {
                format!("cargo xtask {cmd} --help")
            };
            eprintln!("error: {msg}\n\nRun `{help}` for usage.");
            ExitCode::from(2)
        }
        Err(Error::Failed(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
        Err(Error::Exit(code)) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
    }
}
