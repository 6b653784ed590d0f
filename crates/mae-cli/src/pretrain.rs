//! `mae pretrain`: settings -> data -> model -> trainer, with pictures and checkpoints in a run
//! folder.
//!
//! Data parallel under `mpirun -np N`: every rank builds the same model and a loader for its
//! shard of each global batch of N x batch images; rank 0 alone prints, draws and writes the run
//! folder (see docs/distributed.md).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use mae::pretrain::{LoaderSource, MaeTask, PretrainHooks};
use mae::MaskedAutoencoder;
use mae_data::{Batch, DataSpec, Loader, LoaderConfig, MaeTrainTransform, OpenOptions, Split};
use mae_eval::KnnMonitor;
use mae_train::collective::{broadcast_string, Collective};
use mae_train::{AdamWConfig, BatchSource, LrSchedule, ProgressMode, Trainer, TrainerConfig};

use crate::run_folder::{self, RunLock};

use crate::settings::{Pretrain, PretrainArgs};
use crate::util;

/// Pictures show this many fixed images.
const PREVIEW_IMAGES: usize = 8;

/// Debugging and tests: a folder where each rank appends the dataset indices of every batch it
/// trains on to `samples-rank<R>.txt` (`epoch batch i,j,k,...` per line).
const SAMPLES_ENV: &str = "MAE_DEBUG_SAMPLES";

/// The loader as a batch source that also logs each batch's dataset indices when asked to.
struct LoggedSource<'a> {
    inner: LoaderSource<'a>,
    log: Option<std::cell::RefCell<std::fs::File>>,
}

impl<'a> LoggedSource<'a> {
    fn new(loader: &'a Loader, rank: usize) -> Result<Self> {
        let log = match std::env::var_os(SAMPLES_ENV).filter(|v| !v.is_empty()) {
            Some(dir) => {
                let dir = PathBuf::from(dir);
                std::fs::create_dir_all(&dir).with_context(|| format!("{SAMPLES_ENV}={}", dir.display()))?;
                let path = dir.join(format!("samples-rank{rank}.txt"));
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("{SAMPLES_ENV}: {}", path.display()))?;
                Some(std::cell::RefCell::new(file))
            }
            None => None,
        };
        Ok(Self { inner: LoaderSource(loader), log })
    }
}

impl BatchSource for LoggedSource<'_> {
    type Batch = Batch;

    fn batches_per_epoch(&self) -> usize {
        self.inner.batches_per_epoch()
    }

    fn epoch(
        &self,
        epoch: usize,
        start_batch: usize,
    ) -> mae_train::Result<Box<dyn Iterator<Item = mae_train::Result<Batch>> + '_>> {
        let iter = self.inner.epoch(epoch, start_batch)?;
        let Some(log) = &self.log else { return Ok(iter) };
        Ok(Box::new(iter.map(move |batch| {
            let batch = batch?;
            let indices: Vec<String> = batch.indices.iter().map(|i| i.to_string()).collect();
            writeln!(log.borrow_mut(), "{} {} {}", batch.epoch, batch.batch_index, indices.join(","))
                .map_err(|e| mae_train::TrainError::io(SAMPLES_ENV, e))?;
            Ok(batch)
        })))
    }
}

/// Settings a resumed run may change; everything else defines the trajectory.
fn apply_resume_overrides(cfg: &mut Pretrain, args: &PretrainArgs) -> Result<()> {
    let fixed = [
        ("--data", args.data.is_some()),
        ("--preset", args.preset.is_some()),
        ("--batch-size", args.batch_size.is_some()),
        ("--accum", args.accum.is_some()),
        ("--base-lr", args.base_lr.is_some()),
        ("--min-lr", args.min_lr.is_some()),
        ("--weight-decay", args.weight_decay.is_some()),
        ("--warmup-epochs", args.warmup_epochs.is_some()),
        ("--mask-ratio", args.mask_ratio.is_some()),
        ("--norm-pix-loss", args.norm_pix_loss.is_some()),
        ("--img-size", args.img_size.is_some()),
        ("--seed", args.seed.is_some()),
        ("--dtype", args.dtype.is_some()),
        ("--config", args.config.is_some()),
        ("--out", args.out.is_some()),
        ("--epochs", args.epochs.is_some()),
        ("--steps", args.steps.is_some()),
    ];
    if let Some((flag, _)) = fixed.iter().find(|(_, set)| *set) {
        bail!("{flag} cannot change when resuming: a resumed run continues the same trajectory (start a new run instead)");
    }
    if let Some(w) = args.workers {
        cfg.workers = w;
    }
    if let Some(d) = &args.device {
        cfg.device = d.clone();
    }
    if let Some(p) = &args.progress {
        cfg.progress = p.clone();
    }
    if let Some(n) = args.log_every {
        cfg.log_every = n;
    }
    if let Some(n) = args.checkpoint_every {
        cfg.checkpoint_every = n;
    }
    if let Some(n) = args.keep_last {
        cfg.keep_last = n;
    }
    Ok(())
}

fn newest_run(root: &Path) -> Result<PathBuf> {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(root)
        .with_context(|| format!("--resume: no run folder given and {} cannot be read", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("config.toml").is_file())
        .collect();
    runs.sort();
    runs.pop().with_context(|| format!("--resume: no run under {}", root.display()))
}

/// The labeled splits for the k-NN monitor: given, or the train/test splits of the data.
fn knn_specs(cfg: &Pretrain) -> Result<(DataSpec, DataSpec)> {
    let with_split = |split: Split| -> Result<DataSpec> {
        Ok(match cfg.data.parse::<DataSpec>()? {
            DataSpec::Mnist { path, .. } => DataSpec::Mnist { path, split },
            DataSpec::Cifar10 { path, .. } => DataSpec::Cifar10 { path, split },
            DataSpec::Synthetic { .. } => DataSpec::Synthetic { count: 2000, split },
            other => bail!("--knn-every: give --knn-train and --knn-test for {other}"),
        })
    };
    let train = match &cfg.knn_train {
        Some(s) => s.parse()?,
        None => with_split(Split::Train)?,
    };
    let test = match &cfg.knn_test {
        Some(s) => s.parse()?,
        None => with_split(Split::Test)?,
    };
    Ok((train, test))
}

/// Rank 0's path on every rank.
fn agree_path(world: &dyn Collective, path: &Path) -> Result<PathBuf> {
    Ok(PathBuf::from(broadcast_string(world, &path.to_string_lossy(), 0)?))
}

pub fn run(args: PretrainArgs, world: Arc<dyn Collective>) -> Result<()> {
    let distributed = world.world_size() > 1;
    let (cfg, resume_from) = match &args.resume {
        Some(dir) => {
            let dir = if dir.as_os_str().is_empty() {
                // Rank 0's newest run (the folder must be shared by the ranks to resume).
                let newest = if world.is_main() { newest_run(Path::new("runs"))? } else { PathBuf::new() };
                agree_path(world.as_ref(), &newest)?
            } else {
                dir.clone()
            };
            let mut cfg = Pretrain::from_run_dir(&dir)?;
            apply_resume_overrides(&mut cfg, &args)?;
            cfg.out = dir.clone();
            (cfg, Some(run_folder::resume_candidates(&dir)?))
        }
        None => {
            let file = match &args.config {
                Some(path) => PretrainArgs::from_toml_file(path)?,
                None => PretrainArgs::default(),
            };
            let merged = file.overridden_by(&args);
            if merged.preset.is_none() && world.is_main() {
                eprintln!(
                    "mae: no --preset: quick start ({} on {}); see `mae pretrain --help` for the paper's recipe",
                    crate::settings::QUICKSTART_PRESET,
                    merged.data.as_deref().unwrap_or("synthetic shapes")
                );
            }
            // One run folder for the whole job: rank 0's clock names it.
            let stamp = broadcast_string(world.as_ref(), &util::timestamp(), 0)?;
            let cfg = merged.resolve(|| PathBuf::from("runs").join(&stamp))?;
            if world.is_main() {
                run_folder::prepare_new_run(&cfg.out, args.overwrite, &stamp)?;
            }
            (cfg, None)
        }
    };
    if distributed {
        // Every rank must train the same thing: compare the resolved settings with rank 0's
        // (the number of loader threads may differ between nodes).
        let mine = Pretrain { workers: 0, ..cfg.clone() }.to_toml()?;
        let main = broadcast_string(world.as_ref(), &mine, 0)?;
        if main != mine {
            bail!(
                "rank {} resolved other settings than rank 0 (every rank needs the same flags and --config):\n\
                 rank 0:\n{main}\nrank {}:\n{mine}",
                world.rank(),
                world.rank()
            );
        }
    }
    train(cfg, resume_from, world)
}

/// Trains the run `cfg` describes; `resume_from` holds its complete checkpoints, newest first.
fn train(cfg: Pretrain, resume_from: Option<Vec<PathBuf>>, world: Arc<dyn Collective>) -> Result<()> {
    let (rank, world_size, is_main) = (world.rank(), world.world_size(), world.is_main());
    let device = util::parse_device(&cfg.device)?;
    let size = cfg.model.image_size[0];
    if cfg.model.image_size[1] != size {
        bail!("non-square training images are not supported by the data pipeline yet");
    }
    let spec: DataSpec = cfg.data.parse().context("--data")?;
    let options =
        OpenOptions { synthetic_size: size as u32, synthetic_seed: cfg.seed, ..OpenOptions::default() };
    let dataset = mae_data::open(&spec, &options).with_context(|| format!("--data {}", cfg.data))?;
    // Each rank loads its slice of every global batch of world_size x batch_size images.
    let loader_cfg = LoaderConfig {
        seed: cfg.seed,
        workers: cfg.workers,
        rank,
        world_size,
        ..LoaderConfig::train(cfg.batch_size)
    };
    let loader = Loader::new(dataset.clone(), Arc::new(MaeTrainTransform::new(size)), loader_cfg)
        .with_context(|| {
            format!("--data {} with --batch-size {} on {world_size} process(es)", cfg.data, cfg.batch_size)
        })?;

    let steps_per_epoch = loader.batches_per_epoch() / cfg.accum;
    if steps_per_epoch == 0 {
        bail!(
            "--data {} has {} images: fewer than one step of {} x {} x {world_size} process(es) (lower --batch-size or --accum)",
            cfg.data,
            dataset.len(),
            cfg.batch_size,
            cfg.accum
        );
    }
    let total_steps = match (cfg.epochs, cfg.steps) {
        (Some(e), _) => e * steps_per_epoch,
        (None, Some(s)) => s,
        (None, None) => steps_per_epoch,
    };
    let warmup_steps = match cfg.warmup_epochs {
        Some(w) => (w * steps_per_epoch as f64).round() as usize,
        None => total_steps / 20,
    };
    let effective_batch = cfg.batch_size * cfg.accum * world_size;
    let schedule = LrSchedule {
        peak_lr: LrSchedule::scaled_lr(cfg.base_lr, effective_batch),
        min_lr: cfg.min_lr,
        warmup_steps,
        total_steps,
    };

    let mut model = MaskedAutoencoder::new(&cfg.model, cfg.seed, &device)?;
    model.set_compute_dtype(util::compute_dtype_for(&cfg.dtype, &device)?);
    // One process at a time in a run folder (rank 0's lock stands for the job); held to the end.
    let _lock = if is_main { Some(RunLock::acquire(&cfg.out)?) } else { None };
    if is_main {
        if resume_from.is_none() {
            std::fs::write(cfg.out.join("config.toml"), cfg.to_toml()?)
                .with_context(|| format!("{}", cfg.out.join("config.toml").display()))?;
        }
        let processes = if world_size > 1 {
            format!(" on {} x {} images a process", world.describe(), cfg.batch_size)
        } else {
            String::new()
        };
        eprintln!(
            "mae: {} ({:.1}M parameters) on {} ({}, {}), {} steps of {} images{processes} ({} per epoch), peak lr {:.2e}, run folder {}",
            cfg.preset,
            model.num_parameters() as f64 / 1e6,
            dataset.describe(),
            cfg.device,
            cfg.dtype,
            total_steps,
            effective_batch,
            steps_per_epoch,
            schedule.peak_lr,
            cfg.out.display()
        );
    }

    // Pictures and evaluations are rank 0's: the other ranks skip loading what they need.
    let preview = if is_main {
        let preview_indices: Vec<usize> = (0..dataset.len().min(PREVIEW_IMAGES)).collect();
        let eval = mae_data::EvalTransform::new(size);
        mae::pretrain::load_images(dataset.as_ref(), &eval, &preview_indices).ok()
    } else {
        None
    };
    let knn: Option<Box<dyn mae::pretrain::EpochProbe>> = if cfg.knn_every > 0 && is_main {
        let (train_spec, test_spec) = knn_specs(&cfg)?;
        Some(Box::new(KnnMonitor {
            train: mae_data::open(&train_spec, &options)
                .with_context(|| format!("--knn-train {train_spec}"))?,
            test: mae_data::open(&test_spec, &options).with_context(|| format!("--knn-test {test_spec}"))?,
            every_epochs: cfg.knn_every,
            k: 20,
            temperature: 0.07,
            pool: mae::Pool::Mean,
        }))
    } else {
        None
    };
    let mut hooks = PretrainHooks {
        run_dir: cfg.out.clone(),
        preview,
        preview_seed: cfg.seed,
        denormalize: mae::visualize::Denormalize::default(),
        probe: knn,
        title: format!("{} on {}", cfg.preset, cfg.data),
    };
    let progress = match cfg.progress.as_str() {
        "bar" => ProgressMode::Bar,
        "lines" => ProgressMode::Lines,
        "silent" => ProgressMode::Silent,
        _ => ProgressMode::Auto,
    };
    let trainer_cfg = TrainerConfig {
        accum: cfg.accum,
        adamw: AdamWConfig { weight_decay: cfg.weight_decay, ..AdamWConfig::default() },
        clip_grad_norm: cfg.clip_grad,
        max_nonfinite_in_a_row: cfg.max_nonfinite,
        checkpoint_every: cfg.checkpoint_every,
        keep_last: cfg.keep_last,
        log_every: cfg.log_every,
        seed: cfg.seed,
        world_size,
        progress,
        run_config: serde_json::to_value(&cfg)?,
        ..TrainerConfig::new(cfg.out.clone(), schedule)
    };
    let mut trainer =
        Trainer::new(MaeTask { model, seed: cfg.seed }, trainer_cfg)?.with_collective(world.clone())?;
    if let Some(candidates) = &resume_from {
        let (checkpoint, ()) = run_folder::resume_newest_good(candidates, |c| Ok(trainer.resume_from(c)?))
            .with_context(|| match world_size {
                1 => format!("--resume {}", cfg.out.display()),
                n => format!("--resume {} (rank {rank} of {n})", cfg.out.display()),
            })?;
        if is_main {
            eprintln!("mae: resumed from {} (step {})", checkpoint.display(), trainer.state().step);
        }
    }
    let summary = trainer.fit(&LoggedSource::new(&loader, rank)?, &mut hooks)?;
    if !is_main {
        return Ok(());
    }
    hooks.finish(trainer.model()).context("final pictures")?;
    eprintln!(
        "mae: done, {} steps{}, last loss {}. In {}: checkpoints/, metrics.jsonl, loss.png, reconstruction.png",
        summary.steps,
        if summary.skipped_steps > 0 { format!(" ({} skipped as non-finite)", summary.skipped_steps) } else { String::new() },
        summary.last_loss.map_or("-".into(), |l| format!("{l:.4}")),
        cfg.out.display()
    );
    Ok(())
}
