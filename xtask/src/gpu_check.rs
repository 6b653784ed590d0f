//! `cargo xtask gpu-check`: the one-shot check to run on a machine with an
//! NVIDIA GPU: release build with CUDA, the test suite on the GPU, benchmarks.

use std::process::Command;
use std::time::Duration;

use crate::args::{Arg, Args};
use crate::bench;
use crate::build_cmd::run_cuda_cargo;
use crate::toolkit;
use crate::util::{self, fail, Result};

pub const HELP: &str = "\
cargo xtask gpu-check: build and test the CUDA backend on a machine with an NVIDIA GPU

USAGE:
    cargo xtask gpu-check [--fetch-nvcc] [--compute-cap N] [-- <extra cargo test args>]

STAGES (a summary with the time of each is printed at the end):
    1. gpu      `nvidia-smi` must exist and list a GPU; its compute capability
                becomes CUDA_COMPUTE_CAP (unless set or --compute-cap is given)
    2. nvcc     find nvcc as `cargo xtask build --cuda` does, and compile a test
                kernel with it
    3. build    cargo build --release --workspace --exclude xtask --features mae-cli/cuda
    4. test     MAE_TEST_DEVICE=cuda cargo test --release --workspace --exclude xtask \\
                    --features mae-cli/cuda [<extra cargo test args>]
                (LD_LIBRARY_PATH gets the toolkit's lib64/ and lib/ first)
    5. bench    cargo xtask bench --config all --device cuda --json

Stages 1-3 stop the check when they fail; a failing test stage still lets
the bench stage run. The exit code is non-zero when any stage failed.

OPTIONS:
    --fetch-nvcc        Use the PyPI nvcc in .tools/cuda (installing it if
                        needed; see `cargo xtask build --help`)
    --compute-cap N     Compile kernels for N instead of the GPU's own
    -h, --help          Print this help

EXAMPLES:
    cargo xtask gpu-check
    cargo xtask gpu-check -- -p mae             (only the mae crate's tests)
    cargo xtask gpu-check -- -- --test-threads 1
";

#[derive(Clone, Copy, PartialEq)]
enum Status {
    Ok,
    Failed,
    Skipped,
}

struct Stage {
    name: &'static str,
    status: Status,
    took: Duration,
    note: String,
}

/// All stages, in order; those not reached show as skipped.
const STAGES: [&str; 5] = ["gpu", "nvcc", "build", "test", "bench"];

#[derive(Default)]
struct Report {
    stages: Vec<Stage>,
}

impl Report {
    fn add(&mut self, name: &'static str, status: Status, took: Duration, note: impl Into<String>) {
        self.stages.push(Stage { name, status, took, note: note.into() });
    }

    /// Print the summary and turn the first error into the result.
    fn finish(mut self, error: Option<util::Error>) -> Result<()> {
        for name in STAGES {
            if !self.stages.iter().any(|s| s.name == name) {
                self.add(name, Status::Skipped, Duration::ZERO, "not run: an earlier stage failed");
            }
        }
        let total: Duration = self.stages.iter().map(|s| s.took).sum();
        println!("\ngpu-check summary:");
        for s in &self.stages {
            let status = match s.status {
                Status::Ok => "ok",
                Status::Failed => "FAILED",
                Status::Skipped => "skipped",
            };
            let took = if s.status == Status::Skipped { "-".to_string() } else { util::fmt_duration(s.took) };
            println!("    {:<6} {status:<8} {took:>8}  {}", s.name, s.note);
        }
        println!("    {:<6} {:<8} {:>8}", "total", "", util::fmt_duration(total));
        match error {
            Some(e) => {
                let failed: Vec<&str> =
                    self.stages.iter().filter(|s| s.status == Status::Failed).map(|s| s.name).collect();
                println!("gpu-check: FAILED ({})", failed.join(", "));
                Err(e)
            }
            None => {
                println!("gpu-check: passed");
                Ok(())
            }
        }
    }
}

pub fn main(argv: Vec<String>) -> Result<()> {
    let mut args = Args::new("gpu-check", argv);
    let mut fetch = false;
    let mut cap_flag: Option<String> = None;
    let mut extra = Vec::new();
    while let Some(arg) = args.next()? {
        match arg {
            Arg::Flag(f) => match f.as_str() {
                "-h" | "--help" => {
                    print!("{HELP}");
                    return Ok(());
                }
                "--fetch-nvcc" => fetch = true,
                "--compute-cap" => cap_flag = Some(args.value("--compute-cap")?),
                _ => return Err(args.unknown(&f)),
            },
            Arg::Rest(rest) => extra = rest,
        }
    }
    // Reject a bad --compute-cap before spending time on anything.
    if let Some(cap) = &cap_flag {
        toolkit::compute_cap(Some(cap), toolkit::DEFAULT_COMPUTE_CAP)?;
    }

    let root = util::workspace_root();
    let mut report = Report::default();

    // 1. The GPU.
    println!("==> [1/5] gpu: nvidia-smi");
    let (gpu, took) = util::timed(query_gpu);
    let detected_cap = match gpu {
        Ok((desc, cap)) => {
            report.add("gpu", Status::Ok, took, desc);
            cap
        }
        Err(e) => {
            report.add("gpu", Status::Failed, took, "nvidia-smi");
            return report.finish(Some(e));
        }
    };

    // 2. The compiler.
    println!("\n==> [2/5] nvcc");
    let (found, took) = util::timed(|| -> Result<_> {
        let tk = toolkit::locate(&root, fetch)?;
        let default = detected_cap.clone().unwrap_or_else(|| toolkit::DEFAULT_COMPUTE_CAP.to_string());
        let (cap, mut from) = toolkit::compute_cap(cap_flag.as_deref(), &default)?;
        if from == "default" && detected_cap.is_some() {
            from = "from nvidia-smi".into();
        }
        let env = toolkit::env(&tk, &cap);
        toolkit::print_env(&root, &tk, &cap, &from, &env);
        toolkit::probe(&tk, &cap, &env)?;
        Ok((tk, cap, env))
    });
    let (env, run_env) = match found {
        Ok((tk, cap, env)) => {
            let note = format!("{}, sm_{}", util::rel(&root, &tk.nvcc), toolkit::nvcc_arch(&cap));
            report.add("nvcc", Status::Ok, took, note);
            // Tests and benchmarks also find the toolkit's shared libraries.
            let mut run_env = env.clone();
            run_env.extend(toolkit::runtime_library_path(&tk));
            (env, run_env)
        }
        Err(e) => {
            report.add("nvcc", Status::Failed, took, "");
            return report.finish(Some(e));
        }
    };

    // 3. Release build.
    println!("\n==> [3/5] build");
    let mut cmd = util::cargo_cmd(&root);
    toolkit::apply_env(&mut cmd, &env);
    cmd.args(cuda_args("build"));
    let (res, took) = util::timed(|| run_cuda_cargo("build", &mut cmd));
    if let Err(e) = res {
        report.add("build", Status::Failed, took, "release, mae-cli/cuda");
        return report.finish(Some(e));
    }
    report.add("build", Status::Ok, took, "release, mae-cli/cuda");

    // 4. Tests on the GPU.
    println!("\n==> [4/5] test");
    let mut cmd = util::cargo_cmd(&root);
    toolkit::apply_env(&mut cmd, &run_env);
    cmd.env("MAE_TEST_DEVICE", "cuda");
    cmd.args(cuda_args("test")).args(&extra);
    let (res, took) = util::timed(|| run_cuda_cargo("test", &mut cmd));
    let mut first_error = None;
    match res {
        Ok(()) => report.add("test", Status::Ok, took, "MAE_TEST_DEVICE=cuda"),
        Err(e) => {
            report.add("test", Status::Failed, took, "MAE_TEST_DEVICE=cuda");
            first_error = Some(e);
        }
    }

    // 5. Benchmarks.
    println!("\n==> [5/5] bench");
    if bench::IMPLEMENTED {
        let mut cmd = util::cargo_cmd(&root);
        toolkit::apply_env(&mut cmd, &run_env);
        cmd.args(["xtask", "bench"]).args(bench::GPU_CHECK_ARGS);
        let (res, took) = util::timed(|| util::run("bench", &mut cmd));
        match res {
            Ok(()) => report.add("bench", Status::Ok, took, ""),
            Err(e) => {
                report.add("bench", Status::Failed, took, "");
                first_error.get_or_insert(e);
            }
        }
    } else {
        println!("note: skipping the bench stage: `cargo xtask bench` is not implemented yet");
        report.add("bench", Status::Skipped, Duration::ZERO, "`cargo xtask bench` not implemented yet");
    }
    report.finish(first_error)
}

fn cuda_args(sub: &str) -> [&str; 7] {
    [sub, "--release", "--workspace", "--exclude", "xtask", "--features", "mae-cli/cuda"]
}

/// Ask nvidia-smi for the GPU; returns a description and, when it reports
/// one, the compute capability as `90` for `9.0`.
fn query_gpu() -> Result<(String, Option<String>)> {
    if util::which("nvidia-smi").is_none() {
        return fail(
            "nvidia-smi was not found: gpu-check needs a machine with an NVIDIA GPU and its \
             driver. On a machine without one, `cargo xtask build --cuda` checks that the \
             CUDA backend compiles.",
        );
    }
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=name,compute_cap,driver_version,memory.total", "--format=csv,noheader"])
        .output()
        .map_err(|e| util::Error::Failed(format!("could not run nvidia-smi: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || stdout.trim().is_empty() {
        return fail(format!(
            "nvidia-smi found no usable GPU ({}):\n{}{}",
            util::describe(out.status),
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    print!("{stdout}");
    let first = stdout.lines().next().unwrap_or_default();
    let fields: Vec<&str> = first.split(',').map(str::trim).collect();
    let cap = fields
        .get(1)
        .and_then(|c| c.split_once('.'))
        .filter(|(a, b)| !a.is_empty() && a.chars().chain(b.chars()).all(|c| c.is_ascii_digit()))
        .map(|(a, b)| format!("{a}{b}"));
    let desc = format!(
        "{}, compute capability {}, driver {}",
        fields.first().unwrap_or(&"?"),
        fields.get(1).unwrap_or(&"?"),
        fields.get(2).unwrap_or(&"?")
    );
    Ok((desc, cap))
}
