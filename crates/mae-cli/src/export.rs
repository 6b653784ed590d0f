//! `mae export`: weights for PyTorch users (timm's ViT, Hugging Face's ViTMAE) or ours.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::{Args, ValueEnum};
use mae::{ExportFormat, Hub};

use crate::flags::choice;
use crate::util;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FormatArg {
    /// The encoder as timm's VisionTransformer: OUT/config.json + OUT/model.safetensors,
    /// for `timm.create_model("local-dir:OUT", pretrained=True)`.
    Timm,
    /// The whole model as Hugging Face's ViTMAEForPreTraining: OUT/config.json +
    /// OUT/model.safetensors, for `ViTMAEForPreTraining.from_pretrained("OUT")`.
    Hf,
    /// Our .safetensors (config in the header): OUT if it ends in .safetensors, else OUT/model.safetensors.
    Ours,
}

impl From<FormatArg> for ExportFormat {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Timm => ExportFormat::Timm,
            FormatArg::Hf => ExportFormat::Hf,
            FormatArg::Ours => ExportFormat::Ours,
        }
    }
}

#[derive(Args)]
#[command(after_help = "Examples:\n  \
    mae export --weights runs/20261128-181500 --format hf --out vit-mae-mine\n  \
    mae export --weights runs/20261128-181500 --format timm --out vit-mine-timm\n  \
    mae export --weights facebook/vit-mae-base --format timm --out vit-mae-base-timm\n  \
    mae export --weights mae_visualize_vit_base.pth --format ours --out mae-base.safetensors\n\n\
Hub ids come from the Hugging Face cache (HF_HUB_CACHE / HF_HOME), downloaded when missing\n\
unless HF_HUB_OFFLINE=1. See docs/weights.md.")]
pub struct ExportArgs {
    /// Model: a run folder, checkpoint folder, .safetensors / .pth / .bin file, Hugging Face or
    /// timm model folder, or a hub id (facebook/vit-mae-base, timm/vit_base_patch16_224.mae).
    #[arg(long)]
    pub weights: PathBuf,
    /// What to write (timm needs only the encoder; hf and ours need the decoder too).
    #[arg(long, value_parser = choice::<FormatArg>())]
    pub format: FormatArg,
    /// Output folder (or, for ours, a .safetensors file).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn export(args: ExportArgs) -> Result<()> {
    // A run folder means its newest checkpoint; anything else (a file, a model folder, a hub
    // id) goes to the loaders as it is.
    let weights = if args.weights.join("checkpoints").is_dir() {
        util::resolve_weights(&args.weights)?
    } else {
        args.weights.clone()
    };
    let format: ExportFormat = args.format.into();
    let written = mae::export::export(&weights, format, &args.out, &Hub::from_env(), &Device::Cpu)
        .with_context(|| format!("mae export --weights {} --format {format}", args.weights.display()))?;
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(())
}
