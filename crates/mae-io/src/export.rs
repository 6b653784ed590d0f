//! Writing weights for PyTorch users: timm's `VisionTransformer` (the encoder) and Hugging
//! Face's `ViTMAEForPreTraining` (the whole model, hub naming), each a folder with
//! `config.json` + `model.safetensors` that `timm.create_model("local-dir:DIR", pretrained=True)`
//! (or `load_state_dict(strict=True)`) and `ViTMAEForPreTraining.from_pretrained(DIR)` take as
//! they are; and our own format.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::Tensor;
use mae_vit::{PosEmbed, VitConfig};
use serde_json::{json, Value};

use crate::config::MaeConfig;
use crate::error::{MaeError, Result};
use crate::formats::{timm_mlp_dim_of, TIMM_VIT_SIZES};
use crate::io::write_atomically;
use crate::naming;

/// What `mae export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// The encoder as timm's `VisionTransformer` (`config.json` + `model.safetensors`).
    Timm,
    /// The whole model as Hugging Face's `ViTMAEForPreTraining` (`config.json` + `model.safetensors`).
    Hf,
    /// Our safetensors file (config in the header).
    Ours,
}

impl FromStr for ExportFormat {
    type Err = MaeError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "timm" => Ok(Self::Timm),
            "hf" | "huggingface" | "transformers" => Ok(Self::Hf),
            "ours" | "mae" => Ok(Self::Ours),
            _ => Err(MaeError::Config(format!("unknown export format `{s}`: expected timm, hf or ours"))),
        }
    }
}

impl fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Timm => "timm",
            Self::Hf => "hf",
            Self::Ours => "ours",
        })
    }
}

/// timm model names that exist in timm's registry as `vit_{size}_patch{p}_{img}`.
const TIMM_REGISTERED: [(&str, usize, usize); 18] = [
    ("tiny", 16, 224),
    ("tiny", 16, 384),
    ("small", 32, 224),
    ("small", 32, 384),
    ("small", 16, 224),
    ("small", 16, 384),
    ("small", 8, 224),
    ("base", 32, 224),
    ("base", 32, 384),
    ("base", 16, 224),
    ("base", 16, 384),
    ("base", 8, 224),
    ("large", 32, 224),
    ("large", 32, 384),
    ("large", 16, 224),
    ("large", 16, 384),
    ("large", 14, 224),
    ("huge", 14, 224),
];

/// The timm architecture a config is (`vit_base_patch16_224`, ...), or `vit_base_patch16_224`
/// for shapes timm has no name for (its `model_args` then give every size).
pub fn timm_architecture_name(c: &VitConfig) -> String {
    let [h, w] = c.image_size;
    TIMM_VIT_SIZES
        .iter()
        .find(|s| {
            (s.dim, s.depth, s.heads) == (c.embed_dim, c.depth, c.num_heads)
                && timm_mlp_dim_of(s.dim, s.mlp_ratio) == c.mlp_dim
        })
        .and_then(|size| {
            TIMM_REGISTERED
                .iter()
                .find(|(s, p, img)| *s == size.name && *p == c.patch_size && h == w && *img == h)
                .map(|(s, p, img)| format!("vit_{s}_patch{p}_{img}"))
        })
        .unwrap_or_else(|| "vit_base_patch16_224".to_string())
}

/// An `mlp_ratio` whose `int(dim * ratio)` (timm's rule) is `mlp_dim`.
fn timm_mlp_ratio(dim: usize, mlp_dim: usize) -> f64 {
    let exact = mlp_dim as f64 / dim as f64;
    if timm_mlp_dim_of(dim, exact) == mlp_dim {
        exact
    } else {
        (mlp_dim as f64 + 0.5) / dim as f64
    }
}

/// A timm `config.json` for an encoder: `architecture`, `model_args` with every size (so any
/// shape builds), and a `pretrained_cfg` with the input size and ImageNet normalisation.
pub fn timm_config_json(c: &VitConfig) -> Value {
    let [h, w] = c.image_size;
    let img_size = if h == w { json!(h) } else { json!([h, w]) };
    json!({
        "architecture": timm_architecture_name(c),
        "num_classes": 0,
        "num_features": c.embed_dim,
        "global_pool": "token",
        "model_args": {
            "img_size": img_size,
            "patch_size": c.patch_size,
            "in_chans": c.in_channels,
            "embed_dim": c.embed_dim,
            "depth": c.depth,
            "num_heads": c.num_heads,
            "mlp_ratio": timm_mlp_ratio(c.embed_dim, c.mlp_dim),
            "qkv_bias": c.qkv_bias,
            "class_token": true,
            "global_pool": "token",
        },
        "pretrained_cfg": {
            "custom_load": false,
            "input_size": [c.in_channels, h, w],
            "fixed_input_size": true,
            "interpolation": "bicubic",
            "crop_pct": 0.875,
            "crop_mode": "center",
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "num_classes": 0,
            "pool_size": null,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
        },
    })
}

/// A Hugging Face `ViTMAEConfig` (`config.json`) for `transformers`' `from_pretrained`.
pub fn hf_config_json(c: &MaeConfig) -> Value {
    let [h, w] = c.image_size;
    let image_size = if h == w { json!(h) } else { json!([h, w]) };
    json!({
        "architectures": ["ViTMAEForPreTraining"],
        "model_type": "vit_mae",
        "attention_probs_dropout_prob": 0.0,
        "hidden_dropout_prob": 0.0,
        "hidden_act": "gelu",
        "initializer_range": 0.02,
        "dtype": "float32",
        "image_size": image_size,
        "patch_size": c.patch_size,
        "num_channels": c.in_channels,
        "hidden_size": c.encoder.dim,
        "num_hidden_layers": c.encoder.depth,
        "num_attention_heads": c.encoder.num_heads,
        "intermediate_size": c.encoder.mlp_dim,
        "decoder_hidden_size": c.decoder.dim,
        "decoder_num_hidden_layers": c.decoder.depth,
        "decoder_num_attention_heads": c.decoder.num_heads,
        "decoder_intermediate_size": c.decoder.mlp_dim,
        "layer_norm_eps": c.layer_norm_eps,
        "qkv_bias": c.qkv_bias,
        "mask_ratio": c.mask_ratio,
        "norm_pix_loss": c.norm_pix_loss,
    })
}

/// Writes tensors (sorted by name, `{"format": "pt"}` in the header, as PyTorch's
/// `save_file` does) atomically.
pub fn write_safetensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let mut sorted: Vec<(&String, &Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(sorted, Some(metadata)).map_err(|e| MaeError::Format {
        path: path.to_path_buf(),
        what: "safetensors file",
        message: e.to_string(),
    })?;
    write_atomically(path, &bytes)
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| MaeError::Config(e.to_string()))?;
    text.push('\n');
    write_atomically(path, text.as_bytes())
}

pub fn create_dir(dir: &Path) -> Result<()> {
    if dir.is_file() {
        return Err(MaeError::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::AlreadyExists, "is a file; the export writes a folder"),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| MaeError::io(dir, e))
}

/// Writes an encoder as timm's `VisionTransformer` (`num_classes=0`): `dir/config.json` and
/// `dir/model.safetensors` (exactly the encoder's timm state dict, the position table included).
pub fn save_timm(dir: &Path, config: &VitConfig, tensors: &HashMap<String, Tensor>) -> Result<Vec<PathBuf>> {
    if config.layer_norm_eps != 1e-6 {
        tracing::warn!(
            "timm's ViT uses LayerNorm eps 1e-6; this encoder was trained with {} (outputs differ slightly)",
            config.layer_norm_eps
        );
    }
    let state = naming::to_timm(tensors);
    let missing: Vec<String> = mae_vit::VisionTransformer::parameter_shapes(config)?
        .into_iter()
        .map(|(n, _)| n)
        .chain(["pos_embed".to_string()])
        .filter(|n| !state.contains_key(n))
        .collect();
    if !missing.is_empty() {
        return Err(MaeError::Weights {
            origin: "timm export".into(),
            message: format!("the encoder has no {}", missing.join(", ")),
        });
    }
    create_dir(dir)?;
    let (weights, config_path) = (dir.join("model.safetensors"), dir.join("config.json"));
    write_safetensors(&weights, &state)?;
    write_json(&config_path, &timm_config_json(config))?;
    Ok(vec![config_path, weights])
}

/// Writes a whole model as Hugging Face's `ViTMAEForPreTraining` (hub naming):
/// `dir/config.json` and `dir/model.safetensors`.
pub fn save_hf(dir: &Path, config: &MaeConfig, tensors: &HashMap<String, Tensor>) -> Result<Vec<PathBuf>> {
    if config.pos_embed == PosEmbed::Learned || config.decoder_pos_embed == PosEmbed::Learned {
        tracing::warn!(
            "Hugging Face's ViTMAE keeps position tables fixed: the learned tables are exported as they are \
             (transformers uses them), but reading the folder back in mae gives sin-cos tables"
        );
    }
    let hf = naming::to_hf(tensors)?;
    create_dir(dir)?;
    let (weights, config_path) = (dir.join("model.safetensors"), dir.join("config.json"));
    write_safetensors(&weights, &hf)?;
    write_json(&config_path, &hf_config_json(config))?;
    Ok(vec![config_path, weights])
}
