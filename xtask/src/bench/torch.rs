//! The PyTorch side: which Python, its virtual environment, torch_bench.py
//! for a config and for the matmul peak.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::configs::Config;
use super::json::{get, Value};
use super::measure::Run;
use super::runner::run_json;
use super::{report, Ctx, Options, MATMUL_SIZE};
use crate::python::{self, Venv};
use crate::util::{fail, Log, Result};

pub const SCRIPT: &str = "xtask/bench/torch_bench.py";

const VENV: Venv = Venv {
    dir: ".venv-bench",
    requirements: "xtask/bench/requirements.txt",
    purpose: "the pinned packages of the PyTorch benchmark",
    hint: " (pass --python PATH, or install python3 and use --setup-torch)",
};

/// The Python side: which interpreter, and whether it can run the comparison.
pub struct Python {
    pub path: PathBuf,
    /// `torch.__version__`, when torch imports.
    pub torch: Option<String>,
}

/// Which Python runs the torch side, if any; fails when `--compare-torch`
/// cannot be honoured.
pub fn resolve_python(root: &Path, o: &Options) -> Result<Option<Python>> {
    let Some(path) = interpreter(root, o)? else { return Ok(None) };
    let torch = torch_version(&path, o.compare_torch)?;
    if let Some(v) = &torch {
        eprintln!("python: {} (torch {v})", path.display());
    }
    if !root.join(SCRIPT).is_file() {
        return fail(format!("{SCRIPT} is missing: it is the PyTorch side of the benchmark"));
    }
    Ok(Some(Python { path, torch }))
}

/// `--setup-torch` (a fresh venv), `--python`, the venv, or none.
fn interpreter(root: &Path, o: &Options) -> Result<Option<PathBuf>> {
    if o.setup_torch {
        let base = o.python.as_deref().unwrap_or(python::default_python());
        return VENV.create(root, base, Log::Stderr).map(Some);
    }
    if let Some(py) = &o.python {
        python::check(py, VENV.hint)?;
        return Ok(Some(PathBuf::from(py)));
    }
    if VENV.python(root).exists() {
        return Ok(Some(VENV.python(root)));
    }
    if o.compare_torch {
        return fail(format!(
            "--compare-torch needs PyTorch, timm and lightly, and no --python was given and {}/ \
             does not exist: create it with `cargo xtask bench --compare-torch --setup-torch` \
             (pip installs {}, a few GB) or pass --python PATH of an interpreter that has them",
            VENV.dir, VENV.requirements
        ));
    }
    Ok(None)
}

/// torch's version when `path` imports it (and timm, lightly for the
/// comparison); without the comparison a missing torch only loses the
/// matmul peak.
fn torch_version(path: &Path, compare_torch: bool) -> Result<Option<String>> {
    let modules = if compare_torch { "torch, timm, lightly" } else { "torch" };
    let probe = format!("import {modules}; print(torch.__version__)");
    let out = Command::new(path).args(["-c", &probe]).stdin(Stdio::null()).output();
    match out {
        Ok(out) if out.status.success() => Ok(Some(String::from_utf8_lossy(&out.stdout).trim().to_string())),
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.lines().last().unwrap_or("").trim().to_string();
            if compare_torch {
                return fail(format!(
                    "`{}` cannot import {modules} ({last}): run `cargo xtask bench --compare-torch \
                     --setup-torch` to create {} from {}, or pass --python PATH of an \
                     interpreter that has them",
                    path.display(),
                    VENV.dir,
                    VENV.requirements
                ));
            }
            eprintln!("note: `{}` has no torch ({last}): no matmul peak", path.display());
            Ok(None)
        }
        Err(e) => fail(format!("cannot run Python interpreter `{}`: {e}", path.display())),
    }
}

/// torch_bench.py with `args`, run from the workspace root.
fn script(ctx: &Ctx, py: &Python, args: &[&str]) -> Command {
    let mut cmd = Command::new(&py.path);
    cmd.current_dir(&ctx.root).arg(SCRIPT).args(args);
    cmd.args(["--threads", &ctx.threads.to_string(), "--device", &ctx.o.device]);
    cmd
}

/// The machine's matmul peak, measured with torch at the same thread count
/// (when a torch is available): GFLOP/s and the BLAS.
pub fn matmul_peak(ctx: &Ctx) -> Option<(f64, String)> {
    let py = ctx.python.as_ref().filter(|p| p.torch.is_some())?;
    Log::Stderr
        .step(&format!("matmul peak: torch.matmul {MATMUL_SIZE}x{MATMUL_SIZE} f32, {} threads", ctx.threads));
    let mut cmd = script(ctx, py, &["--matmul-peak", "--matmul-size", &MATMUL_SIZE.to_string()]);
    match run_json(&mut cmd, "torch matmul peak") {
        Ok((obj, _)) => {
            let g = get(&obj, "matmul_gflops").and_then(Value::as_f64)?;
            let blas = get(&obj, "blas").and_then(Value::as_str).unwrap_or("?").to_string();
            eprintln!("matmul peak: {g:.1} GFLOP/s (torch, {blas})");
            Some((g, blas))
        }
        Err(e) => {
            eprintln!("warning: the matmul peak was not measured: {e}");
            None
        }
    }
}

/// One torch_bench.py run of config `c`, with the preset's shape.
/// torch's step of config `c` in `dtype` (`bf16`: under autocast).
pub fn run(ctx: &Ctx, py: &Python, c: &Config, dtype: &str) -> Result<Run> {
    let (batch, steps) = (c.batch.to_string(), ctx.o.steps.to_string());
    let args = ["--preset", c.preset, "--batch-size", &batch, "--steps", &steps, "--dtype", dtype];
    let mut cmd = script(ctx, py, &args);
    cmd.args(c.shape.torch_args());
    let (obj, rss) = run_json(&mut cmd, "torch_bench.py")?;
    let mut t = Run::from_json(&obj, "torch_bench.py")?;
    t.peak_rss_mb = t.peak_rss_mb.or(rss);
    report::print_run(if dtype == "f32" { "torch:" } else { "torch (autocast bf16):" }, &t);
    Ok(t)
}
