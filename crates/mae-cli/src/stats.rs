//! `mae stats`: the per-channel mean and std of a dataset's pixels, printed as the `--mean` /
//! `--std` flags of `mae pretrain`.

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::flags::cores;
use crate::util;

#[derive(Args, Debug)]
#[command(after_help = "Example:\n  mae stats --data folder:scans --in-channels 1\n  \
                        # prints: --in-channels 1 --mean 0.2113 --std 0.1874")]
pub struct StatsArgs {
    /// The dataset (the same specs as `mae pretrain --data`).
    #[arg(long, value_name = "SPEC")]
    pub data: String,
    /// Channels the images are read as: 3 (RGB), 1 (gray), 2 (gray + alpha), 4 (RGBA).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub in_channels: usize,
    /// Side the images are resized and centre-cropped to, as in training (resizing smooths,
    /// lowering the std a little).
    #[arg(long, default_value_t = 224)]
    pub img_size: usize,
    /// Count only the first N images (dataset order).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Decoding threads (default: the CPU cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Print one JSON object (images, mean, std, flags) on stdout.
    #[arg(long)]
    pub json: bool,
}

impl StatsArgs {
    /// The checks of the flags alone.
    pub fn check(&self) -> Result<()> {
        if !(1..=mae_data::MAX_CHANNELS).contains(&self.in_channels) {
            bail!(
                "--in-channels {}: images have 1 to {} channels here",
                self.in_channels,
                mae_data::MAX_CHANNELS
            );
        }
        if self.img_size == 0 || self.img_size > 8192 || self.limit == Some(0) {
            bail!("--img-size must be in 1..=8192 and --limit at least 1");
        }
        Ok(())
    }
}

pub fn stats(args: StatsArgs) -> Result<()> {
    args.check()?;
    let dataset = util::open_dataset(&args.data, "--data", args.img_size)?;
    let total = args.limit.unwrap_or(usize::MAX).min(dataset.len());
    eprintln!("mae: pixel statistics of {} images of {} at {}px", total, dataset.describe(), args.img_size);
    let options = mae_data::StatsOptions {
        size: args.img_size,
        channels: args.in_channels,
        workers: args.workers.unwrap_or_else(cores),
        limit: args.limit,
    };
    // A line at every tenth of the way: long datasets are never silent.
    let mut tenth = 0;
    let progress = |done: usize| {
        if !args.json && done * 10 / total.max(1) > tenth {
            tenth = done * 10 / total.max(1);
            eprintln!("{done}/{total} images");
        }
    };
    let stats = mae_data::pixel_stats(dataset, &options, progress)
        .with_context(|| format!("--data {}", args.data))?;
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.4}")).collect::<Vec<_>>().join(",");
    let flags =
        format!("--in-channels {} --mean {} --std {}", args.in_channels, list(&stats.mean), list(&stats.std));
    if stats.skipped > 0 {
        eprintln!("mae: {} unreadable images were skipped (see the warnings above)", stats.skipped);
    }
    if args.json {
        let record = serde_json::json!({
            "data": args.data,
            "images": stats.images,
            "skipped": stats.skipped,
            "img_size": args.img_size,
            "mean": stats.mean,
            "std": stats.std,
            "flags": flags,
        });
        println!("{record}");
    } else {
        println!("{flags}");
    }
    Ok(())
}
