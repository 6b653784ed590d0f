//! Our own safetensors files (our naming + the config in the header), atomic writes, and
//! Hugging Face's `config.json`.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::Value;

use crate::config::MaeConfig;
use crate::error::{MaeError, Result};

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
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(explain_safetensors(&e, bytes.len())))?;
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

/// What a safetensors reading error means for a user: the damage (truncated, not this kind of
/// file) rather than the library's wording.
fn explain_safetensors(e: &safetensors::SafeTensorError, len: usize) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall => format!(
            "it is {len} bytes, too short for a safetensors file (which starts with an 8-byte header \
             length): the file is empty or damaged"
        ),
        E::InvalidHeaderLength => format!(
            "its first 8 bytes declare a header longer than the whole file ({len} bytes): it is \
             truncated, or not a safetensors file"
        ),
        E::HeaderTooLarge => "its first 8 bytes declare a header of more than 100 MB, which no weights file \
                              has: it is damaged, or not a safetensors file"
            .to_string(),
        E::MetadataIncompleteBuffer => format!(
            "its header describes tensor data that does not end where the file ends ({len} bytes): \
             the file is truncated or damaged (an interrupted download or copy?)"
        ),
        other => other.to_string(),
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

/// Refuses weights holding NaN or infinite values, naming the first such tensor (sorted by
/// name): they would load and run, and every output would be garbage.
pub fn check_finite(tensors: &HashMap<String, Tensor>, origin: &str) -> Result<()> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        let t = tensors[name].to_dtype(candle_core::DType::F32)?;
        // x - x is 0 for every finite x and NaN for NaN and +-inf; a sum of zeros is exactly 0.
        let probe = t.sub(&t)?.sum_all()?.to_scalar::<f32>()?;
        if probe != 0.0 {
            return Err(MaeError::Weights {
                origin: origin.to_string(),
                message: format!(
                    "tensor `{name}` holds NaN or infinite values (a diverged run, or a damaged file); refusing to load it"
                ),
            });
        }
    }
    Ok(())
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
