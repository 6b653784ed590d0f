//! `cargo xtask bench`: time full MAE training steps (ours, and optionally
//! PyTorch's) for three fixed configurations, with peak memory, FLOPs and the
//! data loader's throughput; optionally write the table into
//! docs/benchmarks.md.
//!
//! Ours is `target/release/mae bench --json` (crates/mae-cli); the
//! reference is `xtask/bench/torch_bench.py` (timm + lightly, the
//! implementation the fixtures come from). Both print one flat JSON object,
//! read here with a small hand-written parser (xtask is std-only).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::args::{Arg, Args};
use crate::build_cmd::run_cuda_cargo;
use crate::toolkit;
use crate::util::{self, fail, Error, Result};

/// Whether `bench` does anything yet; gpu-check skips its bench stage while
/// this is false.
pub const IMPLEMENTED: bool = true;

/// The arguments gpu-check passes to `cargo xtask bench`.
pub const GPU_CHECK_ARGS: [&str; 5] = ["--config", "all", "--device", "cuda", "--json"];

pub const HELP: &str = "\
cargo xtask bench: time MAE training steps (forward, loss, backward, AdamW)

USAGE:
    cargo xtask bench [--config A|B|C|all] [--steps N] [--device cpu|cuda]
                      [--compare-torch] [--setup-torch] [--python PATH]
                      [--json] [--write-docs] [--no-loader]

CONFIGS (f32):
    A   mae-vit-tiny-patch4-32   batch 64   (32 px, ViT-Tiny/4, decoder 128/4/4)
    B   lightly-vit-b32-224      batch 16   (ViT-B/32, decoder 512/1/16)
    C   mae-vit-base-patch16     batch 8    (ViT-B/16, decoder 512/8/16)

For each config it builds and runs `target/release/mae bench --preset P
--batch-size B --steps N --device D --json` (2 warm-up steps, then N timed),
records the peak RSS of that process (VmHWM from /proc), the step's FLOPs
(analytic, 3x forward) and the achieved GFLOP/s. With a PyTorch environment
it also times a 2048x2048 f32 torch.matmul at the same thread count (the
machine's practical matmul peak). Last, it runs the data loader benchmark
once: cargo run --release -p mae-data --example loader_bench -- --workers 2

OPTIONS:
    --config C       A, B, C, a comma list (A,C) or all [default: all]
    --steps N        timed steps per config, after 2 warm-up steps [default: 5]
    --device D       cpu or cuda [default: cpu]; cuda builds with
                     --features mae-cli/cuda and needs nvcc (as `build --cuda`)
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
    cargo xtask bench --config all --compare-torch --python ~/venv/bin/python --write-docs
    cargo xtask bench --config all --device cuda --json
";

const VENV: &str = ".venv-bench";
const SCRIPT: &str = "xtask/bench/torch_bench.py";
const REQUIREMENTS: &str = "xtask/bench/requirements.txt";
const DOCS: &str = "docs/benchmarks.md";
const SECTION: &str = "## Training step";
const BEGIN: &str = "<!-- cargo xtask bench --write-docs: begin (generated, replaced on every run) -->";
const END: &str = "<!-- cargo xtask bench --write-docs: end -->";
const DEFAULT_STEPS: usize = 5;
const MASK_RATIO: f64 = 0.75;
const MATMUL_SIZE: usize = 2048;

/// Width, depth and heads of a transformer stack (MLP ratio 4).
#[derive(Clone, Copy)]
struct Stack {
    dim: usize,
    depth: usize,
    heads: usize,
}

/// One benchmark configuration: a preset of crates/mae-io/src/config.rs and a batch size.
#[derive(Clone, Copy)]
struct Config {
    name: &'static str,
    preset: &'static str,
    batch: usize,
    image: usize,
    patch: usize,
    encoder: Stack,
    decoder: Stack,
}

const CONFIGS: [Config; 3] = [
    Config {
        name: "A",
        preset: "mae-vit-tiny-patch4-32",
        batch: 64,
        image: 32,
        patch: 4,
        encoder: Stack { dim: 192, depth: 12, heads: 3 },
        decoder: Stack { dim: 128, depth: 4, heads: 4 },
    },
    Config {
        name: "B",
        preset: "lightly-vit-b32-224",
        batch: 16,
        image: 224,
        patch: 32,
        encoder: Stack { dim: 768, depth: 12, heads: 12 },
        decoder: Stack { dim: 512, depth: 1, heads: 16 },
    },
    Config {
        name: "C",
        preset: "mae-vit-base-patch16",
        batch: 8,
        image: 224,
        patch: 16,
        encoder: Stack { dim: 768, depth: 12, heads: 12 },
        decoder: Stack { dim: 512, depth: 8, heads: 16 },
    },
];

impl Config {
    /// Patches per image `L`.
    fn patches(&self) -> usize {
        (self.image / self.patch).pow(2)
    }

    /// Visible patches `K = int(L * (1 - 0.75))`, as `MaskPlan::len_keep`.
    fn kept(&self) -> usize {
        (self.patches() as f64 * (1.0 - MASK_RATIO)) as usize
    }

    /// FLOPs of one training step (forward + backward = 3x forward), counting
    /// 2 per multiply-add of every matmul and attention product:
    ///
    /// - patch embedding over all L patches: 2 L (3 p²) D
    /// - each encoder block on N = 1 + K tokens: 2 N (4D² + 2D·4D) (qkv, proj,
    ///   MLP) + 4 N² D (QKᵀ and attention x V)
    /// - decoder_embed on 1 + K tokens: 2 (1+K) D Dd
    /// - each decoder block on 1 + L tokens, as above with Dd
    /// - decoder_pred over the L patches: 2 L Dd (3 p²)
    ///
    /// times the batch. Norms, softmax, GELU, the loss and AdamW are element-wise
    /// and left out.
    fn step_flops(&self) -> f64 {
        let l = self.patches() as f64;
        let pix = (3 * self.patch * self.patch) as f64;
        let ne = 1.0 + self.kept() as f64;
        let nd = 1.0 + l;
        let block = |n: f64, d: f64| 2.0 * n * 12.0 * d * d + 4.0 * n * n * d;
        let (d, dd) = (self.encoder.dim as f64, self.decoder.dim as f64);
        let forward = 2.0 * l * pix * d
            + self.encoder.depth as f64 * block(ne, d)
            + 2.0 * ne * d * dd
            + self.decoder.depth as f64 * block(nd, dd)
            + 2.0 * l * dd * pix;
        3.0 * forward * self.batch as f64
    }

    fn describe(&self) -> String {
        format!(
            "`{}` ({} px, patch {}, {}/{}/{} + {}/{}/{}), batch {}",
            self.preset,
            self.image,
            self.patch,
            self.encoder.dim,
            self.encoder.depth,
            self.encoder.heads,
            self.decoder.dim,
            self.decoder.depth,
            self.decoder.heads,
            self.batch
        )
    }
}

struct Options {
    configs: Vec<Config>,
    steps: usize,
    device: String,
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
        configs: CONFIGS.to_vec(),
        steps: DEFAULT_STEPS,
        device: "cpu".into(),
        compare_torch: false,
        setup_torch: false,
        python: None,
        json: false,
        write_docs: false,
        loader: true,
    };
    while let Some(arg) = args.next()? {
        match arg {
            Arg::Flag(f) => match f.as_str() {
                "-h" | "--help" => {
                    print!("{HELP}");
                    return Ok(None);
                }
                "--config" => {
                    let v = args.value("--config")?;
                    o.configs = parse_configs(&v).map_err(|m| args.usage(m))?;
                }
                "--steps" => {
                    let v = args.value("--steps")?;
                    o.steps = match v.parse::<usize>() {
                        Ok(n) if n > 0 => n,
                        _ => {
                            return Err(args.usage(format!("--steps: expected a positive number, got `{v}`")))
                        }
                    };
                }
                "--device" => {
                    let v = args.value("--device")?;
                    if v != "cpu" && v != "cuda" {
                        return Err(args.usage(format!("--device: expected cpu or cuda, got `{v}`")));
                    }
                    o.device = v;
                }
                "--compare-torch" => o.compare_torch = true,
                "--setup-torch" => o.setup_torch = true,
                "--python" => o.python = Some(args.value("--python")?),
                "--json" => o.json = true,
                "--write-docs" => o.write_docs = true,
                "--no-loader" => o.loader = false,
                _ => return Err(args.unknown(&f)),
            },
            Arg::Rest(_) => {
                return Err(args.usage("`cargo xtask bench` takes no arguments after `--`".into()))
            }
        }
    }
    Ok(Some(o))
}

fn parse_configs(v: &str) -> std::result::Result<Vec<Config>, String> {
    if v.eq_ignore_ascii_case("all") {
        return Ok(CONFIGS.to_vec());
    }
    let mut out: Vec<Config> = Vec::new();
    for name in v.split(',').map(str::trim) {
        match CONFIGS.iter().find(|c| c.name.eq_ignore_ascii_case(name) || c.preset == name) {
            Some(c) if !out.iter().any(|o| o.name == c.name) => out.push(*c),
            Some(_) => {}
            None => return Err(format!("--config: expected A, B, C (comma-separated) or all, got `{name}`")),
        }
    }
    Ok(out)
}

/// What one `mae bench` / `torch_bench.py` run measured.
#[derive(Clone, Default)]
struct Run {
    img_per_s: f64,
    step_s_median: f64,
    step_s_min: f64,
    step_s_max: f64,
    forward_s: f64,
    backward_s: f64,
    optimizer_s: f64,
    peak_rss_mb: Option<f64>,
}

impl Run {
    fn from_json(obj: &[(String, Value)], what: &str) -> Result<Self> {
        let num = |k: &str| -> Result<f64> {
            get(obj, k)
                .and_then(Value::as_f64)
                .ok_or_else(|| Error::Failed(format!("{what}: its JSON output has no number `{k}`")))
        };
        Ok(Run {
            img_per_s: num("img_per_s")?,
            step_s_median: num("step_s_median")?,
            step_s_min: num("step_s_min")?,
            step_s_max: num("step_s_max")?,
            forward_s: num("forward_s")?,
            backward_s: num("backward_s")?,
            optimizer_s: num("optimizer_s")?,
            peak_rss_mb: get(obj, "peak_rss_mb").and_then(Value::as_f64),
        })
    }
}

struct Row {
    config: Config,
    ours: Run,
    candle_num_threads: Option<String>,
    torch: Option<Run>,
}

impl Row {
    fn gflops(&self) -> f64 {
        self.config.step_flops() / self.ours.step_s_median / 1e9
    }
    fn ratio(&self) -> Option<f64> {
        self.torch.as_ref().map(|t| self.ours.img_per_s / t.img_per_s)
    }
    /// The ratio of the fastest steps: less sensitive to other processes on
    /// the machine than the medians.
    fn ratio_best(&self) -> Option<f64> {
        self.torch.as_ref().map(|t| t.step_s_min / self.ours.step_s_min)
    }
}

struct LoaderRow {
    dataset: String,
    images: String,
    output: String,
    img_per_s: f64,
}

/// The Python side: which interpreter, and whether it can run the comparison.
struct Python {
    path: PathBuf,
    /// `torch.__version__`, when torch imports.
    torch: Option<String>,
}

pub fn bench(argv: Vec<String>) -> Result<()> {
    let Some(o) = parse(argv)? else { return Ok(()) };
    let root = util::workspace_root();
    let started = Instant::now();
    let load_start = loadavg();
    let date = utc_now();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let cuda = o.device == "cuda";

    // Python first: a missing torch should fail before minutes of building.
    let python = resolve_python(&root, &o)?;

    // The CUDA toolkit's environment (nvcc for the build, its libraries at run time).
    let mut build_env: Vec<(&'static str, OsString)> = Vec::new();
    let mut run_env: Vec<(&'static str, OsString)> = Vec::new();
    if cuda {
        let tk = toolkit::locate(&root, false)?;
        let (cap, _) = toolkit::compute_cap(None, toolkit::DEFAULT_COMPUTE_CAP)?;
        build_env = toolkit::env(&tk, &cap);
        run_env.extend(toolkit::runtime_library_path(&tk));
    }

    // Build the `mae` binary.
    step("build the `mae` binary (release)");
    let mut cmd = util::cargo_cmd(&root);
    toolkit::apply_env(&mut cmd, &build_env);
    cmd.args(["build", "--release", "-p", "mae-cli"]);
    if cuda {
        cmd.args(["--features", "mae-cli/cuda"]);
    }
    cmd.stdout(Stdio::null()); // cargo reports on stderr; keep stdout for results
    eprintln!("$ {}", util::display(&cmd));
    if cuda {
        run_cuda_cargo("build", &mut cmd)?;
    } else {
        let status = cmd.status().map_err(|e| Error::Failed(format!("could not run cargo: {e}")))?;
        if !status.success() {
            return fail(format!(
                "step `build` failed ({}): {}",
                util::describe(status),
                util::display(&cmd)
            ));
        }
    }
    let mae_bin = target_dir(&root).join("release").join(if cfg!(windows) { "mae.exe" } else { "mae" });
    if !mae_bin.is_file() {
        return fail(format!("the build finished but {} does not exist", mae_bin.display()));
    }

    // The machine's matmul peak, measured with torch at the same thread count.
    let mut peak: Option<(f64, String)> = None;
    if let Some(py) = python.as_ref().filter(|p| p.torch.is_some()) {
        step(&format!("matmul peak: torch.matmul {MATMUL_SIZE}x{MATMUL_SIZE} f32, {threads} threads"));
        let mut cmd = Command::new(&py.path);
        cmd.current_dir(&root).arg(SCRIPT).args(["--matmul-peak", "--device", &o.device]);
        cmd.args(["--threads", &threads.to_string(), "--matmul-size", &MATMUL_SIZE.to_string()]);
        match run_json(&mut cmd, "torch matmul peak") {
            Ok((obj, _)) => {
                let g = get(&obj, "matmul_gflops").and_then(Value::as_f64);
                let blas = get(&obj, "blas").and_then(Value::as_str).unwrap_or("?").to_string();
                if let Some(g) = g {
                    eprintln!("matmul peak: {g:.1} GFLOP/s (torch, {blas})");
                    peak = Some((g, blas));
                }
            }
            Err(e) => eprintln!("warning: the matmul peak was not measured: {e}"),
        }
    }

    // The configurations.
    let mut rows: Vec<Row> = Vec::new();
    for c in &o.configs {
        step(&format!("config {}: {}, {} steps, {}", c.name, c.describe(), o.steps, o.device));
        let mut cmd = Command::new(&mae_bin);
        toolkit::apply_env(&mut cmd, &run_env);
        cmd.current_dir(&root).args(["bench", "--preset", c.preset]);
        cmd.args(["--batch-size", &c.batch.to_string(), "--steps", &o.steps.to_string()]);
        cmd.args(["--device", &o.device, "--json"]);
        let (obj, rss) = run_json(&mut cmd, "mae bench")?;
        let mut ours = Run::from_json(&obj, "mae bench")?;
        ours.peak_rss_mb = rss;
        let candle_num_threads = get(&obj, "candle_num_threads").and_then(Value::as_str).map(String::from);
        eprintln!(
            "ours:  {:.2} img/s, step {:.3} s (forward {:.3}, backward {:.3}, optimizer {:.3}), peak RSS {}",
            ours.img_per_s,
            ours.step_s_median,
            ours.forward_s,
            ours.backward_s,
            ours.optimizer_s,
            fmt_mb(ours.peak_rss_mb)
        );
        let torch = match (&python, o.compare_torch) {
            (Some(py), true) => {
                let mut cmd = Command::new(&py.path);
                cmd.current_dir(&root).arg(SCRIPT).args(["--preset", c.preset]);
                cmd.args(["--batch-size", &c.batch.to_string(), "--steps", &o.steps.to_string()]);
                cmd.args(["--threads", &threads.to_string(), "--device", &o.device]);
                let (obj, rss) = run_json(&mut cmd, "torch_bench.py")?;
                let mut t = Run::from_json(&obj, "torch_bench.py")?;
                t.peak_rss_mb = t.peak_rss_mb.or(rss);
                eprintln!(
                    "torch: {:.2} img/s, step {:.3} s (forward {:.3}, backward {:.3}, optimizer {:.3}), peak RSS {}",
                    t.img_per_s,
                    t.step_s_median,
                    t.forward_s,
                    t.backward_s,
                    t.optimizer_s,
                    fmt_mb(t.peak_rss_mb)
                );
                Some(t)
            }
            _ => None,
        };
        let row = Row { config: *c, ours, candle_num_threads, torch };
        if o.json {
            println!("{}", row_json(&row, &o, peak.as_ref(), threads));
            util::flush();
        }
        rows.push(row);
    }

    // The data loader.
    let mut loader: Vec<LoaderRow> = Vec::new();
    let mut loader_note = String::new();
    if o.loader {
        step("data loader: loader_bench, 2 workers");
        match run_loader(&root) {
            Ok(l) => loader = l,
            Err(e) => {
                eprintln!("warning: the loader benchmark failed: {e}");
                loader_note = format!("failed: {e}");
            }
        }
        if o.json {
            for l in &loader {
                println!("{}", loader_json(l));
            }
        }
    }
    let load_end = loadavg();

    let table = markdown_table(&rows, peak.as_ref());
    if !o.json {
        println!();
        println!("{table}");
        if let Some((g, blas)) = &peak {
            println!("matmul peak: {g:.1} GFLOP/s (torch.matmul {MATMUL_SIZE}x{MATMUL_SIZE} f32, {blas}, {threads} threads)");
        }
        if !loader.is_empty() {
            println!("\ndata loader (2 workers):\n{}", loader_table(&loader));
        }
        println!(
            "load average at start: {}; at the end: {}",
            load_start.as_deref().unwrap_or("?"),
            load_end.as_deref().unwrap_or("?")
        );
    }

    if o.write_docs {
        let machine = machine(&o.device, threads);
        let section = docs_section(&DocsInput {
            o: &o,
            rows: &rows,
            peak: peak.as_ref(),
            loader: &loader,
            loader_note: &loader_note,
            machine: &machine,
            date: &date,
            load_start: load_start.as_deref().unwrap_or("?"),
            load_end: load_end.as_deref().unwrap_or("?"),
            threads,
            torch_version: python.as_ref().and_then(|p| p.torch.clone()),
        });
        let path = root.join(DOCS);
        let old = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
        std::fs::write(&path, replace_section(&old, &section))
            .map_err(|e| Error::Failed(format!("cannot write {DOCS}: {e}")))?;
        eprintln!("bench: wrote the `{SECTION}` table into {DOCS}");
    }
    eprintln!("bench: done in {}", util::fmt_duration(started.elapsed()));
    Ok(())
}

fn step(msg: &str) {
    util::flush();
    eprintln!("\n==> {msg}");
}

/// `$CARGO_TARGET_DIR`, else `<root>/target`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
        Some(d) => root.join(d),
        None => root.join("target"),
    }
}

// ---------------------------------------------------------------------------
// Python
// ---------------------------------------------------------------------------

fn default_python() -> &'static str {
    if cfg!(windows) {
        "python"
    } else {
        "python3"
    }
}

fn venv_python(root: &Path) -> PathBuf {
    if cfg!(windows) {
        root.join(VENV).join("Scripts").join("python.exe")
    } else {
        root.join(VENV).join("bin").join("python")
    }
}

/// Which Python runs the torch side, if any; fails when `--compare-torch`
/// cannot be honoured.
fn resolve_python(root: &Path, o: &Options) -> Result<Option<Python>> {
    let path = if o.setup_torch {
        Some(setup_venv(root, o.python.as_deref().unwrap_or(default_python()))?)
    } else if let Some(py) = &o.python {
        check_python(py)?;
        Some(PathBuf::from(py))
    } else if venv_python(root).exists() {
        Some(venv_python(root))
    } else if o.compare_torch {
        return fail(format!(
            "--compare-torch needs PyTorch, timm and lightly, and no --python was given and {VENV}/ \
             does not exist: create it with `cargo xtask bench --compare-torch --setup-torch` \
             (pip installs {REQUIREMENTS}, a few GB) or pass --python PATH of an interpreter \
             that has them"
        ));
    } else {
        return Ok(None);
    };
    let Some(path) = path else { return Ok(None) };
    let modules = if o.compare_torch { "torch, timm, lightly" } else { "torch" };
    let probe = format!("import {modules}; print(torch.__version__)");
    let out = Command::new(&path).args(["-c", &probe]).stdin(Stdio::null()).output();
    let torch = match out {
        Ok(out) if out.status.success() => Some(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.lines().last().unwrap_or("").trim().to_string();
            if o.compare_torch {
                return fail(format!(
                    "`{}` cannot import {modules} ({last}): run `cargo xtask bench --compare-torch \
                     --setup-torch` to create {VENV} from {REQUIREMENTS}, or pass --python PATH of an \
                     interpreter that has them",
                    path.display()
                ));
            }
            eprintln!("note: `{}` has no torch ({last}): no matmul peak", path.display());
            None
        }
        Err(e) => return fail(format!("cannot run Python interpreter `{}`: {e}", path.display())),
    };
    if let Some(v) = &torch {
        eprintln!("python: {} (torch {v})", path.display());
    }
    if !root.join(SCRIPT).is_file() {
        return fail(format!("{SCRIPT} is missing: it is the PyTorch side of the benchmark"));
    }
    Ok(Some(Python { path, torch }))
}

fn check_python(py: &str) -> Result<()> {
    match Command::new(py).arg("--version").stdout(Stdio::null()).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => fail(format!(
            "`{py} --version` failed ({}): is it a Python interpreter?",
            util::describe(out.status)
        )),
        Err(e) => fail(format!(
            "cannot run Python interpreter `{py}`: {e} (pass --python PATH, or install python3 \
             and use --setup-torch)"
        )),
    }
}

/// Create (or refresh) `.venv-bench` from `base` and install the requirements.
fn setup_venv(root: &Path, base: &str) -> Result<PathBuf> {
    check_python(base)?;
    if !root.join(REQUIREMENTS).is_file() {
        return fail(format!("{REQUIREMENTS} is missing: it pins the packages of the PyTorch benchmark"));
    }
    step(&format!("create {VENV} (from {base})"));
    let mut venv = Command::new(base);
    venv.current_dir(root).args(["-m", "venv", VENV]).stdout(Stdio::null());
    run_quiet_stdout("venv", &mut venv)?;
    let py = venv_python(root);
    step(&format!("install {REQUIREMENTS}"));
    let mut pip = Command::new(&py);
    pip.current_dir(root).args(["-m", "pip", "install", "-r", REQUIREMENTS]);
    // pip's progress goes to stderr with the rest of ours; stdout stays for results.
    pip.stdout(Stdio::inherit());
    run_quiet_stdout("pip install", &mut pip)?;
    Ok(py)
}

/// Run with the command line printed on stderr.
fn run_quiet_stdout(step: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("$ {}", util::display(cmd));
    let status = cmd.status().map_err(|e| {
        Error::Failed(format!("step `{step}`: could not start `{}`: {e}", util::display(cmd)))
    })?;
    if status.success() {
        Ok(())
    } else {
        fail(format!("step `{step}` failed ({}): {}", util::describe(status), util::display(cmd)))
    }
}

// ---------------------------------------------------------------------------
// Running a benchmark process: its JSON line and its peak RSS
// ---------------------------------------------------------------------------

/// Run `cmd` (stderr inherited), polling its peak RSS (`VmHWM`) while it
/// runs, and parse the last line of its stdout that is a JSON object.
fn run_json(cmd: &mut Command, what: &str) -> Result<(Object, Option<f64>)> {
    eprintln!("$ {}", util::display(cmd));
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        Error::Failed(format!("{what}: could not start `{}`: {e}", cmd.get_program().to_string_lossy()))
    })?;
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let pid = child.id();
    let mut hwm_kb: Option<u64> = None;
    let status = loop {
        if let Some(kb) = vm_hwm_kb(pid) {
            hwm_kb = Some(hwm_kb.map_or(kb, |h| h.max(kb)));
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return fail(format!("{what}: waiting for the process: {e}")),
        }
    };
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        let hint = if what == "torch_bench.py" && status.code() == Some(3) {
            " (PyTorch packages missing: `cargo xtask bench --setup-torch`)"
        } else {
            ""
        };
        // The process's own stderr is above; repeat its stdout, then the command.
        if !out.trim().is_empty() {
            eprintln!("{}", out.trim_end());
        }
        eprintln!("error: {what} failed ({}){hint}: {}", util::describe(status), util::display(cmd));
        return Err(Error::Exit(1));
    }
    let line = out.lines().rev().find(|l| l.trim_start().starts_with('{')).ok_or_else(|| {
        Error::Failed(format!("{what} printed no JSON object: {}\n{}", util::display(cmd), out.trim_end()))
    })?;
    let obj = parse_flat_json(line).map_err(|e| Error::Failed(format!("{what}: bad JSON ({e}): {line}")))?;
    Ok((obj, hwm_kb.map(|kb| kb as f64 / 1024.0)))
}

/// `VmHWM` (peak resident set size) of a running process, in KiB.
fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Run the loader benchmark once and read its Markdown table.
fn run_loader(root: &Path) -> Result<Vec<LoaderRow>> {
    let mut cmd = util::cargo_cmd(root);
    cmd.args(["run", "--release", "-p", "mae-data", "--example", "loader_bench", "--", "--workers", "2"]);
    eprintln!("$ {}", util::display(&cmd));
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| Error::Failed(format!("could not run cargo: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprint!("{stdout}");
    if !out.status.success() {
        return fail(format!("{} ({})", util::display(&cmd), util::describe(out.status)));
    }
    let rows = parse_loader_table(&stdout);
    if rows.is_empty() {
        return fail("loader_bench printed no table rows");
    }
    Ok(rows)
}

/// Rows `| dataset | images/epoch | output | images/s |` of loader_bench's output.
fn parse_loader_table(s: &str) -> Vec<LoaderRow> {
    s.lines()
        .filter_map(|l| {
            let cells: Vec<&str> =
                l.trim().strip_prefix('|')?.strip_suffix('|')?.split('|').map(str::trim).collect();
            if cells.len() != 4 {
                return None;
            }
            let img_per_s = cells[3].parse::<f64>().ok()?;
            Some(LoaderRow {
                dataset: cells[0].to_string(),
                images: cells[1].to_string(),
                output: cells[2].to_string(),
                img_per_s,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------
// A flat JSON object reader and writer
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Value {
    Num(f64),
    Str(String),
    Bool(bool),
    Null,
}

impl Value {
    fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Num(n) => Some(*n),
            _ => None,
        }
    }
    fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// A flat JSON object, keys in order.
type Object = Vec<(String, Value)>;

fn get<'a>(obj: &'a [(String, Value)], key: &str) -> Option<&'a Value> {
    obj.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Parse a JSON object whose values are numbers, strings, booleans or null
/// (what `mae bench` and torch_bench.py print). Nested values are rejected.
fn parse_flat_json(s: &str) -> std::result::Result<Object, String> {
    let mut p = JsonParser { s: s.as_bytes(), i: 0 };
    p.ws();
    p.eat(b'{')?;
    let mut out = Vec::new();
    p.ws();
    if p.peek() == Some(b'}') {
        p.i += 1;
    } else {
        loop {
            p.ws();
            let key = p.string()?;
            p.ws();
            p.eat(b':')?;
            p.ws();
            let value = p.value()?;
            out.push((key, value));
            p.ws();
            match p.next() {
                Some(b',') => continue,
                Some(b'}') => break,
                _ => return Err(format!("expected `,` or `}}` at byte {}", p.i)),
            }
        }
    }
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("trailing characters at byte {}", p.i));
    }
    Ok(out)
}

struct JsonParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl JsonParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn next(&mut self) -> Option<u8> {
        let c = self.peek();
        self.i += 1;
        c
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> std::result::Result<(), String> {
        if self.next() == Some(c) {
            Ok(())
        } else {
            Err(format!("expected `{}` at byte {}", c as char, self.i - 1))
        }
    }
    fn string(&mut self) -> std::result::Result<String, String> {
        self.eat(b'"')?;
        let mut out: Vec<u8> = Vec::new();
        loop {
            match self.next() {
                None => return Err("unterminated string".into()),
                Some(b'"') => break,
                Some(b'\\') => match self.next() {
                    Some(b'n') => out.push(b'\n'),
                    Some(b't') => out.push(b'\t'),
                    Some(b'r') => out.push(b'\r'),
                    Some(b'b') => out.push(8),
                    Some(b'f') => out.push(12),
                    Some(b'u') => {
                        let hex = self.s.get(self.i..self.i + 4).ok_or("short \\u escape")?;
                        let code =
                            u32::from_str_radix(std::str::from_utf8(hex).map_err(|e| e.to_string())?, 16)
                                .map_err(|e| e.to_string())?;
                        self.i += 4;
                        let c = char::from_u32(code).unwrap_or('\u{fffd}');
                        out.extend_from_slice(c.to_string().as_bytes());
                    }
                    Some(c) => out.push(c), // \" \\ \/
                    None => return Err("unterminated escape".into()),
                },
                Some(c) => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|e| e.to_string())
    }
    fn value(&mut self) -> std::result::Result<Value, String> {
        match self.peek() {
            Some(b'"') => Ok(Value::Str(self.string()?)),
            Some(b'{' | b'[') => Err(format!("nested value at byte {} (only flat objects)", self.i)),
            _ => {
                let start = self.i;
                while matches!(self.peek(), Some(c) if !matches!(c, b',' | b'}' | b' ' | b'\t' | b'\n' | b'\r'))
                {
                    self.i += 1;
                }
                let word = std::str::from_utf8(&self.s[start..self.i]).map_err(|e| e.to_string())?;
                match word {
                    "null" => Ok(Value::Null),
                    "true" => Ok(Value::Bool(true)),
                    "false" => Ok(Value::Bool(false)),
                    // Python's json.dumps writes NaN / Infinity for non-finite floats.
                    "NaN" | "Infinity" | "-Infinity" => Ok(Value::Null),
                    w => w
                        .parse::<f64>()
                        .map(Value::Num)
                        .map_err(|_| format!("bad value `{w}` at byte {start}")),
                }
            }
        }
    }
}

/// A JSON object from key/value pairs (keys are plain identifiers).
fn json_object(fields: &[(&str, Value)]) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "\"{k}\": ");
        match v {
            Value::Num(n) if n.is_finite() => {
                let _ = write!(s, "{n}");
            }
            Value::Num(_) | Value::Null => s.push_str("null"),
            Value::Bool(b) => {
                let _ = write!(s, "{b}");
            }
            Value::Str(t) => json_string(&mut s, t),
        }
    }
    s.push('}');
    s
}

fn json_string(s: &mut String, t: &str) {
    s.push('"');
    for c in t.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

fn num(x: f64) -> Value {
    Value::Num(x)
}

fn opt_num(x: Option<f64>) -> Value {
    x.map_or(Value::Null, Value::Num)
}

fn row_json(r: &Row, o: &Options, peak: Option<&(f64, String)>, threads: usize) -> String {
    let c = &r.config;
    let mut f: Vec<(&str, Value)> = vec![
        ("bench", Value::Str("train_step".into())),
        ("config", Value::Str(c.name.into())),
        ("preset", Value::Str(c.preset.into())),
        ("batch_size", num(c.batch as f64)),
        ("device", Value::Str(o.device.clone())),
        ("steps", num(o.steps as f64)),
        ("threads", num(threads as f64)),
        ("candle_num_threads", r.candle_num_threads.clone().map_or(Value::Null, Value::Str)),
        ("img_per_s", num(r.ours.img_per_s)),
        ("step_s_median", num(r.ours.step_s_median)),
        ("step_s_min", num(r.ours.step_s_min)),
        ("step_s_max", num(r.ours.step_s_max)),
        ("forward_s", num(r.ours.forward_s)),
        ("backward_s", num(r.ours.backward_s)),
        ("optimizer_s", num(r.ours.optimizer_s)),
        ("peak_rss_mb", opt_num(r.ours.peak_rss_mb)),
        ("gflop_per_step", num(c.step_flops() / 1e9)),
        ("gflops", num(r.gflops())),
        ("matmul_peak_gflops", opt_num(peak.map(|p| p.0))),
    ];
    if let Some(t) = &r.torch {
        f.extend([
            ("torch_img_per_s", num(t.img_per_s)),
            ("torch_step_s_median", num(t.step_s_median)),
            ("torch_forward_s", num(t.forward_s)),
            ("torch_backward_s", num(t.backward_s)),
            ("torch_optimizer_s", num(t.optimizer_s)),
            ("torch_peak_rss_mb", opt_num(t.peak_rss_mb)),
            ("torch_step_s_min", num(t.step_s_min)),
            ("ratio", opt_num(r.ratio())),
            ("ratio_best", opt_num(r.ratio_best())),
        ]);
    }
    json_object(&f)
}

fn loader_json(l: &LoaderRow) -> String {
    json_object(&[
        ("bench", Value::Str("loader".into())),
        ("dataset", Value::Str(l.dataset.clone())),
        ("images_per_epoch", l.images.parse::<f64>().map_or(Value::Str(l.images.clone()), Value::Num)),
        ("output", Value::Str(l.output.clone())),
        ("workers", num(2.0)),
        ("img_per_s", num(l.img_per_s)),
    ])
}

// ---------------------------------------------------------------------------
// Tables and docs
// ---------------------------------------------------------------------------

fn fmt_mb(x: Option<f64>) -> String {
    x.map_or_else(|| "?".into(), |v| format!("{v:.0} MB"))
}

fn fmt_rate(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn fmt_s(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.1}")
    } else if x >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn split(r: &Run) -> String {
    format!("{} / {} / {}", fmt_s(r.forward_s), fmt_s(r.backward_s), fmt_s(r.optimizer_s))
}

fn markdown_table(rows: &[Row], peak: Option<&(f64, String)>) -> String {
    let torch = rows.iter().any(|r| r.torch.is_some());
    let mut s = String::new();
    s.push_str("| config | preset, batch | ours img/s | step s (median) | fwd / bwd / opt s | peak RSS MB | GFLOP/step | GFLOP/s");
    if peak.is_some() {
        s.push_str(" (% of matmul peak)");
    }
    if torch {
        s.push_str(
            " | torch img/s | torch step s | torch fwd / bwd / opt s | torch peak RSS MB | ours / torch \
             | ours / torch, fastest steps",
        );
    }
    s.push_str(" |\n|---|---|---:|---:|---:|---:|---:|---:");
    if torch {
        s.push_str("|---:|---:|---:|---:|---:|---:");
    }
    s.push_str("|\n");
    for r in rows {
        let c = &r.config;
        let gflops = match peak {
            Some((p, _)) => format!("{:.1} ({:.0}%)", r.gflops(), 100.0 * r.gflops() / p),
            None => format!("{:.1}", r.gflops()),
        };
        let _ = write!(
            s,
            "| {} | `{}`, {} | {} | {} | {} | {} | {:.1} | {gflops}",
            c.name,
            c.preset,
            c.batch,
            fmt_rate(r.ours.img_per_s),
            fmt_s(r.ours.step_s_median),
            split(&r.ours),
            r.ours.peak_rss_mb.map_or("?".into(), |v| format!("{v:.0}")),
            c.step_flops() / 1e9,
        );
        if torch {
            match &r.torch {
                Some(t) => {
                    let _ = write!(
                        s,
                        " | {} | {} | {} | {} | **{:.2}x** | {:.2}x",
                        fmt_rate(t.img_per_s),
                        fmt_s(t.step_s_median),
                        split(t),
                        t.peak_rss_mb.map_or("?".into(), |v| format!("{v:.0}")),
                        r.ratio().unwrap_or(f64::NAN),
                        r.ratio_best().unwrap_or(f64::NAN)
                    );
                }
                None => s.push_str(" | | | | | |"),
            }
        }
        s.push_str(" |\n");
    }
    s
}

fn loader_table(rows: &[LoaderRow]) -> String {
    let mut s = String::from("| dataset | images / epoch | output | images/s |\n|---|---:|---|---:|\n");
    for l in rows {
        let _ = writeln!(s, "| {} | {} | {} | {:.0} |", l.dataset, l.images, l.output, l.img_per_s);
    }
    s
}

struct DocsInput<'a> {
    o: &'a Options,
    rows: &'a [Row],
    peak: Option<&'a (f64, String)>,
    loader: &'a [LoaderRow],
    loader_note: &'a str,
    machine: &'a str,
    date: &'a str,
    load_start: &'a str,
    load_end: &'a str,
    threads: usize,
    torch_version: Option<String>,
}

/// The command as a user would type it: `--python PATH` becomes
/// `--setup-torch` (the pinned environment), `--write-docs` is left out.
fn user_command(o: &Options) -> String {
    let mut s = String::from("cargo xtask bench");
    let all = o.configs.len() == CONFIGS.len();
    let names: Vec<&str> = o.configs.iter().map(|c| c.name).collect();
    let _ = write!(s, " --config {}", if all { "all".into() } else { names.join(",") });
    if o.steps != DEFAULT_STEPS {
        let _ = write!(s, " --steps {}", o.steps);
    }
    if o.device != "cpu" {
        let _ = write!(s, " --device {}", o.device);
    }
    if o.compare_torch {
        s.push_str(" --compare-torch --setup-torch");
    }
    if !o.loader {
        s.push_str(" --no-loader");
    }
    s
}

/// The command exactly as it ran (minus nothing).
fn exact_command() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("cargo xtask {}", args.join(" "))
}

fn docs_section(d: &DocsInput) -> String {
    let o = d.o;
    let mut s = String::new();
    let _ = writeln!(s, "{BEGIN}\n");
    let _ = writeln!(
        s,
        "Full training steps (forward + masked MSE loss, backward, AdamW), f32, {} timed step{} after \
         2 warm-up steps per configuration; img/s is the batch over the median step.\n",
        o.steps,
        if o.steps == 1 { "" } else { "s" }
    );
    let _ = writeln!(s, "```sh\n{}\n```\n", user_command(o));
    let _ = writeln!(s, "- Ran as: `{}`", exact_command());
    let _ = writeln!(s, "- Machine: {}", d.machine);
    let _ = writeln!(s, "- Date: {}", d.date);
    let _ =
        writeln!(s, "- Load average (1, 5, 15 min) at start: {}; at the end: {}", d.load_start, d.load_end);
    let ctn = d.rows.iter().find_map(|r| r.candle_num_threads.clone()).unwrap_or_else(|| "unset".into());
    let _ = writeln!(
        s,
        "- Ours: `target/release/mae bench` (mimalloc, `CANDLE_NUM_THREADS={ctn}`, gemm on {} threads)",
        d.threads
    );
    if o.compare_torch {
        let _ = writeln!(
            s,
            "- torch: `{SCRIPT}` (torch {}, timm `VisionTransformer` + lightly `MaskedVisionTransformerTIMM` / \
             `MAEDecoderTIMM`, `torch.set_num_threads({})`)",
            d.torch_version.as_deref().unwrap_or("?"),
            d.threads
        );
    }
    s.push('\n');
    for c in &o.configs {
        let _ = writeln!(
            s,
            "- {}: {}; L = {}, K = {} visible; {:.1} GFLOP per step (analytic)",
            c.name,
            c.describe(),
            c.patches(),
            c.kept(),
            c.step_flops() / 1e9
        );
    }
    s.push('\n');
    s.push_str(&markdown_table(d.rows, d.peak));
    s.push('\n');
    if let Some((g, blas)) = d.peak {
        let _ = writeln!(
            s,
            "Matmul peak: {g:.1} GFLOP/s, `torch.matmul` of {MATMUL_SIZE}x{MATMUL_SIZE} f32 ({blas}, {} threads, \
             best of 10). GFLOP/s counts only matmuls and attention products (2 per multiply-add, backward \
             = 2x forward).\n",
            d.threads
        );
    }
    if !d.loader.is_empty() {
        let _ = writeln!(
            s,
            "Data loader in the same run (`cargo run --release -p mae-data --example loader_bench -- --workers 2`, \
             median of 3 epochs):\n"
        );
        s.push_str(&loader_table(d.loader));
        s.push('\n');
    } else if !d.loader_note.is_empty() {
        let _ = writeln!(s, "Data loader: {}\n", d.loader_note);
    }
    let _ = writeln!(s, "{END}");
    s
}

/// Replace the generated block of the `## Training step` section (between
/// the BEGIN/END markers), keeping the hand-written text around it; without
/// markers the whole section is replaced; without the section, it is added
/// before `## CUDA build` or at the end.
fn replace_section(doc: &str, generated: &str) -> String {
    let lines: Vec<&str> = doc.lines().collect();
    let start = lines.iter().position(|l| l.trim_end() == SECTION);
    let Some(start) = start else {
        let new = format!("{SECTION}\n\n{generated}");
        return match doc.find("\n## CUDA build") {
            Some(i) => format!("{}\n\n{new}\n{}", doc[..i].trim_end(), &doc[i + 1..]),
            None => format!("{}\n\n{new}", doc.trim_end()),
        };
    };
    let end =
        lines[start + 1..].iter().position(|l| l.starts_with("## ")).map_or(lines.len(), |i| start + 1 + i);
    let body = &lines[start + 1..end];
    let b = body.iter().position(|l| l.trim() == BEGIN);
    let e = body.iter().position(|l| l.trim() == END);
    let mut out: Vec<String> = lines[..=start].iter().map(|l| l.to_string()).collect();
    match (b, e) {
        (Some(b), Some(e)) if b < e => {
            out.extend(body[..b].iter().map(|l| l.to_string()));
            out.extend(generated.trim_end().lines().map(String::from));
            out.extend(body[e + 1..].iter().map(|l| l.to_string()));
        }
        _ => {
            out.push(String::new());
            out.extend(generated.trim_end().lines().map(String::from));
            out.push(String::new());
        }
    }
    out.extend(lines[end..].iter().map(|l| l.to_string()));
    let mut text = out.join("\n");
    text.push('\n');
    text
}

// ---------------------------------------------------------------------------
// The machine
// ---------------------------------------------------------------------------

fn loadavg() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    let f: Vec<&str> = s.split_whitespace().take(3).collect();
    (f.len() == 3).then(|| f.join(" "))
}

fn machine(device: &str, threads: usize) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim()))
        .unwrap_or(std::env::consts::ARCH)
        .to_string();
    let flags = cpuinfo.lines().find_map(|l| l.strip_prefix("flags")).unwrap_or("");
    let simd = if flags.split_whitespace().any(|f| f == "avx512f") {
        ", AVX-512"
    } else if flags.split_whitespace().any(|f| f == "avx2") {
        ", AVX2"
    } else {
        ""
    };
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or_else(String::new, |kb| format!(", {:.0} GiB RAM", kb / 1024.0 / 1024.0));
    let mut s =
        format!("{model}{simd}, {threads} cores{mem}, {} {}", std::env::consts::OS, std::env::consts::ARCH);
    if device == "cuda" {
        if let Ok(out) = Command::new("nvidia-smi")
            .args(["--query-gpu=name,memory.total", "--format=csv,noheader"])
            .output()
        {
            if let Some(gpu) = String::from_utf8_lossy(&out.stdout).lines().next() {
                let _ = write!(s, "; GPU: {}", gpu.trim());
            }
        }
    }
    s
}

/// Now, as `YYYY-MM-DD HH:MM UTC`.
fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format_utc(secs)
}

fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_json_round_trip() {
        let line = r#"{"preset":"mae-vit-tiny-patch4-32","batch_size":64,"step_s_median":0.5,"x":1e-3,"n":null,"b":true,"s":"a\"b\u00e9"}"#;
        let obj = parse_flat_json(line).unwrap();
        assert_eq!(get(&obj, "preset"), Some(&Value::Str("mae-vit-tiny-patch4-32".into())));
        assert_eq!(get(&obj, "batch_size").and_then(Value::as_f64), Some(64.0));
        assert_eq!(get(&obj, "x").and_then(Value::as_f64), Some(1e-3));
        assert_eq!(get(&obj, "n"), Some(&Value::Null));
        assert_eq!(get(&obj, "b"), Some(&Value::Bool(true)));
        assert_eq!(get(&obj, "s").and_then(Value::as_str), Some("a\"bé"));
        let py = r#"{"a": 1.5, "b": NaN, "c": "x"}"#; // Python's json.dumps spacing
        let obj = parse_flat_json(py).unwrap();
        assert_eq!(get(&obj, "a").and_then(Value::as_f64), Some(1.5));
        assert_eq!(get(&obj, "b"), Some(&Value::Null));
        let back =
            json_object(&[("a", Value::Num(1.5)), ("s", Value::Str("q\"".into())), ("n", Value::Null)]);
        assert_eq!(back, r#"{"a": 1.5, "s": "q\"", "n": null}"#);
        assert_eq!(parse_flat_json(&back).unwrap().len(), 3);
        assert!(parse_flat_json(r#"{"a": [1]}"#).is_err());
        assert!(parse_flat_json(r#"{"a": 1"#).is_err());
        assert!(parse_flat_json(r#"{"a": 1} x"#).is_err());
        assert_eq!(parse_flat_json("{}").unwrap().len(), 0);
    }

    #[test]
    fn configs_parse() {
        let all = parse_configs("all").unwrap();
        assert_eq!(all.iter().map(|c| c.name).collect::<Vec<_>>(), ["A", "B", "C"]);
        let ac = parse_configs("a,C,A").unwrap();
        assert_eq!(ac.iter().map(|c| c.name).collect::<Vec<_>>(), ["A", "C"]);
        assert!(parse_configs("D").is_err());
        let o =
            parse(vec!["--config".into(), "B".into(), "--steps=2".into(), "--json".into()]).unwrap().unwrap();
        assert_eq!((o.configs.len(), o.steps, o.json), (1, 2, true));
        assert!(parse(vec!["--steps".into(), "0".into()]).is_err());
        assert!(parse(vec!["--device".into(), "tpu".into()]).is_err());
        assert!(parse(vec!["--bogus".into()]).is_err());
    }

    #[test]
    fn flops_by_hand() {
        // Config A: L = 64, K = 16; encoder on 17 tokens, decoder on 65.
        let a = CONFIGS[0];
        assert_eq!((a.patches(), a.kept()), (64, 16));
        let block = |n: f64, d: f64| 24.0 * n * d * d + 4.0 * n * n * d;
        let fwd = 2.0 * 64.0 * 48.0 * 192.0
            + 12.0 * block(17.0, 192.0)
            + 2.0 * 17.0 * 192.0 * 128.0
            + 4.0 * block(65.0, 128.0)
            + 2.0 * 64.0 * 128.0 * 48.0;
        assert!((a.step_flops() - 3.0 * 64.0 * fwd).abs() < 1.0);
        // B: 49 patches, 12 visible (int(12.25)); C: 196 patches, 49 visible.
        assert_eq!((CONFIGS[1].patches(), CONFIGS[1].kept()), (49, 12));
        assert_eq!((CONFIGS[2].patches(), CONFIGS[2].kept()), (196, 49));
    }

    #[test]
    fn loader_rows() {
        let out = "workers 2, batch 32, median of 3 epochs\n| dataset | images/epoch | output | images/s |\n\
                   | --- | ---: | --- | ---: |\n| photos (PNG/JPEG, 300-1000 px) | 320 | 3x224x224 | 669 |\n\
                   | MNIST IDX (28 px) | 4992 | 3x32x32 | 196683 |\n";
        let rows = parse_loader_table(out);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].output, "3x224x224");
        assert_eq!(rows[1].img_per_s, 196683.0);
    }

    #[test]
    fn docs_section_replacement() {
        let doc = "# Benchmarks\n\n## Data loader\n\nloader text\n";
        let gen = format!("{BEGIN}\n\ntable v1\n\n{END}\n");
        let once = replace_section(doc, &gen);
        assert!(once.starts_with("# Benchmarks\n\n## Data loader\n\nloader text\n\n## Training step\n\n<!--"));
        // Hand-written text after the block and the next section survive a rerun.
        let edited = format!("{}analysis\n\n## CUDA build\n\ncuda text\n", once);
        let gen2 = format!("{BEGIN}\n\ntable v2\n\n{END}\n");
        let twice = replace_section(&edited, &gen2);
        assert!(twice.contains("table v2") && !twice.contains("table v1"));
        assert!(twice.contains("analysis\n\n## CUDA build\n\ncuda text\n"));
        assert!(twice.contains("loader text"));
        // Without the section but with a CUDA section, it goes before it.
        let doc = "# B\n\n## Data loader\n\nx\n\n## CUDA build\n\ny\n";
        let out = replace_section(doc, &gen);
        let (t, c) = (out.find("## Training step").unwrap(), out.find("## CUDA build").unwrap());
        assert!(t < c, "{out}");
        // A section without markers is replaced as a whole.
        let doc = "# B\n\n## Training step\n\nold\n\n## CUDA build\n\ny\n";
        let out = replace_section(doc, &gen);
        assert!(
            !out.contains("old") && out.contains("table v1") && out.contains("## CUDA build\n\ny\n"),
            "{out}"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn runs_a_process_and_reads_its_json() {
        let mut ok = Command::new("sh");
        ok.args(["-c", "echo progress; echo '{\"img_per_s\": 2.5}'"]);
        let (obj, rss) = run_json(&mut ok, "sh").unwrap();
        assert_eq!(get(&obj, "img_per_s").and_then(Value::as_f64), Some(2.5));
        assert!(rss.is_none_or(|mb| mb > 0.0));
        let mut failing = Command::new("sh");
        failing.args(["-c", "echo partial; exit 3"]);
        assert!(matches!(run_json(&mut failing, "sh"), Err(Error::Exit(1))));
        let mut silent = Command::new("true");
        assert!(matches!(run_json(&mut silent, "true"), Err(Error::Failed(m)) if m.contains("no JSON")));
    }

    #[test]
    fn dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_utc(951_782_400 + 3_600 * 13 + 60 * 5), "2000-02-29 13:05 UTC");
        assert_eq!(format_utc(1_798_675_200), "2026-12-31 00:00 UTC");
    }

    #[test]
    fn user_command_hides_local_paths() {
        let o = parse(vec![
            "--config".into(),
            "all".into(),
            "--compare-torch".into(),
            "--python".into(),
            "/x/bin/python".into(),
            "--steps".into(),
            "5".into(),
            "--write-docs".into(),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(user_command(&o), "cargo xtask bench --config all --compare-torch --setup-torch");
    }
}
