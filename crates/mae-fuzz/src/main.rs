//! `mae-fuzz`: long fuzzing runs.
//!
//! ```text
//! cargo run --release -p mae-fuzz -- [--target T|all] [--seconds N | --cases N] [--seed S]
//!     [--save-dir DIR] [--timeout SECS] [--list] [--replay FILE]
//! ```
//!
//! Each target runs in a child process of this binary, so that a case which aborts the process
//! (a refused allocation, a stack overflow) is still reported: the child records the index of
//! the case it runs, and the parent regenerates that input and saves it. Failing inputs go to
//! `crates/mae-fuzz/regressions/<target>/<hash>.bin` (or `--save-dir`); the exit status is 1
//! when any case failed.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use mae_fuzz::{run_target, Budget, Failure, Harness, RunStats, Target};

#[global_allocator]
static ALLOC: mae_fuzz::CountingAlloc = mae_fuzz::CountingAlloc;

const USAGE: &str = "usage: mae-fuzz [--target T|all] [--seconds N | --cases N] [--seed S] [--save-dir DIR] \
                     [--timeout SECS] [--list] [--replay FILE]";

#[derive(Debug, Clone)]
struct Args {
    target: String,
    budget: Budget,
    seed: u64,
    save_dir: PathBuf,
    timeout: Duration,
    list: bool,
    replay: Option<PathBuf>,
    /// Internal: run one target in this process, recording progress in this file.
    child: Option<PathBuf>,
}

fn parse_args(mut raw: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        target: "all".into(),
        budget: Budget::Time(Duration::from_secs(60)),
        seed: 0,
        save_dir: mae_fuzz::regressions_dir(),
        timeout: Duration::from_secs(10),
        list: false,
        replay: None,
        child: None,
    };
    while let Some(flag) = raw.next() {
        let mut value = || raw.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| v.parse::<u64>().map_err(|_| format!("{flag}: `{v}` is not a number"));
        match flag.as_str() {
            "--target" => args.target = value()?,
            "--seconds" => args.budget = Budget::Time(Duration::from_secs(number(value()?)?)),
            "--cases" => args.budget = Budget::Cases(number(value()?)?),
            "--seed" => args.seed = number(value()?)?,
            "--save-dir" => args.save_dir = PathBuf::from(value()?),
            "--timeout" => args.timeout = Duration::from_secs(number(value()?)?.max(1)),
            "--replay" => args.replay = Some(PathBuf::from(value()?)),
            "--child" => args.child = Some(PathBuf::from(value()?)),
            "--list" => args.list = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    Ok(args)
}

fn targets(name: &str) -> Result<Vec<&'static Target>, String> {
    if name == "all" {
        return Ok(mae_fuzz::TARGETS.iter().collect());
    }
    let names: Vec<&str> = mae_fuzz::TARGETS.iter().map(|t| t.name).collect();
    mae_fuzz::target(name)
        .map(|t| vec![t])
        .ok_or_else(|| format!("unknown target `{name}` (one of: all, {})", names.join(", ")))
}

fn bytes(n: usize) -> String {
    match n {
        n if n >= 10 << 20 => format!("{} MiB", n >> 20),
        n if n >= 10 << 10 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

fn summary(target: &Target, stats: &RunStats) -> String {
    let secs = stats.elapsed.as_secs_f64();
    format!(
        "{}: {} cases in {secs:.1} s ({:.1} cases/s), {} failures; peak/input at most {:.1} (input {}, peak {}, \
         inputs >= 4 KiB), largest peak {}, at most {:.0}% of the limit ({} + {}x input), slowest case {} ms",
        target.name,
        stats.cases,
        stats.cases as f64 / secs.max(1e-9),
        stats.failures.len(),
        stats.max_ratio,
        bytes(stats.max_ratio_len),
        bytes(stats.max_ratio_peak),
        bytes(stats.max_peak),
        100.0 * stats.max_limit_use,
        bytes(target.alloc_base),
        target.alloc_factor,
        stats.slowest.as_millis(),
    )
}

fn report(failure: &Failure, save_dir: &Path) {
    let saved = match failure.save(save_dir) {
        Ok(path) => path.display().to_string(),
        Err(e) => format!("(not saved: {e})"),
    };
    eprintln!(
        "FAIL {} case {} ({} bytes) -> {saved}\n{}",
        failure.target,
        failure.case,
        failure.input.len(),
        failure.kind
    );
}

/// The child: one target in this process. Exit status 0: no failure; 1: failures (saved).
fn run_child(args: &Args, progress_file: &Path) -> Result<ExitCode, String> {
    let target = *targets(&args.target)?.first().ok_or("no target")?;
    let harness = Harness::new(args.timeout).map_err(|e| e.to_string())?;
    let progress = std::fs::File::create(progress_file).map_err(|e| e.to_string())?;
    let mut signatures = std::collections::HashMap::<String, usize>::new();
    let stats = run_target(
        &harness,
        target,
        args.seed,
        args.budget,
        |index| {
            let _ = progress.write_all_at(&index.to_le_bytes(), 0);
        },
        |failure| {
            // The first three inputs of each distinct failure are saved; the rest only counted.
            let seen = signatures.entry(failure.kind.signature()).or_default();
            *seen += 1;
            if *seen <= 3 {
                report(failure, &args.save_dir);
            }
        },
    );
    println!("{}", summary(target, &stats));
    let timed_out = stats.failures.iter().any(|f| matches!(f.kind, mae_fuzz::FailureKind::Timeout(_)));
    if timed_out {
        // The stuck worker cannot be stopped; leave without waiting for it.
        std::process::exit(1);
    }
    Ok(if stats.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The parent: each target in a child process; a child that dies (abort, signal) has its last
/// case regenerated and saved.
fn run_parent(args: &Args) -> Result<ExitCode, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut failed = false;
    for target in targets(&args.target)? {
        let progress =
            std::env::temp_dir().join(format!("mae-fuzz-{}-{}.progress", std::process::id(), target.name));
        let mut command = Command::new(&exe);
        command.args(["--target", target.name, "--seed", &args.seed.to_string()]);
        command.arg("--timeout").arg(args.timeout.as_secs().to_string());
        command.arg("--save-dir").arg(&args.save_dir).arg("--child").arg(&progress);
        match args.budget {
            Budget::Time(t) => command.args(["--seconds", &t.as_secs().to_string()]),
            Budget::Cases(n) => command.args(["--cases", &n.to_string()]),
        };
        let status = command.status().map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        match status.code() {
            Some(0) => {}
            Some(1) => failed = true,
            _ => {
                failed = true;
                crashed(target, args, &progress, &status.to_string());
            }
        }
        let _ = std::fs::remove_file(&progress);
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn crashed(target: &'static Target, args: &Args, progress: &Path, status: &str) {
    let index = std::fs::read(progress)
        .ok()
        .and_then(|b| b.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))));
    let Some(index) = index else {
        eprintln!("FAIL {}: the child process died ({status}) before its first case", target.name);
        return;
    };
    let input = mae_fuzz::case_input(target, &(target.seeds)(), args.seed, index);
    let kind = mae_fuzz::FailureKind::Check(format!("the process died ({status}): see its output above"));
    report(&Failure { target: target.name, case: index, kind, input }, &args.save_dir);
}

fn replay(args: &Args, file: &Path) -> Result<ExitCode, String> {
    // `--target all` (the default): the target is the file's folder (`regressions/<target>/`).
    let from_folder = file.parent().and_then(Path::file_name).and_then(|n| n.to_str()).unwrap_or("");
    let name = if args.target == "all" { from_folder } else { args.target.as_str() };
    let target = *targets(name)?.first().ok_or("no target")?;
    let input = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let harness = Harness::new(args.timeout).map_err(|e| e.to_string())?;
    match harness.run_case(target, &input) {
        Ok(stats) => {
            println!(
                "{}: passes ({} bytes, peak {}, {:?})",
                file.display(),
                input.len(),
                bytes(stats.peak),
                stats.elapsed
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(kind) => {
            println!("{}: FAILS ({} bytes)\n{kind}", file.display(), input.len());
            Ok(ExitCode::from(1))
        }
    }
}

fn main() -> ExitCode {
    let result = parse_args(std::env::args().skip(1)).and_then(|args| {
        if args.list {
            for t in mae_fuzz::TARGETS {
                println!("{:12} {} seeds; {}", t.name, (t.seeds)().len(), t.about);
            }
            return Ok(ExitCode::SUCCESS);
        }
        match (&args.replay, &args.child) {
            (Some(file), _) => replay(&args, file),
            (None, Some(progress)) => run_child(&args, progress),
            (None, None) => run_parent(&args),
        }
    });
    result.unwrap_or_else(|message| {
        eprintln!("{message}");
        ExitCode::from(2)
    })
}
