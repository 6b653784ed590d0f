//! The fuzz smoke test of the normal `cargo test`: every target for a bounded number of cases
//! from a fixed seed, every saved regression input replayed, and the harness's own checks.
//! Long runs: `cargo run --release -p mae-fuzz -- --target all --seconds 120` (docs/robustness.md).

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use mae_fuzz::{run_target, Budget, CountingAlloc, FailureKind, Harness, RunStats};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Cases per target: the seeds as they are, then mutations (the whole file takes well under a
/// minute in the test profile on two cores).
const CASES: u64 = 4000;
const SEED: u64 = 0x5EED_2024;
const TIMEOUT: Duration = Duration::from_secs(10);

/// Regression inputs that still fail, each replayed by an `#[ignore]`d test below until fixed.
const KNOWN_OPEN: &[&str] = &[];

/// The allocation counters are process-wide: one target at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn harness() -> Harness {
    Harness::new(TIMEOUT).expect("the counting allocator is installed")
}

fn summary(name: &str, stats: &RunStats) -> String {
    format!(
        "{name}: {} cases in {:.1} s, {} failures, peak/input at most {:.1} (input {} B, peak {} B), largest peak {} B, \
         at most {:.0}% of the limit",
        stats.cases,
        stats.elapsed.as_secs_f64(),
        stats.failures.len(),
        stats.max_ratio,
        stats.max_ratio_len,
        stats.max_ratio_peak,
        stats.max_peak,
        100.0 * stats.max_limit_use
    )
}

/// Runs `name` for [`CASES`] cases; fails on any failure that `tolerated` does not accept,
/// saving its input under the temp folder and naming it.
fn smoke(name: &str, tolerated: fn(&FailureKind) -> bool) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let target = mae_fuzz::target(name).expect("a registered target");
    assert!((target.seeds)().len() >= 2, "{name}: its seed files are missing");
    let stats = run_target(&harness(), target, SEED, Budget::Cases(CASES), |_| {}, |_| {});
    eprintln!("{}", summary(name, &stats));
    let save_dir = std::env::temp_dir().join("mae-fuzz-smoke");
    let failures: Vec<String> = stats
        .failures
        .iter()
        .filter(|f| !tolerated(&f.kind))
        .map(|f| {
            let saved = f.save(&save_dir).map(|p| p.display().to_string()).unwrap_or_default();
            format!("case {} ({} bytes, saved to {saved}): {}", f.case, f.input.len(), f.kind)
        })
        .collect();
    assert!(failures.is_empty(), "{name}: {} failing cases\n{}", failures.len(), failures.join("\n\n"));
    assert_eq!(stats.cases, CASES);
}

fn none(_: &FailureKind) -> bool {
    false
}

#[test]
fn safetensors() {
    smoke("safetensors", none);
}

#[test]
fn torch() {
    smoke("torch", none);
}

#[test]
fn config_json() {
    smoke("config-json", none);
}

#[test]
fn idx() {
    smoke("idx", none);
}

#[test]
fn cifar() {
    smoke("cifar", none);
}

#[test]
fn image() {
    smoke("image", none);
}

#[test]
fn data_spec() {
    smoke("data-spec", none);
}

#[test]
fn parquet() {
    smoke("parquet", none);
}

#[test]
fn toml_config() {
    smoke("toml-config", none);
}

#[test]
fn cli() {
    smoke("cli", none);
}

/// Mutations of seeds the readers refuse would explore only their first checks: the resolved
/// configs of pretrain, linear-probe and finetune runs are read back as runs' configs.
#[test]
fn toml_config_seeds_are_valid_run_configs() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = (mae_fuzz::target("toml-config").unwrap().seeds)();
    let resolved: Vec<_> = seeds.iter().filter(|s| s.name.starts_with("config.toml of")).collect();
    assert_eq!(resolved.len(), 4, "{:?}", seeds.iter().map(|s| &s.name).collect::<Vec<_>>());
    for seed in resolved {
        std::fs::write(dir.path().join("config.toml"), &seed.bytes).unwrap();
        mae_cli::check::run_config(dir.path()).unwrap_or_else(|e| panic!("{}: {e:#}", seed.name));
    }
}

fn replay(target: &str, path: &Path) -> Result<(), String> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let target_ref =
        mae_fuzz::target(target).ok_or_else(|| format!("{}: no target `{target}`", path.display()))?;
    let input = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    harness().run_case(target_ref, &input).map(|_| ()).map_err(|kind| format!("{}: {kind}", path.display()))
}

/// Every saved input under crates/mae-fuzz/regressions/ passes, except the known open ones.
#[test]
fn regressions() {
    let root = mae_fuzz::regressions_dir();
    let mut failures = Vec::new();
    for (target, path) in mae_fuzz::harness::regression_files(&root) {
        let relative = path.strip_prefix(&root).unwrap_or(&path).to_string_lossy().replace('\\', "/");
        if KNOWN_OPEN.contains(&relative.as_str()) {
            continue;
        }
        if let Err(e) = replay(&target, &path) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn replay_known(relative: &str) {
    let (target, _) = relative.split_once('/').expect("target/file");
    if let Err(e) = replay(target, &mae_fuzz::regressions_dir().join(relative)) {
        panic!("{e}");
    }
}

/// Fixed (vendor/candle-core/PATCHED.md), replayed by `every_saved_regression_passes` too,
/// named here so a failure says what broke: a BINUNICODE string declaring 16 MiB in a 178 KB
/// `.pth` (candle allocated the declared length first), and tuples too short for
/// `rebuild_args` (`Vec::remove` panicked: "removal index (is 4) should be < len (is 4)").
#[test]
fn torch_pickle_regressions() {
    for input in ["torch/2c5b699b528627c7.bin", "torch/3857500f7e4d5186.bin", "torch/b92ab077256cbf78.bin"] {
        replay_known(input);
    }
}

/// Fixed (`EvalTransform` cuts images over 16:1 to their middle before the resize): a 905-byte
/// PNG of 65536x2 pixels made the resize allocate ~150 MB (1,179,648x36 pixels).
#[test]
fn image_eval_transform_extreme_aspect() {
    replay_known("image/cbd18e5a7664c62c.bin");
}

/// Fixed (`decode_image` refuses a TIFF tag holding more than 1 MiB of values): a 4,818-byte
/// mutated TIFF whose RowsPerStrip declared 7.8 million values made the tiff decoder allocate
/// 238 MiB past the 32 MiB `max_alloc`.
#[test]
fn image_tiff_tag_count() {
    replay_known("image/90314a72b0404dc7.bin");
}
