//! The flags several commands share, declared once and flattened into each command
//! (`#[command(flatten)]`): what a training run is ([`RecipeFlags`], [`GradientFlags`]), how this
//! process runs it ([`RunFlags`]), and the flags whose values are a fixed set ([`ProgressArg`],
//! [`PoolArg`], [`DtypeArg`]), which clap parses into enums through [`choice`].
//!
//! The recipe and run flags of `mae pretrain` are also keys of its `--config` TOML file (the flag
//! names with underscores), hence the serde derives.

use std::ffi::OsStr;
use std::marker::PhantomData;
use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::{DType, Device};
use clap::builder::{PossibleValue, TypedValueParser};
use clap::error::ErrorKind;
use clap::{Arg, Args, Command, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::recipe::GivenLength;

/// Sets each named field of `$base` that `$over` gives (an `Option` that is `Some`).
macro_rules! take_given {
    ($base:ident, $over:ident, $($field:ident),+) => {
        $( if $over.$field.is_some() { $base.$field = $over.$field.clone(); } )+
    };
}
pub(crate) use take_given;

/// What a training run is: how long, in what batches, at what learning rates, from what seed.
/// These define a run's trajectory, so a resumed run keeps its own (see [`Self::given_on_resume`]).
#[derive(Args, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecipeFlags {
    /// Train for this many epochs (passes over the training data). A run's length is --epochs or
    /// --steps: both on the command line is an error; either one replaces the length of a config
    /// file (pretrain --config); with neither, the command's default (see the end of this help).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// ...or for this many optimizer steps (the same rule as --epochs).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Images per optimizer step (pretrain: per micro-batch and per process).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Learning rate per 256 images: lr = base_lr x effective batch / 256.
    #[arg(long)]
    pub base_lr: Option<f64>,
    /// Floor of the cosine schedule.
    #[arg(long)]
    pub min_lr: Option<f64>,
    /// AdamW's weight decay (biases and norms are spared).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Linear warm-up length, in epochs (may be fractional).
    #[arg(long)]
    pub warmup_epochs: Option<f64>,
    /// Seeds everything random in the run: initialisation (pretrain, --preset), data order,
    /// augmentations, masks, the head, drop path. Default 0.
    #[arg(long)]
    pub seed: Option<u64>,
}

impl RecipeFlags {
    /// The flags given, by name: what `--resume` refuses, since a resumed run keeps its recipe.
    pub fn given_on_resume(&self) -> [(&'static str, bool); 8] {
        [
            ("--epochs", self.epochs.is_some()),
            ("--steps", self.steps.is_some()),
            ("--batch-size", self.batch_size.is_some()),
            ("--base-lr", self.base_lr.is_some()),
            ("--min-lr", self.min_lr.is_some()),
            ("--weight-decay", self.weight_decay.is_some()),
            ("--warmup-epochs", self.warmup_epochs.is_some()),
            ("--seed", self.seed.is_some()),
        ]
    }

    /// The run's length as these flags give it, for [`crate::recipe::run_length`].
    pub fn given_length(&self) -> GivenLength {
        GivenLength { epochs: self.epochs, steps: self.steps }
    }

    /// `self` with every setting `over` gives replaced, except the run's length: --epochs and
    /// --steps go through [`crate::recipe::run_length`] instead.
    pub fn overridden_by(mut self, over: &Self) -> Self {
        take_given!(self, over, batch_size, base_lr, min_lr, weight_decay, warmup_epochs, seed);
        self
    }
}

/// Gradient accumulation and clipping (pretrain and finetune): part of the recipe too.
#[derive(Args, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GradientFlags {
    /// Micro-batches per optimizer step (gradient accumulation). Default 1.
    #[arg(long)]
    pub accum: Option<usize>,
    /// Clip the global gradient norm to this value (default: no clipping, as the paper).
    #[arg(long)]
    pub clip_grad: Option<f64>,
}

impl GradientFlags {
    pub fn given_on_resume(&self) -> [(&'static str, bool); 2] {
        [("--accum", self.accum.is_some()), ("--clip-grad", self.clip_grad.is_some())]
    }

    pub fn overridden_by(mut self, over: &Self) -> Self {
        take_given!(self, over, accum, clip_grad);
        self
    }
}

/// Where and how this process runs a training run. Unlike the recipe these may change when a run
/// resumes (all but --out: a run stays in its folder).
#[derive(Args, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunFlags {
    /// Run folder (default: a new one under runs/, named by the time). A folder that already holds
    /// a run is refused.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// cpu, cuda, cuda:N or metal (default: cpu).
    #[arg(long)]
    pub device: Option<String>,
    /// Data loading threads (default: the number of cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Save a checkpoint every N optimizer steps, and always at the end; 0: only at the end
    /// (default: 200 for pretrain, about an epoch for linear-probe and finetune).
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<usize>,
    /// Checkpoints kept, besides best/ (default: 3 for pretrain, 2 for linear-probe and finetune).
    #[arg(long)]
    pub keep_last: Option<usize>,
    /// How training shows its progress: auto is a bar on a terminal, lines otherwise (default).
    #[arg(long, value_parser = choice::<ProgressArg>())]
    pub progress: Option<ProgressArg>,
    /// Print a progress line every N steps (default: 10 for pretrain, 50 for linear-probe and
    /// finetune).
    #[arg(long)]
    pub log_every: Option<usize>,
}

impl RunFlags {
    pub fn overridden_by(mut self, over: &Self) -> Self {
        take_given!(self, over, out, device, workers, checkpoint_every, keep_last, progress, log_every);
        self
    }

    /// `--device`, or the CPU.
    pub fn device_or_cpu(&self) -> &str {
        self.device.as_deref().unwrap_or("cpu")
    }

    /// `--workers`, or one data loading thread per core.
    pub fn workers_or_cores(&self) -> usize {
        self.workers.unwrap_or_else(cores)
    }
}

/// The number of cores this process may use: the default number of data loading threads.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Refuses, naming the first, any flag given that would change a resumed run's recipe.
pub fn refuse_on_resume(given: impl IntoIterator<Item = (&'static str, bool)>) -> Result<()> {
    if let Some((flag, _)) = given.into_iter().find(|(_, set)| *set) {
        bail!(
            "{flag} cannot change when resuming: a resumed run continues its own settings and trajectory \
             (start a new run instead)"
        );
    }
    Ok(())
}

/// `--progress`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProgressArg {
    #[default]
    Auto,
    Bar,
    Lines,
    Silent,
}

impl From<ProgressArg> for mae_train::ProgressMode {
    fn from(p: ProgressArg) -> Self {
        match p {
            ProgressArg::Auto => Self::Auto,
            ProgressArg::Bar => Self::Bar,
            ProgressArg::Lines => Self::Lines,
            ProgressArg::Silent => Self::Silent,
        }
    }
}

/// `--pool`: which encoder output becomes the feature vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolArg {
    // (No doc comments on the values: clap would turn every --help into its long form.)
    // The cls token.
    Cls,
    // The mean of the patch tokens.
    Mean,
}

impl From<PoolArg> for mae::Pool {
    fn from(p: PoolArg) -> Self {
        match p {
            PoolArg::Cls => Self::Cls,
            PoolArg::Mean => Self::Mean,
        }
    }
}

impl std::fmt::Display for PoolArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PoolArg::Cls => "cls",
            PoolArg::Mean => "mean",
        })
    }
}

/// `--dtype`: the precision of the matrix products (weights and optimizer state stay f32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DtypeArg {
    #[default]
    F32,
    Bf16,
    // Parsed only to say why it is refused (see `DtypeArg::compute_dtype`).
    #[value(hide = true)]
    F16,
}

impl DtypeArg {
    /// The compute dtype of `MaskedAutoencoder::set_compute_dtype` (None: plain f32), with a
    /// warning where bf16 will not pay.
    pub fn compute_dtype(self, device: &Device) -> Result<Option<DType>> {
        match self {
            DtypeArg::F32 => Ok(None),
            DtypeArg::Bf16 => {
                if device.is_cpu() {
                    let kernel = mae_nn::product::bf16_kernel();
                    if kernel == mae_nn::product::Kernel::F32 {
                        tracing::warn!(
                            "--dtype bf16 on the CPU: this CPU has no AVX512-BF16 (or MAE_PRODUCT=f32), so the \
                             products run in f32: the numbers of f32, not its speed-up"
                        );
                    } else {
                        tracing::info!(
                            "--dtype bf16 on the CPU: linear layers' products on the {} kernel (bf16 operands, \
                             f32 sums); attention, norms, weights, gradients and AdamW in f32",
                            kernel.name()
                        );
                    }
                }
                Ok(Some(DType::BF16))
            }
            DtypeArg::F16 => bail!(
                "--dtype f16: not supported (fp16 training needs loss scaling; use bf16, which has f32's range)"
            ),
        }
    }

    /// The kernel that runs the linear layers' products in this precision on `device`: `f32`,
    /// bf16 on the CPU's bf16 kernel (`avx512bf16`; `f32` where the CPU has none or
    /// `MAE_PRODUCT=f32`), or `cuda-bf16`. Two runs on different kernels differ in their bits.
    pub fn product_kernel(self, device: &Device) -> &'static str {
        match self {
            DtypeArg::Bf16 if device.is_cpu() => mae_nn::product::bf16_kernel().name(),
            DtypeArg::Bf16 => "cuda-bf16",
            _ => mae_nn::product::Kernel::F32.name(),
        }
    }

    /// Refuses the values parsed only to explain why (f16).
    pub fn check(self) -> Result<()> {
        self.compute_dtype(&Device::Cpu).map(|_| ())
    }

    pub fn name(self) -> &'static str {
        match self {
            DtypeArg::F32 => "f32",
            DtypeArg::Bf16 => "bf16",
            DtypeArg::F16 => "f16",
        }
    }
}

/// clap's parser for a flag whose values are the enum `E`: --help lists the values, and a wrong
/// one is an error in the form of the commands' other errors, naming the flag and the value:
/// `--progress fancy: expected auto, bar, lines or silent`.
pub fn choice<E: ValueEnum + Clone + Send + Sync + 'static>() -> Choice<E> {
    Choice(PhantomData)
}

#[derive(Clone)]
pub struct Choice<E>(PhantomData<E>);

impl<E: ValueEnum + Clone + Send + Sync + 'static> TypedValueParser for Choice<E> {
    type Value = E;

    fn parse_ref(&self, cmd: &Command, arg: Option<&Arg>, value: &OsStr) -> Result<E, clap::Error> {
        let value = value.to_string_lossy();
        E::from_str(&value, false).map_err(|_| {
            let flag = arg.and_then(Arg::get_long).map_or(String::new(), |long| format!("--{long} "));
            let message = format!("{flag}{value}: expected {}\n", or_list(&visible_names::<E>()));
            clap::Error::raw(ErrorKind::InvalidValue, message).with_cmd(cmd)
        })
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(E::value_variants().iter().filter_map(ValueEnum::to_possible_value)))
    }
}

/// The values of `E` that --help shows.
fn visible_names<E: ValueEnum>() -> Vec<String> {
    E::value_variants()
        .iter()
        .filter_map(ValueEnum::to_possible_value)
        .filter(|v| !v.is_hide_set())
        .map(|v| v.get_name().to_string())
        .collect()
}

/// `a`, `a or b`, `a, b or c`.
fn or_list(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Probe {
        #[arg(long, value_parser = choice::<ProgressArg>())]
        progress: Option<ProgressArg>,
        #[arg(long, value_parser = choice::<DtypeArg>())]
        dtype: Option<DtypeArg>,
    }

    #[test]
    fn enumerated_flags_take_their_spellings_and_name_flag_and_value_otherwise() {
        let p = Probe::try_parse_from(["x", "--progress", "lines", "--dtype", "bf16"]).unwrap();
        assert_eq!((p.progress, p.dtype), (Some(ProgressArg::Lines), Some(DtypeArg::Bf16)));
        let err = Probe::try_parse_from(["x", "--progress", "fancy"]).err().unwrap().to_string();
        assert!(err.contains("--progress fancy: expected auto, bar, lines or silent"), "{err}");
        // f16 parses, to be refused with the reason; --help and the error list f32 and bf16 only.
        let p = Probe::try_parse_from(["x", "--dtype", "f16"]).unwrap();
        assert!(p.dtype.unwrap().check().unwrap_err().to_string().contains("loss scaling"));
        let err = Probe::try_parse_from(["x", "--dtype", "f64"]).err().unwrap().to_string();
        assert!(err.contains("--dtype f64: expected f32 or bf16"), "{err}");
    }

    #[test]
    fn the_toml_spellings_are_the_flag_spellings() {
        #[derive(Serialize, Deserialize)]
        struct File {
            progress: ProgressArg,
            dtype: DtypeArg,
            pool: PoolArg,
        }
        let file = File { progress: ProgressArg::Silent, dtype: DtypeArg::Bf16, pool: PoolArg::Mean };
        let text = toml::to_string(&file).unwrap();
        assert_eq!(text, "progress = \"silent\"\ndtype = \"bf16\"\npool = \"mean\"\n");
        for v in ProgressArg::value_variants() {
            let name = v.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(serde_json::to_value(v).unwrap(), name);
        }
    }
}
