//! The model's side of weight I/O: [`MaskedAutoencoder`] and [`Encoder`] built from what
//! `mae-io` reads (files, folders, hub ids, and here also run folders), and written in every
//! format it writes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use mae_io::export::{create_dir, save_hf, save_timm, ExportFormat};
use mae_io::io::{write_atomically, WeightsFile, CONFIG_METADATA_KEY};
use mae_io::{Checkpoint, Hub, MaeConfig, MaeError, Result};

use crate::encoder::Encoder;
use crate::model::MaskedAutoencoder;

impl MaskedAutoencoder {
    /// Saves every weight in our naming (timm encoder, official decoder) as safetensors, with the
    /// config in the header so [`MaskedAutoencoder::load`] needs nothing else.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let config = serde_json::to_string(self.config()).map_err(|e| MaeError::Config(e.to_string()))?;
        let metadata = HashMap::from([(CONFIG_METADATA_KEY.to_string(), config)]);
        let mut tensors: Vec<(String, Tensor)> = self.state_dict().into_iter().collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let bytes = safetensors::serialize(tensors, Some(metadata)).map_err(|e| MaeError::Format {
            path: path.as_ref().to_path_buf(),
            what: "safetensors file",
            message: e.to_string(),
        })?;
        write_atomically(path.as_ref(), &bytes)
    }

    /// Loads a file written by [`MaskedAutoencoder::save`].
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let file = WeightsFile::read(path, device)?;
        let config = file.mae_config()?.ok_or_else(|| MaeError::Format {
            path: path.to_path_buf(),
            what: "mae checkpoint",
            message: format!(
                "its header has no `{CONFIG_METADATA_KEY}`; for Hugging Face weights use from_pretrained"
            ),
        })?;
        let source = path.display().to_string();
        mae_io::check_finite(&file.tensors, &source)?;
        Self::from_tensors(&config, file.tensors, &source, device)
    }

    /// Loads pre-trained weights: a hub id (`facebook/vit-mae-base`, `OWNER/NAME@REVISION`),
    /// a local model directory (`config.json` + `model.safetensors` / `pytorch_model.bin` of a
    /// Hugging Face `ViTMAEForPreTraining`), a file or directory of ours, or a paper checkpoint
    /// (`mae_visualize_vit_base.pth`). Hub files come from the local hub cache, downloaded when
    /// missing unless `HF_HUB_OFFLINE` is set (see [`Hub::from_env`]). Weights without a decoder
    /// are an error that says so; [`crate::Encoder::from_pretrained`] reads those. A run folder
    /// of `mae pretrain` gives its newest complete checkpoint ([`resolve_weights`]).
    pub fn from_pretrained(id_or_path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Self::from_pretrained_with(id_or_path, &Hub::from_env(), device)
    }

    /// [`MaskedAutoencoder::from_pretrained`] with hub ids resolved through `hub`.
    pub fn from_pretrained_with(id_or_path: impl AsRef<Path>, hub: &Hub, device: &Device) -> Result<Self> {
        Self::from_checkpoint(Checkpoint::open(resolve_weights(id_or_path.as_ref())?, hub, device)?, device)
    }

    /// A model over a checkpoint read by [`Checkpoint`], with its config (or the one read from
    /// its shapes).
    pub fn from_checkpoint(checkpoint: Checkpoint, device: &Device) -> Result<Self> {
        let config = checkpoint.mae_config()?;
        Self::from_checkpoint_with_config(checkpoint, &config, device)
    }

    /// A model over a checkpoint with a config of the caller's (for weights whose shape the
    /// file does not tell, e.g. a paper-style `.pth` of an unusual width). Errors name the
    /// tensor, in our naming and the file's.
    pub fn from_checkpoint_with_config(
        mut checkpoint: Checkpoint,
        config: &MaeConfig,
        device: &Device,
    ) -> Result<Self> {
        let tensors = std::mem::take(&mut checkpoint.tensors);
        mae_io::check_finite(&tensors, &checkpoint.source)?;
        Self::from_tensors(config, tensors, &checkpoint.source, device).map_err(|e| checkpoint.explain(e))
    }
}

impl MaskedAutoencoder {
    /// The whole model as Hugging Face's `ViTMAEForPreTraining` folder (see [`save_hf`]).
    pub fn save_hf(&self, dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
        save_hf(dir.as_ref(), self.config(), &self.state_dict())
    }

    /// The encoder as a timm `VisionTransformer` folder (see [`save_timm`]).
    pub fn save_timm(&self, dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
        save_timm(dir.as_ref(), &self.config().encoder_config(), &self.state_dict())
    }
}

impl Encoder {
    /// As a timm `VisionTransformer` folder (see [`save_timm`]).
    pub fn save_timm(&self, dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
        save_timm(dir.as_ref(), self.config(), &self.state_dict())
    }
}

/// Where the weights of `path` are: a run folder of `mae pretrain` (its newest complete
/// checkpoint's `model.safetensors`), a checkpoint folder (its `model.safetensors`), or `path`
/// itself (a weights file, a model folder, a hub id), which [`Checkpoint::open`] reads.
pub fn resolve_weights(path: &Path) -> Result<PathBuf> {
    if path.join("checkpoints").is_dir() {
        let latest = mae_train::Checkpoints::new(path.join("checkpoints"))
            .latest()
            .map_err(|e| MaeError::Weights { origin: path.display().to_string(), message: e.to_string() })?
            .ok_or_else(|| MaeError::Weights {
                origin: path.display().to_string(),
                message: "this run folder has no complete checkpoint yet".into(),
            })?;
        return Ok(latest.join("model.safetensors"));
    }
    if path.join("model.safetensors").is_file() && !path.join("config.json").is_file() {
        return Ok(path.join("model.safetensors"));
    }
    Ok(path.to_path_buf())
}

/// Reads `weights` (anything `from_pretrained` reads, hub ids through `hub`) and writes it as
/// `format` to `out`: a folder for timm and hf; for ours, `out` itself when it ends in
/// `.safetensors`, else `out/model.safetensors`. timm needs only the encoder, so encoder-only
/// weights export to timm too. Returns the files written.
pub fn export(
    weights: impl AsRef<Path>,
    format: ExportFormat,
    out: &Path,
    hub: &Hub,
    device: &Device,
) -> Result<Vec<PathBuf>> {
    match format {
        ExportFormat::Timm => Encoder::from_pretrained_with(weights, hub, device)?.save_timm(out),
        ExportFormat::Hf => MaskedAutoencoder::from_pretrained_with(weights, hub, device)?.save_hf(out),
        ExportFormat::Ours => {
            let model = MaskedAutoencoder::from_pretrained_with(weights, hub, device)?;
            let path = if out.extension().is_some_and(|e| e == "safetensors") {
                if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                    create_dir(parent)?;
                }
                out.to_path_buf()
            } else {
                create_dir(out)?;
                out.join("model.safetensors")
            };
            model.save(&path)?;
            Ok(vec![path])
        }
    }
}
