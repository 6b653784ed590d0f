//! The commands besides `pretrain` and `bench`: reconstruct, embed, knn, info.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use mae::{MaeConfig, MaskedAutoencoder};
use mae_data::Transform;

use crate::embed_out::EmbedFormat;
use crate::flags::{choice, cores, DtypeArg, PoolArg};
use crate::util;

#[derive(Args)]
#[command(
    after_help = "Example:\n  mae reconstruct --weights runs/20261128-181500 --image a.png b.jpg --out rec.png"
)]
pub struct ReconstructArgs {
    /// Model: a run folder, checkpoint folder, .safetensors file or Hugging Face model folder.
    #[arg(long)]
    pub weights: PathBuf,
    /// Images to reconstruct (resized and center-cropped to the model's size).
    #[arg(long, num_args = 1.., required = true)]
    pub image: Vec<PathBuf>,
    /// Output PNG.
    #[arg(long, default_value = "reconstruction.png")]
    pub out: PathBuf,
    /// Fraction hidden (default: the model's).
    #[arg(long)]
    pub mask_ratio: Option<f64>,
    /// Seeds the masks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Bands shown: auto (the first three as RGB, or the first in grey below three channels),
    /// gray (each band in grey, a row each), or three band numbers counted from 1, e.g. 4,3,2.
    #[arg(long, value_name = "auto|gray|R,G,B", default_value = "auto")]
    pub bands: mae::visualize::BandView,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn reconstruct(args: ReconstructArgs) -> Result<()> {
    let device = util::parse_device(&args.device)?;
    let mut model = util::load_model(&args.weights, &device)?;
    if let Some(r) = args.mask_ratio {
        let mut config = model.config().clone();
        config.mask_ratio = r;
        config.validate().context("--mask-ratio")?;
        model = MaskedAutoencoder::from_tensors(&config, model.state_dict(), "--weights", &device)?;
    }
    let size = model.config().image_size[0];
    let channels = model.config().in_channels;
    args.bands.check(channels).context("--bands")?;
    let normalize = util::run_normalize(Some(&args.weights), channels)
        .unwrap_or_else(|| mae_data::Normalize::default_for(channels));
    let transform = mae_data::EvalTransform::new(size).with_normalize(normalize.clone());
    let limits = mae_data::DecodeLimits::default();
    let mut images = Vec::new();
    for path in &args.image {
        let img =
            mae_data::open_image(path, &limits).with_context(|| format!("--image {}", path.display()))?;
        let mut rng = mae_data::sample_rng(0, 0, 0, 0);
        images.push(transform.apply(&img, &mut rng).with_context(|| format!("--image {}", path.display()))?);
    }
    let pixels = Tensor::stack(&images, 0)?.to_device(&device)?;
    let b = images.len();
    let l = model.config().num_patches();
    let noise = mae::pretrain::batch_noise(args.seed, 0, &(0..b).collect::<Vec<_>>(), l);
    let plan = mae::MaskPlan::from_noise_values(&noise, b, l, model.config().mask_ratio)?;
    let rec = mae::visualize::reconstruct(&model, &pixels, &plan)?;
    let denormalize = mae::visualize::Denormalize {
        mean: normalize.mean.to_vec(),
        std: normalize.std.to_vec(),
        bands: args.bands,
    };
    mae::visualize::save_grid(&rec, &denormalize, &args.out)
        .with_context(|| format!("--out {}", args.out.display()))?;
    eprintln!("wrote {} (original | masked | reconstruction | reconstruction + visible)", args.out.display());
    Ok(())
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  mae embed --weights runs/20261128-181500 --data mnist:data/mnist@test --out feats.safetensors\n  \
                  mae embed --weights runs/x --data list:photos.txt --format npy --out feats.npy   # + feats.txt (names)"
)]
pub struct EmbedArgs {
    #[arg(long)]
    pub weights: PathBuf,
    #[arg(long, value_name = "SPEC")]
    pub data: String,
    /// Output file. safetensors: `features` [N, D], `labels` [N] (when labeled), `indices` [N]
    /// (dataset index of each row) and the file names as metadata `names`; npy: [N, D] float32,
    /// names one a line in a .txt beside it (and labels in .labels.npy); csv: a header, then
    /// `name[,label],f0,...` rows. Names are file names, or indices where the data has none.
    #[arg(long)]
    pub out: PathBuf,
    /// safetensors, npy or csv.
    #[arg(long, default_value = "safetensors", value_parser = choice::<EmbedFormat>())]
    pub format: EmbedFormat,
    /// cls (token) or mean (of the patch tokens).
    #[arg(long, default_value = "mean", value_parser = choice::<PoolArg>())]
    pub pool: PoolArg,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, or bf16 (the encoder's matrix products in bf16 with f32 sums).
    #[arg(long, default_value = "f32", value_parser = choice::<DtypeArg>())]
    pub dtype: DtypeArg,
}

pub fn embed(args: EmbedArgs) -> Result<()> {
    let device = util::parse_device(&args.device)?;
    let mut encoder = util::load_or_init_encoder(Some(&args.weights), None, 0, &device)?;
    encoder.set_compute_dtype(args.dtype.compute_dtype(&device)?);
    let dataset = util::open_dataset(&args.data, "--data", encoder.config().image_size[0])?;
    let normalize = util::run_normalize(Some(&args.weights), encoder.config().in_channels);
    let transform = mae_eval::eval_transform(encoder.vit().config(), normalize.as_ref());
    let rows = mae_eval::extract_feature_rows(
        encoder.vit(),
        dataset.clone(),
        args.pool.into(),
        (args.batch_size, cores()),
        transform,
    )?;
    let names: Option<Vec<String>> = rows.indices.iter().map(|&i| dataset.sample_name(i)).collect();
    let (n, d) = rows.features.dims2()?;
    let embeddings = crate::embed_out::Embeddings {
        labels: (rows.labels.len() == n).then_some(rows.labels),
        features: rows.features,
        indices: rows.indices,
        names,
    };
    let written = crate::embed_out::write(args.format, &args.out, &embeddings)?;
    let files: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    eprintln!("wrote {n} features of {d} dims to {}", files.join(", "));
    Ok(())
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  mae knn --weights runs/x --train mnist:data@train --test mnist:data@test\n  \
                        mae knn --preset mae-vit-tiny-patch4-32 --train ... --test ...   # random-init baseline"
)]
pub struct KnnArgs {
    /// Model weights; or --preset for a freshly initialised encoder (the baseline).
    #[arg(long, required_unless_present = "preset")]
    pub weights: Option<PathBuf>,
    #[arg(long, conflicts_with = "weights")]
    pub preset: Option<String>,
    #[arg(long, value_name = "SPEC")]
    pub train: String,
    #[arg(long, value_name = "SPEC")]
    pub test: String,
    /// Neighbours that vote (at least 1; at most the training set's size is used).
    #[arg(long, default_value_t = 200)]
    pub k: usize,
    /// Softmax temperature of the votes (a positive number).
    #[arg(long, default_value_t = 0.07)]
    pub temperature: f64,
    /// cls (token) or mean (of the patch tokens).
    #[arg(long, default_value = "mean", value_parser = choice::<PoolArg>())]
    pub pool: PoolArg,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Classify raw (eval-transformed) pixels instead of encoder features: the floor any
    /// representation should clear. Uses the image size of --weights / --preset.
    #[arg(long)]
    pub raw_pixels: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, or bf16 (the encoder's matrix products in bf16 with f32 sums).
    #[arg(long, default_value = "f32", value_parser = choice::<DtypeArg>())]
    pub dtype: DtypeArg,
}

impl KnnArgs {
    /// The checks of the flags alone, made before any weights or data are read.
    pub fn check(&self) -> Result<()> {
        if self.k == 0 {
            bail!("--k 0: at least 1 neighbour must vote");
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            bail!("--temperature {}: must be a positive number", self.temperature);
        }
        Ok(())
    }
}

pub fn knn(args: KnnArgs) -> Result<()> {
    args.check()?;
    let device = util::parse_device(&args.device)?;
    let (weights, preset) = (args.weights.as_deref(), args.preset.as_deref());
    let mut encoder = util::load_or_init_encoder(weights, preset, args.seed, &device)?;
    encoder.set_compute_dtype(args.dtype.compute_dtype(&device)?);
    let size = encoder.config().image_size[0];
    let train = util::open_dataset(&args.train, "--train", size)?;
    let test = util::open_dataset(&args.test, "--test", size)?;
    if train.class_names().is_empty() {
        bail!("--train {}: k-NN needs a labeled dataset", args.train);
    }
    let monitor = mae_eval::KnnMonitor {
        train,
        test,
        every_epochs: 1,
        k: args.k,
        temperature: args.temperature,
        pool: args.pool.into(),
        normalize: util::run_normalize(weights, encoder.config().in_channels),
    };
    let r = if args.raw_pixels {
        let (train, train_labels) = mae_eval::raw_pixels(monitor.train.clone(), size, cores())?;
        let (test, test_labels) = mae_eval::raw_pixels(monitor.test.clone(), size, cores())?;
        let classes = monitor.train.class_names().len();
        mae_eval::knn_classify(&train, &train_labels, &test, &test_labels, classes, args.k, args.temperature)?
    } else {
        mae_eval::knn_accuracy(encoder.vit(), &monitor)?
    };
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        let top5 = r.top5.map_or(String::new(), |t| format!(", top-5 {:.2}%", t * 100.0));
        println!(
            "k-NN (k={}, {} train / {} test): top-1 {:.2}%{top5}",
            r.k,
            r.num_train,
            r.num_test,
            r.top1 * 100.0
        );
    }
    Ok(())
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  mae info --weights runs/20261128-190203\n  mae info --weights fixtures/hf_tiny_a\n  mae info --presets\n  mae info --presets --json"
)]
pub struct InfoArgs {
    /// A run folder, checkpoint folder, .safetensors file or Hugging Face model folder.
    #[arg(long, required_unless_present = "presets")]
    pub weights: Option<PathBuf>,
    /// List the presets instead.
    #[arg(long)]
    pub presets: bool,
    /// With --presets: print one JSON object, preset name -> its full config
    /// (what `cargo xtask bench` reads the model shapes from).
    #[arg(long, requires = "presets")]
    pub json: bool,
}

pub fn info(args: InfoArgs) -> Result<()> {
    if args.presets && args.json {
        let mut all = serde_json::Map::new();
        for name in mae::PRESETS {
            all.insert(name.to_string(), serde_json::to_value(MaeConfig::preset(name)?)?);
        }
        println!("{}", serde_json::Value::Object(all));
        return Ok(());
    }
    if args.presets {
        for name in mae::PRESETS {
            let c = MaeConfig::preset(name)?;
            println!(
                "{name:26} {}x{} px, patch {:2}, encoder {}/{}/{}, decoder {}/{}/{}",
                c.image_size[0],
                c.image_size[1],
                c.patch_size,
                c.encoder.dim,
                c.encoder.depth,
                c.encoder.num_heads,
                c.decoder.dim,
                c.decoder.depth,
                c.decoder.num_heads
            );
        }
        return Ok(());
    }
    let Some(weights) = args.weights else { bail!("give --weights or --presets") };
    let resolved = util::resolve_weights(&weights)?;
    // A whole MAE, or else an encoder alone (timm, HF ViT, a `mae finetune` classifier).
    let (parameters, config, what) = match util::load_model(&weights, &Device::Cpu) {
        Ok(model) => {
            (model.num_parameters(), serde_json::to_value(model.config())?, "MAE (encoder + decoder)")
        }
        Err(whole) => match mae::Encoder::from_pretrained(&resolved, &Device::Cpu) {
            Ok(encoder) => {
                (encoder.num_parameters(), serde_json::to_value(encoder.config())?, "encoder only")
            }
            Err(_) => return Err(whole),
        },
    };
    println!("weights: {} ({what})", resolved.display());
    println!("parameters: {parameters} ({:.2}M trainable)", parameters as f64 / 1e6);
    if let Some(dir) = resolved.parent().filter(|d| d.join("state.json").is_file()) {
        let state = mae_train::read_state(dir)?;
        println!(
            "training: step {}, epoch {}, seed {}, written by {}",
            state.step, state.epoch, state.seed, state.written_by
        );
    }
    // The run's product kernel (products.json of its run folder), and this machine's.
    // The weights file sits up to three folders below its run folder (run/checkpoints/step-N/).
    let run_kernel = resolved.ancestors().take(4).find_map(crate::run_folder::recorded_product_kernel);
    if let Some(kernel) = run_kernel {
        println!("products: trained on the {kernel} kernel");
    }
    println!(
        "products here: f32 on gemm; --dtype bf16 on the {} kernel (MAE_PRODUCT forces one)",
        mae_nn::product::bf16_kernel().name()
    );
    println!("config: {}", serde_json::to_string_pretty(&config)?);
    Ok(())
}
