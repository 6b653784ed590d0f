//! Reading and writing weights: our own safetensors files (our naming + the config in the
//! header) and Hugging Face model directories (`config.json` + `model.safetensors`).

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::Value;

use crate::config::{MaeConfig, StackShape};
use crate::error::{MaeError, Result};
use crate::model::MaskedAutoencoder;
use crate::naming::{self, Naming};

/// safetensors header key holding our JSON [`MaeConfig`]; its presence marks our files. It is
/// the only key: safetensors writes header metadata in hash order, and one key keeps saved files
/// byte-for-byte reproducible.
pub const CONFIG_METADATA_KEY: &str = "mae_config";

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

    /// Loads a local Hugging Face model directory (`config.json` + `model.safetensors` of a
    /// `ViTMAEForPreTraining`, either decoder naming), or a file or directory of ours.
    pub fn from_pretrained(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(MaeError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            ));
        }
        let (weights_path, config_path) = if path.is_dir() {
            (path.join("model.safetensors"), Some(path.join("config.json")))
        } else {
            (path.to_path_buf(), path.parent().map(|d| d.join("config.json")))
        };
        let file = WeightsFile::read(&weights_path, device)?;
        let source = weights_path.display().to_string();
        if let Some(config) = file.mae_config()? {
            return Self::from_tensors(&config, file.tensors, &source, device);
        }
        let config_path = config_path.filter(|p| p.is_file()).ok_or_else(|| MaeError::Format {
            path: weights_path.clone(),
            what: "model",
            message: "it carries no config and there is no config.json beside it".into(),
        })?;
        let config = config_from_hf_json(&config_path)?;
        let tensors = match Naming::detect(file.tensors.keys()) {
            Naming::Ours => file.tensors,
            Naming::HuggingFace => {
                let (tensors, unknown) = naming::from_hf(file.tensors, &source)?;
                if !unknown.is_empty() {
                    tracing::warn!(
                        "{source}: ignoring {} tensors with unknown names: {}",
                        unknown.len(),
                        unknown.join(", ")
                    );
                }
                tensors
            }
        };
        Self::from_tensors(&config, tensors, &source, device)
    }
}

/// Reads a Hugging Face `ViTMAEConfig` (`config.json`), with transformers' defaults for absent
/// fields.
pub fn config_from_hf_json(path: &Path) -> Result<MaeConfig> {
    let text = fs::read_to_string(path).map_err(|e| MaeError::io(path, e))?;
    let bad = |message: String| MaeError::Format {
        path: path.to_path_buf(),
        what: "Hugging Face config.json",
        message,
    };
    let json: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let int = |key: &str, default: usize| -> Result<usize> {
        match json.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| bad(format!("`{key}` must be a positive integer, got {v}"))),
        }
    };
    let float = |key: &str, default: f64| -> Result<f64> {
        match json.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| bad(format!("`{key}` must be a number, got {v}"))),
        }
    };
    if let Some(act) = json.get("hidden_act").and_then(Value::as_str) {
        if act != "gelu" {
            return Err(bad(format!("hidden_act `{act}` is not supported (only exact `gelu`)")));
        }
    }
    let image_size = match json.get("image_size") {
        Some(Value::Array(a)) if a.len() == 2 => {
            let side = |v: &Value| {
                v.as_u64().map(|v| v as usize).ok_or_else(|| bad("`image_size` must hold integers".into()))
            };
            [side(&a[0])?, side(&a[1])?]
        }
        _ => {
            let s = int("image_size", 224)?;
            [s, s]
        }
    };
    let config = MaeConfig {
        image_size,
        patch_size: int("patch_size", 16)?,
        in_channels: int("num_channels", 3)?,
        encoder: StackShape {
            dim: int("hidden_size", 768)?,
            depth: int("num_hidden_layers", 12)?,
            num_heads: int("num_attention_heads", 12)?,
            mlp_dim: int("intermediate_size", 3072)?,
        },
        decoder: StackShape {
            dim: int("decoder_hidden_size", 512)?,
            depth: int("decoder_num_hidden_layers", 8)?,
            num_heads: int("decoder_num_attention_heads", 16)?,
            mlp_dim: int("decoder_intermediate_size", 2048)?,
        },
        mask_ratio: float("mask_ratio", 0.75)?,
        norm_pix_loss: json.get("norm_pix_loss").and_then(Value::as_bool).unwrap_or(false),
        layer_norm_eps: float("layer_norm_eps", 1e-12)?,
        qkv_bias: json.get("qkv_bias").and_then(Value::as_bool).unwrap_or(true),
        pos_embed: mae_vit::PosEmbed::Sincos,
        decoder_pos_embed: mae_vit::PosEmbed::Sincos,
    };
    config.validate().map_err(|e| bad(e.to_string()))?;
    Ok(config)
}
