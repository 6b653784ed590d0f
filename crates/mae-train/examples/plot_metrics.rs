//! Redraws the loss plot of a run from its `metrics.jsonl`.
//!
//! ```text
//! cargo run --release -p mae-train --example plot_metrics -- runs/X/metrics.jsonl loss.png "title"
//! ```

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let metrics = args.next().ok_or("usage: plot_metrics METRICS.jsonl OUT.png [TITLE]")?;
    let out = args.next().unwrap_or_else(|| "loss.png".into());
    let title = args.next().unwrap_or_else(|| "MAE pre-training".into());
    let steps = mae_train::read_steps(metrics.as_ref())?;
    mae_train::plot_loss(&steps, &title, out.as_ref())?;
    println!("{} steps drawn to {out}", steps.len());
    Ok(())
}
