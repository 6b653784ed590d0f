//! `cargo xtask bench`: time full MAE training steps (ours, and optionally
//! PyTorch's) for three fixed configurations, with peak memory, FLOPs and the
//! data loader's throughput; optionally write the table into
//! docs/benchmarks.md.
//!
//! Ours is `target/release/mae bench --json` (crates/mae-cli); the
//! reference is `xtask/bench/torch_bench.py` (timm + lightly, the
//! implementation the fixtures come from). Both print one JSON object, read
//! here with a small hand-written parser (xtask is std-only). The model
//! shapes come from the same binary's `mae info --presets --json`.
//!
//! - `configs`: the configs (letter -> preset, batch) and the presets' shapes, FLOPs
//! - `runner`: building `mae`, running it and the loader benchmark, peak RSS
//! - `torch`: the Python side (interpreter, venv, torch_bench.py, matmul peak)
//! - `measure`: what a run measured, `--rounds` and their medians
//! - `report`: the table, the `--json` lines, the progress lines
//! - `docs`: `--write-docs` (the section, the machine, the date)
//! - `json`: the JSON reader and writer

mod configs;
mod docs;
mod json;
mod measure;
mod report;
mod runner;
mod torch;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Instant;

use crate::args::{Args, Parsed};
use crate::toolkit;
use crate::util::{self, Error, Log, Result};
use configs::{Choice, Config, CHOICES};
use measure::{Round, Row};
use runner::LoaderRow;
use torch::Python;

/// The arguments gpu-check passes to `cargo xtask bench`.
pub const GPU_CHECK_ARGS: [&str; 5] = ["--config", "all", "--device", "cuda", "--json"];

pub const HELP: &str = "\
cargo xtask bench: time MAE training steps (forward, loss, backward, AdamW)

USAGE:
    cargo xtask bench [--config A|B|C|all] [--steps N] [--rounds N] [--device cpu|cuda]
                      [--dtype f32|bf16]
                      [--compare-torch] [--setup-torch] [--python PATH]
                      [--json] [--write-docs] [--no-loader]

CONFIGS (f32):
    A   mae-vit-tiny-patch4-32   batch 64   (32 px, ViT-Tiny/4, decoder 128/4/4)
    B   lightly-vit-b32-224      batch 16   (ViT-B/32, decoder 512/1/16)
    C   mae-vit-base-patch16     batch 8    (ViT-B/16, decoder 512/8/16)

For each config it builds and runs `target/release/mae bench --preset P
--batch-size B --steps N --device D --json` (2 warm-up steps, then N timed),
records the peak RSS of that process (VmHWM from /proc), the step's FLOPs
(analytic, 3x forward; the shapes from `mae info --presets --json`) and the
achieved GFLOP/s. With a PyTorch environment it also times a 2048x2048 f32
torch.matmul at the same thread count (the machine's practical matmul peak).
Last, it runs the data loader benchmark once:
cargo run --release -p mae-data --example loader_bench -- --workers 2

OPTIONS:
    --config C       A, B, C, a comma list (A,C) or all [default: all]
    --steps N        timed steps per config, after 2 warm-up steps [default: 5]
    --rounds N       measure each config N times, alternating ours and torch
                     (ours, torch, ours, torch, ...), and report the medians:
                     images/s of each side and the ratio ours/torch (the
                     per-round numbers are in the --json lines) [default: 1]
    --device D       cpu or cuda [default: cpu]; cuda builds with
                     --features mae-cli/cuda and needs nvcc (as `build --cuda`)
    --dtype D        f32, or bf16: ours with `--dtype bf16` (on the CPU the bf16
                     product kernel, `product_kernel` in the JSON), torch under
                     bf16 autocast and, with --compare-torch, also in f32 in the
                     same round: ratios to both [default: f32]
    --compare-torch  also run xtask/bench/torch_bench.py (timm + lightly, same
                     batch, torch.set_num_threads(<cores>)) and report the
                     ratio ours/torch of images per second
    --setup-torch    (re)create .venv-bench: `python3 -m venv .venv-bench` and
                     pip install -r xtask/bench/requirements.txt (a few GB)
    --python PATH    the Python with torch, timm, lightly to use as is (with
                     --setup-torch: the interpreter the venv is made from).
                     Default: .venv-bench/bin/python if it exists
    --json           print one JSON object per config (and per loader dataset)
                     on stdout instead of the table; progress goes to stderr
    --write-docs     replace the generated part of `## Training step` in
                     docs/benchmarks.md with the table, machine, date, command
    --no-loader      skip the data loader benchmark
    -h, --help       Print this help

EXAMPLES:
    cargo xtask bench --config A --steps 2
    cargo xtask bench --config all --compare-torch --setup-torch
    cargo xtask bench --config all --compare-torch --rounds 3 --no-loader
    cargo xtask bench --config all --compare-torch --python ~/venv/bin/python --write-docs
    cargo xtask bench --config all --device cuda --json
    cargo xtask bench --config all --compare-torch --dtype bf16 --rounds 3 --no-loader
";

const DEFAULT_STEPS: usize = 5;
const MATMUL_SIZE: usize = 2048;

struct Options {
    choices: Vec<Choice>,
    steps: usize,
    rounds: usize,
    device: String,
    dtype: String,
    compare_torch: bool,
    setup_torch: bool,
    python: Option<String>,
    json: bool,
    write_docs: bool,
    loader: bool,
}

fn parse(argv: Vec<String>) -> Result<Option<Options>> {
    let mut args = Args::new("bench", argv);
    let mut o = Options {
        choices: CHOICES.to_vec(),
        steps: DEFAULT_STEPS,
        rounds: 1,
        device: "cpu".into(),
        dtype: "f32".into(),
        compare_torch: false,
        setup_torch: false,
        python: None,
        json: false,
        write_docs: false,
        loader: true,
    };
    let parsed = args.parse_flags(HELP, |args, f| {
        match f {
            "--config" => o.choices = configs::parse_configs(&args.value(f)?).map_err(|m| args.usage(m))?,
            "--steps" => o.steps = positive(args, f)?,
            "--rounds" => o.rounds = positive(args, f)?,
            "--device" => {
                o.device = args.value(f)?;
                if o.device != "cpu" && o.device != "cuda" {
                    return Err(args.usage(format!("--device: expected cpu or cuda, got `{}`", o.device)));
                }
            }
            "--dtype" => {
                o.dtype = args.value(f)?;
                if o.dtype != "f32" && o.dtype != "bf16" {
                    return Err(args.usage(format!("--dtype: expected f32 or bf16, got `{}`", o.dtype)));
                }
            }
            "--compare-torch" => o.compare_torch = true,
            "--setup-torch" => o.setup_torch = true,
            "--python" => o.python = Some(args.value(f)?),
            "--json" => o.json = true,
            "--write-docs" => o.write_docs = true,
            "--no-loader" => o.loader = false,
            _ => return Err(args.unknown(f)),
        }
        Ok(())
    })?;
    match parsed {
        Parsed::Help => Ok(None),
        Parsed::Done { rest: Some(_) } => {
            Err(args.usage("`cargo xtask bench` takes no arguments after `--`".into()))
        }
        // The generated tables of docs/benchmarks.md are the f32 ones.
        Parsed::Done { rest: None } if o.write_docs && o.dtype != "f32" => {
            Err(args.usage("--write-docs writes the f32 tables: run it without --dtype bf16".into()))
        }
        Parsed::Done { rest: None } => Ok(Some(o)),
    }
}

/// The value of `flag`, a number of at least 1.
fn positive(args: &mut Args, flag: &str) -> Result<usize> {
    let v = args.value(flag)?;
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(args.usage(format!("{flag}: expected a positive number, got `{v}`"))),
    }
}

/// What every measurement needs: the options, the built binary, the
/// configs with their shapes, the Python side.
struct Ctx {
    o: Options,
    root: PathBuf,
    threads: usize,
    mae_bin: PathBuf,
    /// The environment `mae` runs with (the CUDA libraries with `--device cuda`).
    run_env: Vec<(&'static str, OsString)>,
    configs: Vec<Config>,
    python: Option<Python>,
}

/// Everything one `bench` measured, for the report and the docs.
struct Results {
    rows: Vec<Row>,
    /// The matmul peak in GFLOP/s and the BLAS torch used.
    peak: Option<(f64, String)>,
    loader: Vec<LoaderRow>,
    /// Why the loader table is missing, when it failed.
    loader_note: String,
    load_start: Option<String>,
    load_end: Option<String>,
}

pub fn bench(argv: Vec<String>) -> Result<()> {
    let Some(o) = parse(argv)? else { return Ok(()) };
    let started = Instant::now();
    let load_start = docs::loadavg();
    let date = docs::utc_now();
    let ctx = Ctx::prepare(o)?;
    let peak = torch::matmul_peak(&ctx);
    let rows = ctx.configs.iter().map(|c| measure_config(&ctx, c, peak.as_ref())).collect::<Result<_>>()?;
    let (loader, loader_note) = run_loader(&ctx);
    let res = Results { rows, peak, loader, loader_note, load_start, load_end: docs::loadavg() };
    if !ctx.o.json {
        report::print_text(&ctx, &res);
    }
    if ctx.o.write_docs {
        docs::write(&ctx, &res, &date)?;
    }
    eprintln!("bench: done in {}", util::fmt_duration(started.elapsed()));
    Ok(())
}

impl Ctx {
    /// Find the Python side, build `mae` and read the presets' shapes from it.
    fn prepare(o: Options) -> Result<Ctx> {
        let root = util::workspace_root();
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        // Python first: a missing torch should fail before minutes of building.
        let python = torch::resolve_python(&root, &o)?;
        // The CUDA toolkit's environment (nvcc for the build, its libraries at run time).
        let mut build_env: Vec<(&'static str, OsString)> = Vec::new();
        let mut run_env: Vec<(&'static str, OsString)> = Vec::new();
        if o.device == "cuda" {
            let tk = toolkit::locate(&root, false)?;
            let (cap, _) = toolkit::compute_cap(None, toolkit::DEFAULT_COMPUTE_CAP)?;
            build_env = toolkit::env(&tk, &cap);
            run_env.extend(toolkit::runtime_library_path(&tk));
        }
        let mae_bin = runner::build_mae(&root, &build_env, o.device == "cuda")?;
        let presets = runner::read_presets(&root, &mae_bin, &run_env)?;
        let configs = configs::resolve(&o.choices, &presets).map_err(|e| {
            Error::Failed(format!("{e} (read from `{} info --presets --json`)", util::rel(&root, &mae_bin)))
        })?;
        Ok(Ctx { o, root, threads, mae_bin, run_env, configs, python })
    }
}

/// Measure one config: `--rounds` times ours, then torch's with
/// `--compare-torch`; prints its `--json` line.
fn measure_config(ctx: &Ctx, c: &Config, peak: Option<&(f64, String)>) -> Result<Row> {
    let o = &ctx.o;
    let rounds = if o.rounds > 1 { format!(", {} rounds", o.rounds) } else { String::new() };
    Log::Stderr.step(&format!(
        "config {}: {}, {} steps, {}, {}{rounds}",
        c.name,
        c.describe(),
        o.steps,
        o.device,
        o.dtype
    ));
    let mut all = Vec::new();
    let mut candle_num_threads = None;
    for i in 1..=o.rounds {
        if o.rounds > 1 {
            eprintln!("-- round {i}/{}", o.rounds);
        }
        let (ours, ctn) = runner::run_ours(ctx, c)?;
        candle_num_threads = candle_num_threads.or(ctn);
        let (torch, torch_f32) = match (&ctx.python, o.compare_torch) {
            (Some(py), true) if o.dtype == "bf16" => {
                (Some(torch::run(ctx, py, c, "bf16")?), Some(torch::run(ctx, py, c, "f32")?))
            }
            (Some(py), true) => (Some(torch::run(ctx, py, c, "f32")?), None),
            _ => (None, None),
        };
        all.push(Round { ours, torch, torch_f32 });
    }
    let row = Row::new(c.clone(), all, candle_num_threads);
    if o.rounds > 1 {
        report::print_rounds(&row);
    }
    if o.json {
        println!("{}", report::row_json(&row, o, peak, ctx.threads));
        util::flush();
    }
    Ok(row)
}

/// The loader benchmark (unless `--no-loader`): its rows, or why it failed.
fn run_loader(ctx: &Ctx) -> (Vec<LoaderRow>, String) {
    if !ctx.o.loader {
        return (Vec::new(), String::new());
    }
    Log::Stderr.step("data loader: loader_bench, 2 workers");
    let (loader, note) = match runner::run_loader(&ctx.root) {
        Ok(l) => (l, String::new()),
        Err(e) => {
            eprintln!("warning: the loader benchmark failed: {e}");
            (Vec::new(), format!("failed: {e}"))
        }
    };
    if ctx.o.json {
        for l in &loader {
            println!("{}", report::loader_json(l));
        }
    }
    (loader, note)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_parse() {
        let o = parse(argv(&["--config", "B", "--steps=2", "--json"])).unwrap().unwrap();
        assert_eq!((o.choices.len(), o.steps, o.rounds, o.json), (1, 2, 1, true));
        let o = parse(argv(&["--rounds", "3", "--compare-torch"])).unwrap().unwrap();
        assert_eq!((o.choices.len(), o.rounds, o.compare_torch), (3, 3, true));
        assert!(parse(argv(&["--steps", "0"])).is_err());
        assert!(parse(argv(&["--rounds", "0"])).is_err());
        assert!(parse(argv(&["--rounds", "x"])).is_err());
        assert!(parse(argv(&["--device", "tpu"])).is_err());
        assert!(parse(argv(&["--config", "D"])).is_err());
        assert!(parse(argv(&["--bogus"])).is_err());
        assert!(parse(argv(&["--", "x"])).is_err());
        let o = parse(argv(&["--dtype", "bf16", "--compare-torch"])).unwrap().unwrap();
        assert_eq!(o.dtype, "bf16");
        assert!(parse(argv(&["--dtype", "f16"])).is_err());
        assert!(parse(argv(&["--dtype", "bf16", "--write-docs"])).is_err());
    }
}
