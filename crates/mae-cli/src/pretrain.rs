//! `mae pretrain`: settings -> data -> model -> trainer, with pictures and checkpoints in a run
//! folder.
//!
//! Data parallel under `mpirun -np N`: every rank builds the same model and a loader for its
//! shard of each global batch of N x batch images; rank 0 alone prints, draws and writes the run
//! folder (see docs/distributed.md).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use mae::pretrain::{LoaderSource, MaeTask, PretrainHooks};
use mae::MaskedAutoencoder;
use mae_data::{Batch, DataSpec, Dataset, Loader, LoaderConfig, MaeTrainTransform, OpenOptions, Split};
use mae_eval::KnnMonitor;
use mae_train::collective::{broadcast_string, Collective};
use mae_train::{AdamWConfig, BatchSource, LrSchedule, Trainer, TrainerConfig};

use crate::recipe::warmup_steps;
use crate::run_folder::{self, RunLock};
use crate::settings::{Pretrain, PretrainArgs};
use crate::util;

/// Pictures show this many fixed images.
const PREVIEW_IMAGES: usize = 8;

/// Debugging and tests: a folder where each rank appends the dataset indices of every batch it
/// trains on to `samples-rank<R>.txt` (`epoch batch i,j,k,...` per line).
const SAMPLES_ENV: &str = "MAE_DEBUG_SAMPLES";

pub fn run(args: PretrainArgs, world: Rc<dyn Collective>) -> Result<()> {
    let (cfg, start) = match &args.resume {
        Some(dir) => {
            let (cfg, candidates) = resumed_settings(&args, dir, world.as_ref())?;
            (cfg, Start::Resume(candidates))
        }
        None => {
            let (cfg, init) = new_run_settings(&args, world.as_ref())?;
            (cfg, init.map_or(Start::Fresh, |model| Start::From(Box::new(model))))
        }
    };
    if world.world_size() > 1 {
        check_ranks_agree(&cfg, world.as_ref())?;
    }
    train(cfg, start, world)
}

/// How a run's model begins.
enum Start {
    /// Initialised as the paper does, from the run's seed.
    Fresh,
    /// Pre-trained weights (`--init`), adapted to the run.
    From(Box<MaskedAutoencoder>),
    /// The newest good one of these complete checkpoints (newest first) of a resumed run.
    Resume(Vec<PathBuf>),
}

/// The model of `--init WEIGHTS`: the weights' architecture and image size, adapted to the run's
/// channels (timm's adapt_input_conv, the pixel head afresh), with the run's mask ratio and
/// loss. `cfg.model` becomes its config.
fn init_model(cfg: &mut Pretrain, weights: &str) -> Result<MaskedAutoencoder> {
    let device = util::parse_device(&cfg.device)?;
    let loaded =
        MaskedAutoencoder::from_pretrained_with_channels(weights, cfg.model.in_channels, cfg.seed, &device)
            .with_context(|| format!("--init {weights}"))?;
    let mut config = loaded.config().clone();
    config.mask_ratio = cfg.model.mask_ratio;
    config.norm_pix_loss = cfg.model.norm_pix_loss;
    cfg.model = config;
    cfg.validate_model().with_context(|| format!("--init {weights}"))?;
    Ok(MaskedAutoencoder::from_tensors(&cfg.model, loaded.state_dict(), weights, &device)?)
}

/// The settings of the run `--resume DIR` continues (`DIR` empty: the newest run under runs/), and
/// its complete checkpoints, newest first.
fn resumed_settings(
    args: &PretrainArgs,
    dir: &Path,
    world: &dyn Collective,
) -> Result<(Pretrain, Vec<PathBuf>)> {
    let dir = if dir.as_os_str().is_empty() {
        // Rank 0's newest run (the folder must be shared by the ranks to resume).
        let newest = if world.is_main() { newest_run(Path::new("runs"))? } else { PathBuf::new() };
        agree_path(world, &newest)?
    } else {
        dir.to_path_buf()
    };
    let mut cfg = Pretrain::from_run_dir(&dir)?;
    cfg.resume_with(args)?;
    cfg.out = dir.clone();
    Ok((cfg, run_folder::resume_candidates(&dir)?))
}

/// The settings of a new run, with its folder made ready (by rank 0), and the model of its
/// `--init` weights.
fn new_run_settings(
    args: &PretrainArgs,
    world: &dyn Collective,
) -> Result<(Pretrain, Option<MaskedAutoencoder>)> {
    // One run folder for the whole job: rank 0's clock names it.
    let stamp = broadcast_string(world, &util::timestamp(), 0)?;
    let (mut cfg, quickstart) = args.resolve_new_run(|| PathBuf::from("runs").join(&stamp))?;
    // Read before the run folder is made: weights that do not load leave nothing behind.
    let init = match cfg.init.clone() {
        Some(weights) => Some(init_model(&mut cfg, &weights)?),
        None => None,
    };
    if world.is_main() {
        if quickstart {
            eprintln!(
                "mae: no --preset: quick start ({} on {}); see `mae pretrain --help` for the paper's recipe",
                cfg.preset, cfg.data
            );
        }
        run_folder::prepare_new_run(&cfg.out, args.overwrite, &stamp)?;
    }
    Ok((cfg, init))
}

/// Every rank must train the same thing: compares the resolved settings with rank 0's (the
/// number of loader threads may differ between nodes).
fn check_ranks_agree(cfg: &Pretrain, world: &dyn Collective) -> Result<()> {
    let mine = Pretrain { workers: 0, ..cfg.clone() }.to_toml()?;
    let main = broadcast_string(world, &mine, 0)?;
    if main != mine {
        bail!(
            "rank {} resolved other settings than rank 0 (every rank needs the same flags and --config):\n\
             rank 0:\n{main}\nrank {}:\n{mine}",
            world.rank(),
            world.rank()
        );
    }
    Ok(())
}

/// Trains the run `cfg` describes; `resume_from` holds its complete checkpoints, newest first.
fn train(cfg: Pretrain, start: Start, world: Rc<dyn Collective>) -> Result<()> {
    let (rank, world_size, is_main) = (world.rank(), world.world_size(), world.is_main());
    let device = util::parse_device(&cfg.device)?;
    let data = TrainingData::open(&cfg, rank, world_size)?;
    let schedule = lr_schedule(&cfg, data.steps_per_epoch, world_size)?;
    let (mut model, resume_from) = match start {
        Start::Fresh => (MaskedAutoencoder::new(&cfg.model, cfg.seed, &device)?, None),
        Start::From(model) => (*model, None),
        Start::Resume(candidates) => {
            (MaskedAutoencoder::new(&cfg.model, cfg.seed, &device)?, Some(candidates))
        }
    };
    model.set_compute_dtype(cfg.dtype.compute_dtype(&device)?);
    // One process at a time in a run folder (rank 0's lock stands for the job); held to the end.
    let _lock = if is_main { Some(RunLock::acquire(&cfg.out)?) } else { None };
    if is_main {
        let kernel = cfg.dtype.product_kernel(&device);
        if resume_from.is_none() {
            let path = cfg.out.join("config.toml");
            std::fs::write(&path, cfg.to_toml()?).with_context(|| format!("{}", path.display()))?;
            run_folder::record_product_kernel(&cfg.out, kernel)?;
        } else if let Some(warning) = run_folder::product_kernel_change(&cfg.out, kernel) {
            tracing::warn!("{warning}");
        }
        announce(&cfg, &model, &data, &schedule, world.as_ref());
    }
    let mut hooks = pretrain_hooks(&cfg, &data, is_main)?;
    let trainer_cfg = trainer_config(&cfg, schedule, world_size)?;
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
    let summary = trainer.fit(&LoggedSource::new(&data.loader, rank)?, &mut hooks)?;
    if !is_main {
        return Ok(());
    }
    hooks.finish(trainer.model(), trainer.state().step).context("final pictures")?;
    eprintln!(
        "mae: done, {} steps{}, last loss {}. In {}: checkpoints/, metrics.jsonl (and .csv, events.out.tfevents.*), loss.png, memory.png, reconstruction.png",
        summary.steps,
        if summary.skipped_steps > 0 { format!(" ({} skipped as non-finite)", summary.skipped_steps) } else { String::new() },
        summary.last_loss.map_or("-".into(), |l| format!("{l:.4}")),
        cfg.out.display()
    );
    Ok(())
}

/// What a run trains on: the dataset, and this rank's loader of it.
struct TrainingData {
    dataset: Arc<dyn Dataset>,
    /// How the dataset (and the k-NN monitor's) was opened.
    options: OpenOptions,
    /// Loads this rank's slice of every global batch of world_size x batch_size images.
    loader: Loader,
    steps_per_epoch: usize,
}

impl TrainingData {
    fn open(cfg: &Pretrain, rank: usize, world_size: usize) -> Result<Self> {
        let size = cfg.model.image_size[0];
        let spec: DataSpec = cfg.data.parse().context("--data")?;
        let options =
            OpenOptions { synthetic_size: size as u32, synthetic_seed: cfg.seed, ..OpenOptions::default() };
        let dataset = mae_data::open(&spec, &options).with_context(|| format!("--data {}", cfg.data))?;
        let loader_cfg = LoaderConfig {
            seed: cfg.seed,
            workers: cfg.workers,
            rank,
            world_size,
            ..LoaderConfig::train(cfg.batch_size)
        };
        let loader = Loader::new(
            dataset.clone(),
            Arc::new(MaeTrainTransform::new(size).with_normalize(cfg.normalize())),
            loader_cfg,
        )
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
        Ok(Self { dataset, options, loader, steps_per_epoch })
    }
}

/// Warm-up (5% of the run unless --warmup-epochs) then cosine, peaking at the base lr scaled by
/// the effective batch of every process together.
fn lr_schedule(cfg: &Pretrain, steps_per_epoch: usize, world_size: usize) -> Result<LrSchedule> {
    let total_steps = cfg.length()?.total_steps(steps_per_epoch)?;
    let warmup_steps =
        cfg.warmup_epochs.map_or((total_steps / 20) as f64, |w| warmup_steps(w, steps_per_epoch));
    let effective_batch = cfg.batch_size * cfg.accum * world_size;
    Ok(LrSchedule {
        peak_lr: LrSchedule::scaled_lr(cfg.base_lr, effective_batch),
        min_lr: cfg.min_lr,
        warmup_steps,
        total_steps,
    })
}

/// The line that says what is about to train, where, and for how long.
fn announce(
    cfg: &Pretrain,
    model: &MaskedAutoencoder,
    data: &TrainingData,
    schedule: &LrSchedule,
    world: &dyn Collective,
) {
    let processes = if world.world_size() > 1 {
        format!(" on {} x {} images a process", world.describe(), cfg.batch_size)
    } else {
        String::new()
    };
    eprintln!(
        "mae: {} ({:.1}M parameters) on {} ({}, {}), {} steps of {} images{processes} ({} per epoch), peak lr {:.2e}, run folder {}",
        cfg.preset,
        model.num_parameters() as f64 / 1e6,
        data.dataset.describe(),
        cfg.device,
        cfg.dtype.name(),
        schedule.total_steps,
        cfg.batch_size * cfg.accum * world.world_size(),
        data.steps_per_epoch,
        schedule.peak_lr,
        cfg.out.display()
    );
}

/// Pictures and evaluations are rank 0's: the other ranks skip loading what they need.
fn pretrain_hooks(cfg: &Pretrain, data: &TrainingData, is_main: bool) -> Result<PretrainHooks> {
    let preview = if is_main {
        let preview_indices: Vec<usize> = (0..data.dataset.len().min(PREVIEW_IMAGES)).collect();
        let eval = mae_data::EvalTransform::new(cfg.model.image_size[0]).with_normalize(cfg.normalize());
        mae::pretrain::load_images(data.dataset.as_ref(), &eval, &preview_indices).ok()
    } else {
        None
    };
    let knn: Option<Box<dyn mae::pretrain::EpochProbe>> = if cfg.knn_every > 0 && is_main {
        let (train_spec, test_spec) = knn_specs(cfg)?;
        let open = |spec: &DataSpec, flag: &str| {
            mae_data::open(spec, &data.options).with_context(|| format!("{flag} {spec}"))
        };
        Some(Box::new(KnnMonitor {
            train: open(&train_spec, "--knn-train")?,
            test: open(&test_spec, "--knn-test")?,
            every_epochs: cfg.knn_every,
            k: 20,
            temperature: 0.07,
            pool: mae::Pool::Mean,
            normalize: Some(cfg.normalize()),
        }))
    } else {
        None
    };
    Ok(PretrainHooks {
        run_dir: cfg.out.clone(),
        preview,
        preview_seed: cfg.seed,
        denormalize: mae::visualize::Denormalize {
            mean: cfg.mean.clone(),
            std: cfg.std.clone(),
            bands: cfg.band_view()?,
        },
        probe: knn,
        title: format!("{} on {}", cfg.preset, cfg.data),
    })
}

fn trainer_config(cfg: &Pretrain, schedule: LrSchedule, world_size: usize) -> Result<TrainerConfig> {
    Ok(TrainerConfig {
        accum: cfg.accum,
        adamw: AdamWConfig { weight_decay: cfg.weight_decay, ..AdamWConfig::default() },
        clip_grad_norm: cfg.clip_grad,
        max_nonfinite_in_a_row: cfg.max_nonfinite,
        checkpoint_every: cfg.checkpoint_every,
        keep_last: cfg.keep_last,
        log_every: cfg.log_every,
        seed: cfg.seed,
        world_size,
        progress: cfg.progress.into(),
        run_config: serde_json::to_value(cfg)?,
        ..TrainerConfig::new(cfg.out.clone(), schedule)
    })
}

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
