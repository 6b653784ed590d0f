//! Reading and writing weights: our own safetensors files (our naming + the config in the
//! header), and `from_pretrained` over every format [`crate::formats`] reads (Hugging Face,
//! timm, the paper's checkpoints, hub ids).

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::Value;

use crate::config::MaeConfig;
use crate::error::{MaeError, Result};
use crate::formats::Checkpoint;
use crate::hub::Hub;
use crate::model::MaskedAutoencoder;

/// safetensors header key holding our JSON [`MaeConfig`]; its presence marks our files. It is
/// the only key: safetensors writes header metadata in hash order, and one key keeps saved files
/// byte-for-byte reproducible.
pub const CONFIG_METADATA_KEY: &str = "mae_config";
/// The header key of a classifier written by `mae finetune` (encoder + `fc_norm` + `head`).
pub const CLASSIFIER_METADATA_KEY: &str = "mae_classifier";

/// Tensors and header metadata of a safetensors file.
pub struct WeightsFile {
    pub path: PathBuf,
    pub tensors: HashMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

impl WeightsFile {
    pub fn read(path: &Path, device: &Device) -> Result<Self> {
        let bytes = fs::read(path).map_err(|e| MaeError::io(path, e))?;
        let bad = |message: String| MaeError::Format {
            path: path.to_path_buf(),
            what: "safetensors file",
            message,
        };
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let tensors =
            candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| bad(e.to_string()))?;
        Ok(Self { path: path.to_path_buf(), tensors, metadata })
    }

    /// The encoder's config of a classifier written by `mae finetune` (its
    /// [`CLASSIFIER_METADATA_KEY`] header holds `{"vit": ..., "num_classes": ..., "pool": ...}`).
    pub fn classifier_encoder_config(&self) -> Result<Option<mae_vit::VitConfig>> {
        let Some(json) = self.metadata.get(CLASSIFIER_METADATA_KEY) else { return Ok(None) };
        let bad =
            |message: String| MaeError::Format { path: self.path.clone(), what: "mae classifier", message };
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| bad(format!("its `{CLASSIFIER_METADATA_KEY}` header: {e}")))?;
        let vit = value.get("vit").cloned().ok_or_else(|| bad("its header has no `vit` config".into()))?;
        serde_json::from_value(vit).map(Some).map_err(|e| bad(format!("its `vit` config: {e}")))
    }

    /// Our config, when the file was written by [`MaskedAutoencoder::save`].
    pub fn mae_config(&self) -> Result<Option<MaeConfig>> {
        let Some(json) = self.metadata.get(CONFIG_METADATA_KEY) else { return Ok(None) };
        serde_json::from_str(json).map(Some).map_err(|e| MaeError::Format {
            path: self.path.clone(),
            what: "mae checkpoint",
            message: format!("its `{CONFIG_METADATA_KEY}` header is not a valid config: {e}"),
        })
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename. A
/// crash leaves either the old file or the new one, never a torn one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        // Persist the rename itself (best effort: not every platform can open a directory).
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        MaeError::io(path, e)
    })
}

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
        Self::from_tensors(&config, file.tensors, &source, device)
    }

    /// Loads pre-trained weights: a hub id (`facebook/vit-mae-base`, `OWNER/NAME@REVISION`),
    /// a local model directory (`config.json` + `model.safetensors` / `pytorch_model.bin` of a
    /// Hugging Face `ViTMAEForPreTraining`), a file or directory of ours, or a paper checkpoint
    /// (`mae_visualize_vit_base.pth`). Hub files come from the local hub cache, downloaded when
    /// missing unless `HF_HUB_OFFLINE` is set (see [`Hub::from_env`]). Weights without a decoder
    /// are an error that says so; [`crate::Encoder::from_pretrained`] reads those.
    pub fn from_pretrained(id_or_path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Self::from_pretrained_with(id_or_path, &Hub::from_env(), device)
    }

    /// [`MaskedAutoencoder::from_pretrained`] with hub ids resolved through `hub`.
    pub fn from_pretrained_with(id_or_path: impl AsRef<Path>, hub: &Hub, device: &Device) -> Result<Self> {
        Self::from_checkpoint(Checkpoint::open(id_or_path, hub, device)?, device)
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
        Self::from_tensors(config, tensors, &checkpoint.source, device).map_err(|e| checkpoint.explain(e))
    }
}

/// Reads a Hugging Face `ViTMAEConfig` (`config.json`), with transformers' defaults for absent
/// fields.
pub fn config_from_hf_json(path: &Path) -> Result<MaeConfig> {
    let text = fs::read_to_string(path).map_err(|e| MaeError::io(path, e))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| MaeError::Format {
        path: path.to_path_buf(),
        what: "Hugging Face config.json",
        message: e.to_string(),
    })?;
    crate::formats::hf_vitmae_config(&json, path)
}
