//! What `bench` prints: progress lines, the Markdown tables, the `--json`
//! lines.

use std::fmt::Write as _;

use super::json::{json_object, num, opt_num, Value};
use super::measure::{Row, Run};
use super::runner::LoaderRow;
use super::{Ctx, Options, Results, MATMUL_SIZE};

/// A run's progress line on stderr: `ours:  12.34 img/s, step ...`.
pub fn print_run(label: &str, r: &Run) {
    eprintln!(
        "{label:<6} {:.2} img/s, step {:.3} s (forward {:.3}, backward {:.3}, optimizer {:.3}), peak RSS {}",
        r.img_per_s,
        r.step_s_median,
        r.forward_s,
        r.backward_s,
        r.optimizer_s,
        fmt_mb(r.peak_rss_mb)
    );
}

/// After the rounds of a config: the per-round numbers and their medians.
pub fn print_rounds(row: &Row) {
    let list = |f: &dyn Fn(&super::measure::Round) -> Option<f64>, prec: usize| -> String {
        let v: Vec<String> = row.rounds.iter().filter_map(f).map(|x| format!("{x:.prec$}")).collect();
        v.join(", ")
    };
    let mut s = format!(
        "config {}, {} rounds: ours {:.2} img/s ({})",
        row.config.name,
        row.rounds.len(),
        row.ours.img_per_s,
        list(&|r| Some(r.ours.img_per_s), 2)
    );
    if let (Some(t), Some(ratio)) = (&row.torch, row.ratio()) {
        let _ = write!(
            s,
            "; torch {:.2} img/s ({}); ours / torch {ratio:.2}x ({})",
            t.img_per_s,
            list(&|r| r.torch.as_ref().map(|t| t.img_per_s), 2),
            list(&|r| r.ratio(), 2)
        );
    }
    if let (Some(t), Some(ratio)) = (&row.torch_f32, row.ratio_vs_torch_f32()) {
        let _ = write!(
            s,
            "; torch f32 {:.2} img/s ({}); ours / torch f32 {ratio:.2}x ({})",
            t.img_per_s,
            list(&|r| r.torch_f32.as_ref().map(|t| t.img_per_s), 2),
            list(&|r| r.ratio_vs_torch_f32(), 2)
        );
    }
    eprintln!("{s} (medians, then each round)");
}

/// The default output: the table, the matmul peak, the loader table, the load.
pub fn print_text(ctx: &Ctx, res: &Results) {
    println!();
    println!("{}", markdown_table(&res.rows, res.peak.as_ref()));
    if ctx.o.rounds > 1 {
        println!("{}", rounds_note(ctx.o.rounds));
    }
    if ctx.o.dtype != "f32" {
        println!("dtype {}: ours with --dtype {0}, torch's column under autocast ({0})", ctx.o.dtype);
        for r in res.rows.iter().filter(|r| r.torch_f32.is_some()) {
            let t = r.torch_f32.as_ref().map_or(f64::NAN, |t| t.img_per_s);
            let ratio = r.ratio_vs_torch_f32().unwrap_or(f64::NAN);
            println!(
                "  config {}: torch f32 {t:.2} img/s, ours {} / torch f32 {ratio:.2}x",
                r.config.name, ctx.o.dtype
            );
        }
    }
    if let Some((g, blas)) = &res.peak {
        println!(
            "matmul peak: {g:.1} GFLOP/s (torch.matmul {MATMUL_SIZE}x{MATMUL_SIZE} f32, {blas}, {} threads)",
            ctx.threads
        );
    }
    if !res.loader.is_empty() {
        println!("\ndata loader (2 workers):\n{}", loader_table(&res.loader));
    }
    println!(
        "load average at start: {}; at the end: {}",
        res.load_start.as_deref().unwrap_or("?"),
        res.load_end.as_deref().unwrap_or("?")
    );
}

/// What the numbers are with `--rounds N`.
pub fn rounds_note(rounds: usize) -> String {
    format!(
        "Each config ran {rounds} rounds, ours and torch alternating: img/s and times are the medians of \
         the rounds, ours / torch the median of the per-round ratios, fastest steps over all rounds."
    )
}

/// A config's `--json` line.
pub fn row_json(r: &Row, o: &Options, peak: Option<&(f64, String)>, threads: usize) -> String {
    let c = &r.config;
    let mut f: Vec<(&str, Value)> = vec![
        ("bench", Value::Str("train_step".into())),
        ("config", Value::Str(c.name.into())),
        ("preset", Value::Str(c.preset.into())),
        ("batch_size", num(c.batch as f64)),
        ("device", Value::Str(o.device.clone())),
        ("dtype", Value::Str(o.dtype.clone())),
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
    if let Some(t) = &r.torch_f32 {
        f.extend([
            ("torch_f32_img_per_s", num(t.img_per_s)),
            ("torch_f32_forward_s", num(t.forward_s)),
            ("torch_f32_backward_s", num(t.backward_s)),
            ("torch_f32_optimizer_s", num(t.optimizer_s)),
            ("torch_f32_peak_rss_mb", opt_num(t.peak_rss_mb)),
            ("ratio_vs_torch_f32", opt_num(r.ratio_vs_torch_f32())),
        ]);
    }
    if r.rounds.len() > 1 {
        let per_round = |g: &dyn Fn(&super::measure::Round) -> Option<f64>| {
            Value::Array(r.rounds.iter().map(|x| opt_num(g(x))).collect())
        };
        f.push(("rounds", num(r.rounds.len() as f64)));
        f.push(("rounds_img_per_s", per_round(&|x| Some(x.ours.img_per_s))));
        if r.torch.is_some() {
            f.push(("rounds_torch_img_per_s", per_round(&|x| x.torch.as_ref().map(|t| t.img_per_s))));
            f.push(("rounds_ratio", per_round(&|x| x.ratio())));
        }
        if r.torch_f32.is_some() {
            f.push(("rounds_torch_f32_img_per_s", per_round(&|x| x.torch_f32.as_ref().map(|t| t.img_per_s))));
            f.push(("rounds_ratio_vs_torch_f32", per_round(&|x| x.ratio_vs_torch_f32())));
        }
    }
    json_object(&f)
}

/// A loader dataset's `--json` line.
pub fn loader_json(l: &LoaderRow) -> String {
    json_object(&[
        ("bench", Value::Str("loader".into())),
        ("dataset", Value::Str(l.dataset.clone())),
        ("images_per_epoch", l.images.parse::<f64>().map_or(Value::Str(l.images.clone()), Value::Num)),
        ("output", Value::Str(l.output.clone())),
        ("workers", num(2.0)),
        ("img_per_s", num(l.img_per_s)),
    ])
}

pub fn fmt_mb(x: Option<f64>) -> String {
    x.map_or_else(|| "?".into(), |v| format!("{v:.0} MB"))
}

/// Images per second: 3 significant digits or more (`1234`, `56.7`, `8.90`).
pub fn fmt_rate(x: f64) -> String {
    fmt_scaled(x, [(100.0, 0), (10.0, 1)], 2)
}

/// Seconds: `12.3`, `4.56`, `0.789`.
fn fmt_s(x: f64) -> String {
    fmt_scaled(x, [(10.0, 1), (1.0, 2)], 3)
}

/// `x` with the decimals of the first `(at least, decimals)` it reaches, else `rest` decimals.
fn fmt_scaled(x: f64, steps: [(f64, usize); 2], rest: usize) -> String {
    let prec = steps.iter().find(|(min, _)| x >= *min).map_or(rest, |s| s.1);
    format!("{x:.prec$}")
}

fn split(r: &Run) -> String {
    format!("{} / {} / {}", fmt_s(r.forward_s), fmt_s(r.backward_s), fmt_s(r.optimizer_s))
}

fn rss(r: &Run) -> String {
    r.peak_rss_mb.map_or("?".into(), |v| format!("{v:.0}"))
}

pub fn markdown_table(rows: &[Row], peak: Option<&(f64, String)>) -> String {
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
        table_row(&mut s, r, peak, torch);
    }
    s
}

fn table_row(s: &mut String, r: &Row, peak: Option<&(f64, String)>, torch: bool) {
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
        rss(&r.ours),
        c.step_flops() / 1e9,
    );
    match (&r.torch, torch) {
        (Some(t), _) => {
            let _ = write!(
                s,
                " | {} | {} | {} | {} | **{:.2}x** | {:.2}x",
                fmt_rate(t.img_per_s),
                fmt_s(t.step_s_median),
                split(t),
                rss(t),
                r.ratio().unwrap_or(f64::NAN),
                r.ratio_best().unwrap_or(f64::NAN)
            );
        }
        (None, true) => s.push_str(" | | | | | |"),
        (None, false) => {}
    }
    s.push_str(" |\n");
}

pub fn loader_table(rows: &[LoaderRow]) -> String {
    let mut s = String::from("| dataset | images / epoch | output | images/s |\n|---|---:|---|---:|\n");
    for l in rows {
        let _ = writeln!(s, "| {} | {} | {} | {:.0} |", l.dataset, l.images, l.output, l.img_per_s);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::configs::tests::all_configs;
    use crate::bench::json::{get, parse_object};
    use crate::bench::measure::Round;
    use crate::bench::parse;

    fn run(img_per_s: f64) -> Run {
        Run { img_per_s, step_s_median: 64.0 / img_per_s, step_s_min: 0.5, ..Run::default() }
    }

    #[test]
    fn json_lines_have_rounds_only_with_rounds() {
        let o = parse(vec![]).unwrap().unwrap();
        let a = all_configs()[0].clone();
        let one = Row::new(
            a.clone(),
            vec![Round { ours: run(100.0), torch: Some(run(80.0)), torch_f32: None }],
            None,
        );
        let line = parse_object(&row_json(&one, &o, None, 2)).unwrap();
        assert_eq!(get(&line, "ratio").and_then(Value::as_f64), Some(1.25));
        assert!(get(&line, "rounds").is_none() && get(&line, "rounds_ratio").is_none());
        let rounds = (0..3)
            .map(|i| Round { ours: run(100.0 + i as f64), torch: Some(run(100.0)), torch_f32: None })
            .collect();
        let three = Row::new(a, rounds, None);
        let line = parse_object(&row_json(&three, &o, None, 2)).unwrap();
        assert_eq!(get(&line, "rounds").and_then(Value::as_f64), Some(3.0));
        assert_eq!(get(&line, "img_per_s").and_then(Value::as_f64), Some(101.0));
        let ratios: Vec<f64> = get(&line, "rounds_ratio")
            .and_then(Value::as_array)
            .unwrap()
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        assert_eq!(ratios, [1.0, 1.01, 1.02]);
        assert_eq!(get(&line, "ratio").and_then(Value::as_f64), Some(1.01));
        let table = markdown_table(&[three], None);
        assert!(
            table.contains("| A | `mae-vit-tiny-patch4-32`, 64 | 101 |") && table.contains("**1.01x**"),
            "{table}"
        );
    }
}
