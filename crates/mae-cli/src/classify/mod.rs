//! `mae linear-probe` and `mae finetune`: the paper's two supervised evaluations of an encoder,
//! on `mae-train`'s trainer, in a run folder with checkpoints, `metrics.jsonl`, the resolved
//! `config.toml` and `results.json`.
//!
//! Both start alike ([`run::Start`]: new or resumed settings, a run folder, the encoder, the
//! labeled splits) and end alike ([`run::report`]); `linear_probe.rs` and `finetune.rs` hold what
//! differs: the probe trains on features encoded once, fine-tuning on augmented images.

mod finetune;
mod linear_probe;
mod run;
pub(crate) mod settings;

use std::path::PathBuf;

use clap::Args;

pub use finetune::finetune;
pub use linear_probe::linear_probe;

use crate::flags::{choice, GradientFlags, PoolArg, RecipeFlags, RunFlags};

/// What both commands take: the encoder, the labeled data, and the shared training flags.
#[derive(Args, Debug, Clone)]
pub struct ClassifyArgs {
    /// Encoder weights: a run folder of `mae pretrain` (its newest checkpoint), a checkpoint
    /// folder, a .safetensors file, a Hugging Face hub id or model folder (ViTMAE, ViT, timm), or
    /// a PyTorch checkpoint (the paper's .pth).
    #[arg(long, required_unless_present_any = ["preset", "resume"])]
    pub weights: Option<PathBuf>,
    /// Instead of --weights: a freshly initialised encoder of this preset (seeded by --seed), the
    /// random-init baseline.
    #[arg(long, value_name = "NAME", conflicts_with = "weights")]
    pub preset: Option<String>,
    /// Labeled training data: mnist:PATH@train, cifar10:PATH@train, folder:PATH, synthetic[:N], ...
    #[arg(long, value_name = "SPEC", required_unless_present = "resume")]
    pub train: Option<String>,
    /// Labeled test data, with the training data's classes.
    #[arg(long, value_name = "SPEC", required_unless_present = "resume")]
    pub test: Option<String>,
    /// Continue the run in DIR from its newest checkpoint, with the run's settings (a finished
    /// run is evaluated again).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["weights", "preset", "train", "test", "out"])]
    pub resume: Option<PathBuf>,
    /// Features: cls (token) or mean (of the patch tokens).
    #[arg(long, value_parser = choice::<PoolArg>())]
    pub pool: Option<PoolArg>,
    /// Evaluate on --test every N epochs into metrics.jsonl (0: only at the end).
    #[arg(long, value_name = "N")]
    pub eval_every: Option<usize>,
    /// Print one JSON object on stdout (top1, top5 with >= 5 classes, ...).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub recipe: RecipeFlags,
    #[command(flatten)]
    pub run: RunFlags,
}

#[derive(Args, Debug, Clone)]
#[command(after_help = "\
The paper's linear probe (main_linprobe.py): the encoder frozen, BatchNorm1d(affine=False,
eps=1e-6) + Linear trained with cross-entropy, warm-up then cosine. Defaults: --pool cls (after
the final norm), --epochs 90, --batch-size 256, --base-lr 0.1, --warmup-epochs 10, --weight-decay 0,
--min-lr 0, --eval-every 10.

What differs from the paper: the paper trains with LARS at batch 16384 (base lr 0.1); here AdamW
(betas 0.9, 0.999) at batch 256 with the same base lr (0.1 x batch / 256): LARS exists for huge
batches, and AdamW on batch-normalised features needs no layer-wise trust ratio at this size. The encoder never changes, so every image is encoded once with the evaluation
transform (resize + centre crop) and the head trains on those cached features; the paper
re-augments (random resized crop + flip) every epoch.

Examples:
  mae linear-probe --weights runs/20261128-190203 --train mnist:data/mnist@train --test mnist:data/mnist@test
  mae linear-probe --preset mae-vit-micro-patch4-32 --train synthetic:2000 --test synthetic:1000@test --json
  mae linear-probe --resume runs/linprobe-20261129-101500")]
pub struct LinearProbeArgs {
    #[command(flatten)]
    pub classify: ClassifyArgs,
}

#[derive(Args, Debug, Clone)]
#[command(after_help = "\
Full fine-tuning as the paper (main_finetune.py): a head on the mean of the patch tokens after a
new LayerNorm (fc_norm; --pool cls: the cls token after the final norm), head weight trunc-normal
std 2e-5; AdamW (0.9, 0.999) with layer-wise lr decay, no weight decay on biases, norms,
cls_token and pos_embed; drop path rising linearly over the blocks; label smoothing; warm-up then
cosine; lr = base_lr x batch / 256. Training images get the MAE transform (random resized crop
of --crop-min..1 of the area + flip with --hflip), test images the evaluation transform.

Defaults: --epochs 5, --batch-size 64, --base-lr 1e-3, --layer-decay 0.75, --weight-decay 0.05,
--drop-path 0.1, --label-smoothing 0.1, --warmup-epochs 1, --min-lr 1e-6, --crop-min 0.2,
--hflip 0.5, --eval-every 1.
The paper fine-tunes ViT-B for 100 epochs with 5 of warm-up at batch 1024 (base lr 5e-4 to
1e-3); the short default suits small data on a CPU, where a few hundred steps also gain from a
higher --base-lr (see docs/guide.md). Not implemented: Mixup, CutMix, RandAugment, random erasing
(the paper uses them on ImageNet).

Examples:
  mae finetune --weights runs/20261128-190203 --train mnist:data/mnist@train --test mnist:data/mnist@test \
               --hflip 0 --base-lr 5e-3
  mae finetune --weights facebook/vit-mae-base --train folder:train --test folder:val --epochs 100 --json
  mae finetune --resume runs/finetune-20261129-101500")]
pub struct FinetuneArgs {
    #[command(flatten)]
    pub classify: ClassifyArgs,
    #[command(flatten)]
    pub gradient: GradientFlags,
    /// Layer-wise lr decay: block i of N trains at decay^(N-i) of the head's rate.
    #[arg(long)]
    pub layer_decay: Option<f64>,
    /// Drop path (stochastic depth) rate of the last block, rising linearly from 0 at the first.
    #[arg(long)]
    pub drop_path: Option<f64>,
    #[arg(long)]
    pub label_smoothing: Option<f64>,
    /// Smallest area fraction of the training images' random resized crop. Default 0.2 (MAE's
    /// pre-training transform; timm's fine-tuning transform uses 0.08 with RandAugment).
    #[arg(long, value_name = "FRACTION")]
    pub crop_min: Option<f64>,
    /// Probability of flipping a training image horizontally. Default 0.5; 0 for classes that
    /// are not mirror-symmetric (digits, letters).
    #[arg(long, value_name = "P")]
    pub hflip: Option<f64>,
}
