//! Loader throughput: decode + MAE train transform, images per second, through the real
//! multi-threaded loader.
//!
//! ```sh
//! cargo run --release -p mae-data --example loader_bench -- [--workers N] [--batch B] [--runs R]
//! ```
//!
//! Measures the shared photos (PNG/JPEG, 300-1000 px) at 224 px, MNIST IDX at 32 px and the
//! synthetic shapes (drawn at 32 px) at 32 px. Each figure is the median of `--runs` passes;
//! the data directory is the repository's `data/` (override with MAE_DATA_DIR).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use mae_data::{
    open, DataSpec, Dataset, Loader, LoaderConfig, MaeTrainTransform, OpenOptions, Result, Sample,
};

/// The photos repeated, so that one epoch holds many batches and every worker has work (the
/// loader parallelises over batches).
struct Repeat(Arc<dyn Dataset>, usize);

impl Dataset for Repeat {
    fn len(&self) -> usize {
        self.0.len() * self.1
    }
    fn get(&self, index: usize) -> Result<Sample> {
        self.0.get(index % self.0.len())
    }
    fn class_names(&self) -> &[String] {
        self.0.class_names()
    }
    fn describe(&self) -> String {
        format!("{} x{}", self.0.describe(), self.1)
    }
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} needs a number, got {v}")))
        .unwrap_or(default)
}

/// Images per second over one epoch (median of `runs`).
fn measure(dataset: Arc<dyn Dataset>, size: usize, workers: usize, batch: usize, runs: usize) -> Result<f64> {
    let config = LoaderConfig { workers, ..LoaderConfig::train(batch) };
    let loader = Loader::new(dataset, Arc::new(MaeTrainTransform::new(size)), config)?;
    let mut rates = Vec::new();
    for run in 0..runs {
        let start = Instant::now();
        let mut images = 0;
        for batch in loader.iter_epoch(run as u64)? {
            images += batch?.len();
        }
        rates.push(images as f64 / start.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    Ok(rates[rates.len() / 2])
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let workers = arg(&args, "--workers", 2);
    let batch = arg(&args, "--batch", 32);
    let runs = arg(&args, "--runs", 3);
    let data = std::env::var("MAE_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data")));
    let options = OpenOptions { synthetic_size: 32, ..OpenOptions::default() };
    let photos = open(&DataSpec::Folder { path: data.join("photos") }, &options)?;
    let photos: Arc<dyn Dataset> = Arc::new(Repeat(photos, 64));
    let mnist = open(&DataSpec::parse(&format!("mnist:{}@train", data.join("mnist").display()))?, &options)?;
    let synthetic = open(&DataSpec::parse("synthetic:5000")?, &options)?;

    println!("workers {workers}, batch {batch}, median of {runs} epochs");
    println!("| dataset | images/epoch | output | images/s |");
    println!("| --- | ---: | --- | ---: |");
    for (name, dataset, size) in [
        ("photos (PNG/JPEG, 300-1000 px)", photos, 224),
        ("MNIST IDX (28 px)", mnist, 32),
        ("synthetic shapes (drawn at 32 px)", synthetic, 32),
    ] {
        let n = dataset.len() / batch * batch;
        let rate = measure(dataset, size, workers, batch, runs)?;
        println!("| {name} | {n} | 3x{size}x{size} | {rate:.0} |");
    }
    Ok(())
}
