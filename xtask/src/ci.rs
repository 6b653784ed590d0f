//! `cargo xtask ci`: format check, clippy, tests, stopping at the first failure.

use crate::args::{Args, Parsed};
use crate::util::{self, Result};

pub const HELP: &str = "\
cargo xtask ci: run the checks CI runs, in the workspace root, in order

USAGE:
    cargo xtask ci [-- <extra args for cargo test>]

Everything after `--` is appended to `cargo test --workspace` verbatim; for
flags of the test binaries themselves add a second `--`.

STEPS (stops at the first failure, naming the step, with a non-zero exit):
    0. standalone       nothing under crates/, examples/, xtask/, .ci/, docs/ or README.md
                        names the development machines' shared data folder (a user's
                        clone has none; the tests use the repository's data/)
    1. fmt     cargo fmt --all -- --check
    2. clippy  cargo clippy --workspace --all-targets -- -D warnings
    3. clippy-features  cargo clippy -p mae-data --all-targets --features hf,candle-datasets,dicom -- -D warnings
    4. clippy-mpi       cargo clippy -p mae-train -p mae -p mae-cli --all-targets --features mpi -- -D warnings
    5. test    cargo test --workspace [<extra args>]
    6. test-features    cargo test -p mae-data --features hf,candle-datasets,dicom
    7. test-mpi         cargo test -p mae-cli --features mpi --test it distributed::

The `mpi` steps need an MPI library and libclang (Debian: apt-get install openmpi-bin
libopenmpi-dev libclang-dev; .ci/run installs them), and test-mpi runs `mpirun -np 2`.

OPTIONS:
    -h, --help    Print this help

EXAMPLES:
    cargo xtask ci
    cargo xtask ci -- -p mae-patch          (cargo test --workspace -p mae-patch)
    cargo xtask ci -- -- --nocapture        (cargo test --workspace -- --nocapture)
";

pub fn main(argv: Vec<String>) -> Result<()> {
    let mut args = Args::new("ci", argv);
    let Parsed::Done { rest } = args.parse_flags(HELP, |args, f| Err(args.unknown(f)))? else {
        return Ok(());
    };
    let extra = rest.unwrap_or_default();

    let root = util::workspace_root();
    require_bf16_where_the_cpu_has_it();
    let steps = steps(extra);
    let total = steps.len();
    let mut timings = Vec::new();
    println!("\n==> [0/{total}] standalone");
    let (res, took) = util::timed(|| crate::standalone::check(&root));
    timings.push(("standalone", took));
    if let Err(e) = res {
        print_summary(&timings, Some("standalone"));
        return Err(e);
    }
    for (i, (name, cargo_args)) in steps.into_iter().enumerate() {
        println!("\n==> [{}/{total}] {name}", i + 1);
        let mut cmd = util::cargo_cmd(&root);
        cmd.args(&cargo_args);
        let (res, took) = util::timed(|| util::run(name, &mut cmd));
        timings.push((name, took));
        if let Err(e) = res {
            print_summary(&timings, Some(name));
            return Err(e);
        }
    }
    print_summary(&timings, None);
    Ok(())
}

/// The bf16 kernel tests skip (and say so) on a CPU without AVX512-BF16. Where the kernel
/// reads `avx512_bf16` in /proc/cpuinfo itself, CI asks the tests to fail instead of skipping
/// (`MAE_REQUIRE_BF16=1`), so a broken feature detection cannot pass as a CPU without it.
fn require_bf16_where_the_cpu_has_it() {
    let has = std::fs::read_to_string("/proc/cpuinfo")
        .is_ok_and(|info| info.split_whitespace().any(|flag| flag == "avx512_bf16"));
    if has && std::env::var_os("MAE_PRODUCT").is_none() {
        println!("this CPU lists avx512_bf16: MAE_REQUIRE_BF16=1 (the bf16 kernel tests must run)");
        std::env::set_var("MAE_REQUIRE_BF16", "1");
    }
}

/// The cargo steps after `standalone`: name and cargo arguments; `extra`
/// goes to `cargo test --workspace`.
fn steps(extra: Vec<String>) -> Vec<(&'static str, Vec<String>)> {
    vec![
        ("fmt", svec(&["fmt", "--all", "--", "--check"])),
        ("clippy", svec(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])),
        // Optional features that have tests of their own (not in the default build).
        (
            "clippy-features",
            svec(&[
                "clippy",
                "-p",
                "mae-data",
                "--all-targets",
                "--features",
                "hf,candle-datasets,dicom",
                "--",
                "-D",
                "warnings",
            ]),
        ),
        // Data parallel over MPI (docs/distributed.md): the MPI collective and the mae binary
        // built with it.
        (
            "clippy-mpi",
            svec(&[
                "clippy",
                "-p",
                "mae-train",
                "-p",
                "mae",
                "-p",
                "mae-cli",
                "--all-targets",
                "--features",
                "mpi",
                "--",
                "-D",
                "warnings",
            ]),
        ),
        ("test", {
            let mut v = svec(&["test", "--workspace"]);
            // Everything after `--` goes to cargo test verbatim, so test-binary
            // flags need a second `--`: `cargo xtask ci -- -- --nocapture`.
            v.extend(extra);
            v
        }),
        ("test-features", svec(&["test", "-p", "mae-data", "--features", "hf,candle-datasets,dicom"])),
        // Two MPI ranks train like one process with the global batch; a failing rank stops the
        // job and the run resumes (runs `mpirun -np 2`).
        ("test-mpi", svec(&["test", "-p", "mae-cli", "--features", "mpi", "--test", "it", "distributed::"])),
    ]
}

fn print_summary(timings: &[(&str, std::time::Duration)], failed: Option<&str>) {
    println!("\nci summary:");
    for (name, took) in timings {
        let status = if Some(*name) == failed { "FAILED" } else { "ok" };
        println!("    {name:<16} {status:<7} {}", util::fmt_duration(*took));
    }
    match failed {
        Some(name) => println!("ci: FAILED at step `{name}`"),
        None => println!("ci: all steps passed"),
    }
}

fn svec(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}
