//! `--write-docs`: the generated block of docs/benchmarks.md's
//! `## Training step` section, with the machine, the date and the load.

use std::fmt::Write as _;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use super::configs::CHOICES;
use super::report::{loader_table, markdown_table, rounds_note};
use super::torch::SCRIPT;
use super::{Ctx, Options, Results, DEFAULT_STEPS, MATMUL_SIZE};
use crate::util::{Error, Result};

const DOCS: &str = "docs/benchmarks.md";
const SECTION: &str = "## Training step";
const BEGIN: &str = "<!-- cargo xtask bench --write-docs: begin (generated, replaced on every run) -->";
const END: &str = "<!-- cargo xtask bench --write-docs: end -->";

/// Replace the generated block of docs/benchmarks.md with this run's.
pub fn write(ctx: &Ctx, res: &Results, date: &str) -> Result<()> {
    let section = section(ctx, res, &machine(&ctx.o.device, ctx.threads), date);
    let path = ctx.root.join(DOCS);
    let old = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
    std::fs::write(&path, replace_section(&old, &section))
        .map_err(|e| Error::Failed(format!("cannot write {DOCS}: {e}")))?;
    eprintln!("bench: wrote the `{SECTION}` table into {DOCS}");
    Ok(())
}

/// The command as a user would type it: `--python PATH` becomes
/// `--setup-torch` (the pinned environment), `--write-docs` is left out.
fn user_command(o: &Options) -> String {
    let mut s = String::from("cargo xtask bench");
    let all = o.choices.len() == CHOICES.len();
    let names: Vec<&str> = o.choices.iter().map(|c| c.name).collect();
    let _ = write!(s, " --config {}", if all { "all".into() } else { names.join(",") });
    if o.steps != DEFAULT_STEPS {
        let _ = write!(s, " --steps {}", o.steps);
    }
    if o.rounds != 1 {
        let _ = write!(s, " --rounds {}", o.rounds);
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

fn section(ctx: &Ctx, res: &Results, machine: &str, date: &str) -> String {
    let o = &ctx.o;
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
    header(&mut s, ctx, res, machine, date);
    for c in &ctx.configs {
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
    s.push_str(&markdown_table(&res.rows, res.peak.as_ref()));
    s.push('\n');
    if o.rounds > 1 {
        rounds(&mut s, res);
    }
    footer(&mut s, ctx, res);
    let _ = writeln!(s, "{END}");
    s
}

/// How it ran: command, machine, date, load, the two implementations.
fn header(s: &mut String, ctx: &Ctx, res: &Results, machine: &str, date: &str) {
    let _ = writeln!(s, "- Ran as: `{}`", exact_command());
    let _ = writeln!(s, "- Machine: {machine}");
    let _ = writeln!(s, "- Date: {date}");
    let _ = writeln!(
        s,
        "- Load average (1, 5, 15 min) at start: {}; at the end: {}",
        res.load_start.as_deref().unwrap_or("?"),
        res.load_end.as_deref().unwrap_or("?")
    );
    let ctn = res.rows.iter().find_map(|r| r.candle_num_threads.clone()).unwrap_or_else(|| "unset".into());
    let _ = writeln!(
        s,
        "- Ours: `target/release/mae bench` (mimalloc, `CANDLE_NUM_THREADS={ctn}`, gemm on {} threads)",
        ctx.threads
    );
    if ctx.o.compare_torch {
        let torch_version = ctx.python.as_ref().and_then(|p| p.torch.as_deref());
        let _ = writeln!(
            s,
            "- torch: `{SCRIPT}` (torch {}, timm `VisionTransformer` + lightly `MaskedVisionTransformerTIMM` / \
             `MAEDecoderTIMM`, `torch.set_num_threads({})`)",
            torch_version.unwrap_or("?"),
            ctx.threads
        );
    }
    s.push('\n');
}

/// With `--rounds N`: what the medians are, and each round's images/s.
fn rounds(s: &mut String, res: &Results) {
    let _ = writeln!(s, "{}\n", rounds_note(res.rows.first().map_or(1, |r| r.rounds.len())));
    for r in &res.rows {
        let each: Vec<String> = r
            .rounds
            .iter()
            .map(|x| match (&x.torch, x.ratio()) {
                (Some(t), Some(q)) => format!("{:.2} / {:.2} ({q:.2}x)", x.ours.img_per_s, t.img_per_s),
                _ => format!("{:.2}", x.ours.img_per_s),
            })
            .collect();
        let what = if r.torch.is_some() { "img/s ours / torch" } else { "img/s" };
        let _ = writeln!(s, "- {} rounds, {what}: {}", r.config.name, each.join(", "));
    }
    s.push('\n');
}

/// The matmul peak and the loader table.
fn footer(s: &mut String, ctx: &Ctx, res: &Results) {
    if let Some((g, blas)) = &res.peak {
        let _ = writeln!(
            s,
            "Matmul peak: {g:.1} GFLOP/s, `torch.matmul` of {MATMUL_SIZE}x{MATMUL_SIZE} f32 ({blas}, {} threads, \
             best of 10). GFLOP/s counts only matmuls and attention products (2 per multiply-add, backward \
             = 2x forward).\n",
            ctx.threads
        );
    }
    if !res.loader.is_empty() {
        let _ = writeln!(
            s,
            "Data loader in the same run (`cargo run --release -p mae-data --example loader_bench -- --workers 2`, \
             median of 3 epochs):\n"
        );
        s.push_str(&loader_table(&res.loader));
        s.push('\n');
    } else if !res.loader_note.is_empty() {
        let _ = writeln!(s, "Data loader: {}\n", res.loader_note);
    }
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

/// `/proc/loadavg`'s three averages.
pub fn loadavg() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    let f: Vec<&str> = s.split_whitespace().take(3).collect();
    (f.len() == 3).then(|| f.join(" "))
}

/// The CPU model and SIMD level, cores, memory, OS; the GPU with cuda.
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
pub fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format_utc(secs)
}

/// Unix seconds as `YYYY-MM-DD HH:MM UTC`. (crates/mae-cli/src/util.rs has
/// the same civil-from-days arithmetic; xtask stays without dependencies.)
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
    use crate::bench::parse;

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

    #[test]
    fn dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_utc(951_782_400 + 3_600 * 13 + 60 * 5), "2000-02-29 13:05 UTC");
        assert_eq!(format_utc(1_798_675_200), "2026-12-31 00:00 UTC");
    }

    #[test]
    fn user_command_hides_local_paths() {
        let argv = ["--config", "all", "--compare-torch", "--python", "/x/bin/python", "--steps", "5"];
        let o =
            parse(argv.iter().chain(&["--write-docs"]).map(|s| s.to_string()).collect()).unwrap().unwrap();
        assert_eq!(user_command(&o), "cargo xtask bench --config all --compare-torch --setup-torch");
        let o = parse(["--config", "C,A", "--rounds", "3"].iter().map(|s| s.to_string()).collect())
            .unwrap()
            .unwrap();
        assert_eq!(user_command(&o), "cargo xtask bench --config C,A --rounds 3");
    }
}
