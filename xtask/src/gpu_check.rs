//! `cargo xtask gpu-check`: the one-shot check to run on a machine with an
//! NVIDIA GPU: release build with CUDA, the test suite on the GPU, benchmarks.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::args::{Args, Parsed};
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

    /// Record a stage from its timed result: `ok_note` describes what it
    /// returned, `failed_note` is the note when it failed.
    fn record<T>(
        &mut self,
        name: &'static str,
        (res, took): (Result<T>, Duration),
        ok_note: impl FnOnce(&T) -> String,
        failed_note: &str,
    ) -> Result<T> {
        match &res {
            Ok(v) => self.add(name, Status::Ok, took, ok_note(v)),
            Err(_) => self.add(name, Status::Failed, took, failed_note),
        }
        res
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

struct Opts {
    fetch: bool,
    cap_flag: Option<String>,
    extra: Vec<String>,
}

fn parse(argv: Vec<String>) -> Result<Option<Opts>> {
    let mut args = Args::new("gpu-check", argv);
    let (mut fetch, mut cap_flag) = (false, None);
    let parsed = args.parse_flags(HELP, |args, f| {
        match f {
            "--fetch-nvcc" => fetch = true,
            "--compute-cap" => cap_flag = Some(args.value(f)?),
            _ => return Err(args.unknown(f)),
        }
        Ok(())
    })?;
    let Parsed::Done { rest } = parsed else { return Ok(None) };
    // Reject a bad --compute-cap before spending time on anything.
    if let Some(cap) = &cap_flag {
        toolkit::compute_cap(Some(cap), toolkit::DEFAULT_COMPUTE_CAP)?;
    }
    Ok(Some(Opts { fetch, cap_flag, extra: rest.unwrap_or_default() }))
}

pub fn main(argv: Vec<String>) -> Result<()> {
    let Some(o) = parse(argv)? else { return Ok(()) };
    let root = util::workspace_root();
    let mut report = Report::default();
    let error = stages(&root, &o, &mut report).err();
    report.finish(error)
}

/// Run the stages in order, recording each in `report`. The gpu, nvcc and
/// build stages stop at a failure; a failing test stage still lets the bench
/// stage run. Returns the first error.
fn stages(root: &Path, o: &Opts, report: &mut Report) -> Result<()> {
    println!("==> [1/5] gpu: nvidia-smi");
    let (_, detected_cap) = report.record("gpu", util::timed(query_gpu), |(d, _)| d.clone(), "nvidia-smi")?;

    println!("\n==> [2/5] nvcc");
    let found = util::timed(|| find_nvcc(root, o, detected_cap));
    let note = |(tk, cap, _): &Nvcc| format!("{}, sm_{}", util::rel(root, &tk.nvcc), toolkit::nvcc_arch(cap));
    let (tk, _, env) = report.record("nvcc", found, note, "")?;
    // Tests and benchmarks also find the toolkit's shared libraries.
    let mut run_env = env.clone();
    run_env.extend(toolkit::runtime_library_path(&tk));

    println!("\n==> [3/5] build");
    let built = util::timed(|| cuda_cargo(root, &env, "build", &[]));
    report.record("build", built, |_| "release, mae-cli/cuda".into(), "release, mae-cli/cuda")?;

    println!("\n==> [4/5] test");
    let tested = util::timed(|| cuda_cargo(root, &run_env, "test", &o.extra));
    let tested = report.record("test", tested, |_| "MAE_TEST_DEVICE=cuda".into(), "MAE_TEST_DEVICE=cuda");

    println!("\n==> [5/5] bench");
    let mut cmd = util::cargo_cmd(root);
    toolkit::apply_env(&mut cmd, &run_env);
    cmd.args(["xtask", "bench"]).args(bench::GPU_CHECK_ARGS);
    let benched = report.record("bench", util::timed(|| util::run("bench", &mut cmd)), |_| String::new(), "");
    tested.and(benched)
}

/// The toolkit, the compute capability to build for and the build environment.
type Nvcc = (toolkit::Toolkit, String, Vec<(&'static str, OsString)>);

/// Find nvcc as `build --cuda` does (the GPU's own compute capability is the
/// default), print the environment and compile the test kernel.
fn find_nvcc(root: &Path, o: &Opts, detected_cap: Option<String>) -> Result<Nvcc> {
    let tk = toolkit::locate(root, o.fetch)?;
    let default = detected_cap.clone().unwrap_or_else(|| toolkit::DEFAULT_COMPUTE_CAP.to_string());
    let (cap, mut from) = toolkit::compute_cap(o.cap_flag.as_deref(), &default)?;
    if from == "default" && detected_cap.is_some() {
        from = "from nvidia-smi".into();
    }
    let env = toolkit::env(&tk, &cap);
    toolkit::print_env(root, &tk, &cap, &from, &env);
    toolkit::probe(&tk, &cap, &env)?;
    Ok((tk, cap, env))
}

/// `cargo build|test --release --workspace ... --features mae-cli/cuda`; the
/// tests get `MAE_TEST_DEVICE=cuda`.
fn cuda_cargo(root: &Path, env: &[(&'static str, OsString)], sub: &str, extra: &[String]) -> Result<()> {
    let mut cmd = util::cargo_cmd(root);
    toolkit::apply_env(&mut cmd, env);
    if sub == "test" {
        cmd.env("MAE_TEST_DEVICE", "cuda");
    }
    cmd.args(cuda_args(sub)).args(extra);
    run_cuda_cargo(sub, &mut cmd)
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
