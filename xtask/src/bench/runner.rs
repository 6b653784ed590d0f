//! Running the benchmark's processes: building `mae`, reading its presets,
//! `mae bench` (its JSON line and peak RSS), the loader benchmark.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::configs::Config;
use super::json::{self, get, Object, Value};
use super::measure::Run;
use super::report;
use super::Ctx;
use crate::build_cmd::run_cuda_cargo;
use crate::toolkit;
use crate::util::{self, fail, Error, Log, Result};

/// `cargo build --release -p mae-cli` (with CUDA: `--features mae-cli/cuda`
/// and the toolkit's environment); returns the binary.
pub fn build_mae(root: &Path, build_env: &[(&'static str, OsString)], cuda: bool) -> Result<PathBuf> {
    Log::Stderr.step("build the `mae` binary (release)");
    let mut cmd = util::cargo_cmd(root);
    toolkit::apply_env(&mut cmd, build_env);
    cmd.args(["build", "--release", "-p", "mae-cli"]);
    if cuda {
        cmd.args(["--features", "mae-cli/cuda"]);
    }
    cmd.stdout(Stdio::null()); // cargo reports on stderr; keep stdout for results
    if cuda {
        Log::Stderr.command(&cmd);
        run_cuda_cargo("build", &mut cmd)?;
    } else {
        util::run_logged(Log::Stderr, "build", &mut cmd)?;
    }
    let mae_bin = util::target_dir(root).join("release").join(if cfg!(windows) { "mae.exe" } else { "mae" });
    if !mae_bin.is_file() {
        return fail(format!("the build finished but {} does not exist", mae_bin.display()));
    }
    Ok(mae_bin)
}

/// `mae info --presets --json`: preset name -> its full config.
pub fn read_presets(root: &Path, mae_bin: &Path, run_env: &[(&'static str, OsString)]) -> Result<Object> {
    let mut cmd = Command::new(mae_bin);
    toolkit::apply_env(&mut cmd, run_env);
    cmd.current_dir(root).args(["info", "--presets", "--json"]);
    Log::Stderr.command(&cmd);
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| Error::Failed(format!("could not run {}: {e}", mae_bin.display())))?;
    if !out.status.success() {
        return fail(format!(
            "`{}` failed ({}): the model shapes of the presets come from it",
            util::display(&cmd),
            util::describe(out.status)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    json::parse_object(text.trim())
        .map_err(|e| Error::Failed(format!("`{}` printed bad JSON ({e})", util::display(&cmd))))
}

/// One `mae bench` of config `c`: what it measured and its
/// `candle_num_threads`.
pub fn run_ours(ctx: &Ctx, c: &Config) -> Result<(Run, Option<String>)> {
    let o = &ctx.o;
    let mut cmd = Command::new(&ctx.mae_bin);
    toolkit::apply_env(&mut cmd, &ctx.run_env);
    cmd.current_dir(&ctx.root).args(["bench", "--preset", c.preset]);
    cmd.args(["--batch-size", &c.batch.to_string(), "--steps", &o.steps.to_string()]);
    cmd.args(["--device", &o.device, "--dtype", &o.dtype, "--json"]);
    let (obj, rss) = run_json(&mut cmd, "mae bench")?;
    let mut ours = Run::from_json(&obj, "mae bench")?;
    ours.peak_rss_mb = rss;
    let candle_num_threads = get(&obj, "candle_num_threads").and_then(Value::as_str).map(String::from);
    report::print_run("ours:", &ours);
    Ok((ours, candle_num_threads))
}

/// Run `cmd` (stderr inherited), polling its peak RSS (`VmHWM`) while it
/// runs, and parse the last line of its stdout that is a JSON object.
pub fn run_json(cmd: &mut Command, what: &str) -> Result<(Object, Option<f64>)> {
    Log::Stderr.command(cmd);
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
    let obj =
        json::parse_object(line).map_err(|e| Error::Failed(format!("{what}: bad JSON ({e}): {line}")))?;
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

/// A row of loader_bench's table.
pub struct LoaderRow {
    pub dataset: String,
    pub images: String,
    pub output: String,
    pub img_per_s: f64,
}

/// Run the loader benchmark once and read its Markdown table.
pub fn run_loader(root: &Path) -> Result<Vec<LoaderRow>> {
    let mut cmd = util::cargo_cmd(root);
    cmd.args(["run", "--release", "-p", "mae-data", "--example", "loader_bench", "--", "--workers", "2"]);
    Log::Stderr.command(&cmd);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
