//! Reading weights in every format mae accepts, into our naming, with what the checkpoint says
//! about the model's shape.
//!
//! | format | files | naming | config |
//! |---|---|---|---|
//! | ours | `.safetensors` | timm encoder + official decoder | JSON in the header |
//! | Hugging Face ViTMAE | `config.json` + `model.safetensors` / `pytorch_model.bin` | `vit.*`, `decoder.*`, split q/k/v | `model_type: vit_mae` |
//! | Hugging Face ViT | the same | `[vit.]embeddings.*`, `[vit.]encoder.layer.*` | `model_type: vit` (encoder only, learned positions) |
//! | timm | `config.json` + `model.safetensors` / `pytorch_model.bin` | timm's `VisionTransformer` (ours) | `architecture` + `model_args` / `pretrained_cfg` |
//! | official (facebookresearch/mae) | `.pth` with the weights under `"model"` | ours | none: read from the shapes |
//!
//! PyTorch files are read with candle's pickle reader (the zip format of `torch.save`, PyTorch
//! 1.6 and later; [`crate::torch_zip`] checks every declared size first). Every tensor is checked
//! against the configuration when a model is built from a [`Checkpoint`], and errors name the
//! tensor (and what the file calls it).
//!
//! Here: the [`Checkpoint`] and how a file's names and config become ours. In submodules, whose
//! public items are re-exported here: `files` (which files a folder or shard index names, and
//! one file's tensors), `config_json` (Hugging Face's and timm's `config.json`), `infer` (a
//! config read from the tensors' shapes, for checkpoints without one).

mod config_json;
mod files;
mod infer;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use mae_vit::{PosEmbed, VitConfig};

pub use self::config_json::{
    config_from_json, hf_vit_config, hf_vitmae_config, read_config_json, timm_architecture, timm_config,
    timm_mlp_dim_of, ConfigJson, TimmSize, TIMM_VIT_SIZES,
};
pub use self::files::shard_names;
use self::files::{read_tensors, weights_in_dir};
pub use self::infer::{check_vit, heads_for_width, infer_decoder_shape, infer_vit_config};
use crate::config::{MaeConfig, StackShape};
use crate::error::{MaeError, Result};
use crate::hub::{Hub, RepoId};
use crate::naming::{self, Converted, Naming, Unrecognised};

/// What kind of checkpoint a set of weights is, as detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Ours: safetensors with our config in the header.
    Ours,
    /// Hugging Face `ViTMAEForPreTraining` / `ViTMAEModel`.
    HfVitMae,
    /// Hugging Face `ViTModel` / `ViTForImageClassification` (an encoder).
    HfVit,
    /// timm's `VisionTransformer` (an encoder; timm's MAE tags are the paper's encoders).
    Timm,
    /// The paper's checkpoints (`mae_pretrain_vit_*.pth`: encoder, `mae_visualize_vit_*.pth`:
    /// with decoder), or any file in our naming without a config.
    Official,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Ours => "mae",
            Format::HfVitMae => "Hugging Face ViTMAE",
            Format::HfVit => "Hugging Face ViT",
            Format::Timm => "timm ViT",
            Format::Official => "official MAE",
        })
    }
}

/// What a checkpoint's config says about the model's shape.
#[derive(Debug, Clone, PartialEq)]
pub enum KnownConfig {
    /// A whole MAE (ours, Hugging Face ViTMAE).
    Mae(MaeConfig),
    /// An encoder (Hugging Face ViT, timm).
    Encoder(VitConfig),
    /// Nothing: the shape is read from the tensors' shapes.
    None,
}

/// A checkpoint read from disk or the hub: tensors in our naming, and what is known of its shape.
#[derive(Debug)]
pub struct Checkpoint {
    /// Where it came from (a path, or a hub id and path), for messages.
    pub source: String,
    pub format: Format,
    /// In our naming (timm encoder, official decoder), q/k/v joined into `qkv`.
    pub tensors: HashMap<String, Tensor>,
    pub config: KnownConfig,
    /// Names (the file's) that were left out: task heads, poolers, unknown extras.
    pub ignored: Vec<String>,
    /// Our name -> the file's name, where they differ.
    file_names: HashMap<String, String>,
}

fn format_error(path: &Path, what: &'static str, message: impl Into<String>) -> MaeError {
    MaeError::Format { path: path.to_path_buf(), what, message: message.into() }
}

fn not_found(path: &Path) -> MaeError {
    MaeError::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"))
}

impl Checkpoint {
    /// Reads `id_or_path`: a local file or directory when it exists, else a hub id
    /// (`OWNER/NAME[@REVISION]`) resolved through `hub`.
    pub fn open(id_or_path: impl AsRef<Path>, hub: &Hub, device: &Device) -> Result<Self> {
        let path = id_or_path.as_ref();
        if path.exists() {
            return Self::read_local(path, device);
        }
        let Some(repo) = path.to_str().and_then(RepoId::parse) else { return Err(not_found(path)) };
        Self::read_hub(&repo, hub, device).map_err(|e| match e {
            MaeError::Weights { origin, message } => MaeError::Weights {
                origin,
                message: format!("{message} (`{}` is not a local file or folder either)", path.display()),
            },
            e => e,
        })
    }

    /// Reads a hub model through `hub` (the cache first; see [`crate::hub::model_files`]).
    pub fn read_hub(repo: &RepoId, hub: &Hub, device: &Device) -> Result<Self> {
        let files = crate::hub::model_files(hub, repo)?;
        let source = format!("{repo} ({})", files.weights[0].display());
        Self::read_files(&files.weights, files.config.as_deref(), source, device)
    }

    /// Reads a local directory (`config.json` + weights) or a single weights file (with the
    /// `config.json` beside it, when it has no config of its own).
    pub fn read_local(path: &Path, device: &Device) -> Result<Self> {
        if !path.exists() {
            return Err(not_found(path));
        }
        let (weights, config) = if path.is_dir() {
            (weights_in_dir(path)?, Some(path.join("config.json")))
        } else {
            let weights = if path.to_string_lossy().ends_with(".index.json") {
                let dir = path.parent().unwrap_or(Path::new("."));
                shard_names(path)?.into_iter().map(|s| dir.join(s)).collect()
            } else {
                vec![path.to_path_buf()]
            };
            (weights, path.parent().map(|d| d.join("config.json")))
        };
        let config = config.filter(|c| c.is_file());
        let source = weights[0].display().to_string();
        Self::read_files(&weights, config.as_deref(), source, device)
    }

    /// Reads weight files (one, or the shards of one checkpoint) and an optional `config.json`.
    pub fn read_files(
        weights: &[PathBuf],
        config_json: Option<&Path>,
        source: String,
        device: &Device,
    ) -> Result<Self> {
        let mut tensors = HashMap::new();
        let mut header = None;
        let mut encoder_header = None;
        let mut pickled = false;
        for path in weights {
            let file = read_tensors(path, device)?;
            header = header.or(file.header);
            encoder_header = encoder_header.or(file.encoder_header);
            pickled |= file.pickled;
            tensors.extend(file.tensors);
        }
        let json = match (&header, encoder_header, config_json) {
            // A `mae finetune` classifier: our encoder names (timm's), its config in the header.
            (None, Some(vit), _) => Some(ConfigJson::Timm(vit)),
            (None, None, Some(path)) => Some(read_config_json(path)?),
            _ => None,
        };
        Self::from_raw(tensors, header, json, pickled, source)
    }

    /// Renames a file's tensors to ours and decides the format and the config.
    fn from_raw(
        tensors: HashMap<String, Tensor>,
        header: Option<MaeConfig>,
        json: Option<ConfigJson>,
        pickled: bool,
        source: String,
    ) -> Result<Self> {
        if tensors.is_empty() {
            return Err(MaeError::Weights { origin: source, message: "the file holds no tensors".into() });
        }
        let tensors = strip_ddp_prefix(tensors);
        let hf_named = Naming::detect(tensors.keys()) == Naming::HuggingFace;
        let Converted { tensors: ours, unknown: unrecognised, file_names } =
            to_our_names(tensors, hf_named, &source)?;
        let ignored = sort_unrecognised(unrecognised, ours.contains_key("norm.weight"), &source)?;
        let has_decoder = ours.keys().any(|k| naming::is_decoder(k));
        let (format, config) = decide_format(header, json, hf_named, pickled, has_decoder);
        if ours.is_empty() {
            return Err(no_weights_error(source, &ignored, &config));
        }
        Ok(Self { source, format, tensors: ours, config, ignored, file_names })
    }

    /// Whether the checkpoint has the MAE decoder.
    pub fn has_decoder(&self) -> bool {
        self.tensors.keys().any(|k| naming::is_decoder(k))
    }

    /// The shapes of its tensors, by our name.
    pub fn shapes(&self) -> HashMap<String, Vec<usize>> {
        self.tensors.iter().map(|(k, v)| (k.clone(), v.dims().to_vec())).collect()
    }

    fn eps_default(&self) -> f64 {
        match self.format {
            Format::HfVitMae | Format::HfVit => 1e-12,
            _ => 1e-6,
        }
    }

    fn weights_error(&self, message: String) -> MaeError {
        MaeError::Weights { origin: self.source.clone(), message }
    }

    /// The whole model's config: the checkpoint's, or read from the tensors' shapes. An
    /// encoder-only checkpoint is an error that says the decoder is missing.
    pub fn mae_config(&self) -> Result<MaeConfig> {
        if !self.has_decoder() {
            return Err(self.weights_error(format!(
                "this {} checkpoint holds only an encoder: a MaskedAutoencoder also needs the decoder \
                 (`decoder_embed`, `mask_token`, `decoder_blocks.*`, `decoder_norm`, `decoder_pred`), which is \
                 missing. Load the encoder alone with mae::Encoder::from_pretrained",
                self.format
            )));
        }
        let shapes = self.shapes();
        let (encoder, eps) = match &self.config {
            KnownConfig::Mae(c) => return Ok(c.clone()),
            KnownConfig::Encoder(v) => (v.clone(), v.layer_norm_eps),
            KnownConfig::None => {
                let mut v =
                    infer_vit_config(&shapes, self.eps_default()).map_err(|m| self.weights_error(m))?;
                v.pos_embed = PosEmbed::Sincos; // the paper's MAE: fixed sin-cos tables
                (v, self.eps_default())
            }
        };
        let decoder = infer_decoder_shape(&shapes).map_err(|m| self.weights_error(m))?;
        let config = MaeConfig {
            image_size: encoder.image_size,
            patch_size: encoder.patch_size,
            in_channels: encoder.in_channels,
            encoder: StackShape {
                dim: encoder.embed_dim,
                depth: encoder.depth,
                num_heads: encoder.num_heads,
                mlp_dim: encoder.mlp_dim,
            },
            decoder,
            mask_ratio: 0.75,
            norm_pix_loss: false,
            layer_norm_eps: eps,
            qkv_bias: encoder.qkv_bias,
            pos_embed: encoder.pos_embed,
            decoder_pos_embed: PosEmbed::Sincos,
        };
        config.validate().map_err(|e| self.weights_error(format!("the shape read from the weights: {e}")))?;
        tracing::info!("{}: no config; read the shape from the weights: {config:?}", self.source);
        Ok(config)
    }

    /// The encoder's config. Without a config, it is read from the shapes and the position table
    /// of the file is kept as a learned one (timm's ViT; for the paper's checkpoints it holds the
    /// sin-cos values).
    pub fn vit_config(&self) -> Result<VitConfig> {
        match &self.config {
            KnownConfig::Mae(c) => Ok(c.encoder_config()),
            KnownConfig::Encoder(v) => Ok(v.clone()),
            KnownConfig::None => {
                infer_vit_config(&self.shapes(), self.eps_default()).map_err(|m| self.weights_error(m))
            }
        }
    }

    /// The file's names for our names, where they differ.
    pub fn file_name_of(&self, ours: &str) -> Option<&str> {
        self.file_names.get(ours).map(String::as_str)
    }

    /// Adds the file's own name of the tensor to a missing-tensor or shape error.
    pub fn explain(&self, err: MaeError) -> MaeError {
        let with_file_name = |origin: String, name: &str| match self.file_name_of(name) {
            Some(theirs) => format!("{origin} (there: `{theirs}`)"),
            None => origin,
        };
        match err {
            MaeError::ShapeMismatch { origin, name, expected, found } => {
                MaeError::ShapeMismatch { origin: with_file_name(origin, &name), name, expected, found }
            }
            MaeError::MissingTensor { origin, name } => {
                MaeError::MissingTensor { origin: with_file_name(origin, &name), name }
            }
            e => e,
        }
    }
}

fn preview(names: &[String]) -> String {
    let mut shown: Vec<&str> = names.iter().take(8).map(String::as_str).collect();
    if names.len() > 8 {
        shown.push("...");
    }
    shown.join(", ")
}

/// Weights saved from a DistributedDataParallel wrapper carry `module.` on every name; the
/// model inside is the checkpoint.
fn strip_ddp_prefix(tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    if tensors.keys().all(|k| k.starts_with("module.")) {
        tensors.into_iter().map(|(k, v)| (k["module.".len()..].to_string(), v)).collect()
    } else {
        tensors
    }
}

/// The tensors in our naming, and the file's names that have none of ours (sorted). Hugging
/// Face names are converted (q/k/v joined); a file already in our naming (timm, the paper's,
/// ours) only has its extras set apart.
fn to_our_names(tensors: HashMap<String, Tensor>, hf_named: bool, source: &str) -> Result<Converted> {
    if hf_named {
        return naming::convert_from_hf(tensors, source);
    }
    let (ours, other): (HashMap<_, _>, HashMap<_, _>) =
        tensors.into_iter().partition(|(k, _)| naming::is_ours(k));
    let mut other: Vec<String> = other.into_keys().collect();
    other.sort();
    Ok(Converted { tensors: ours, unknown: other, file_names: HashMap::new() })
}

/// Sorts the names that are not ours: task heads are left out quietly, parts of ViT variants
/// that mae does not implement are an error (the encoder would compute something else), and
/// unknown names are left out with a warning. Returns the names left out, heads first.
fn sort_unrecognised(unrecognised: Vec<String>, final_norm_kept: bool, source: &str) -> Result<Vec<String>> {
    let mut ignored = Vec::new();
    let mut unknown = Vec::new();
    // A classifier fine-tuned by `mae finetune` keeps the encoder's final norm and adds
    // `fc_norm` + `head` on top: the encoder is intact, and those two are its task head. (timm's
    // and the paper's average-pool fine-tunes drop the final norm instead: not our ViT.)
    for name in unrecognised {
        match naming::classify_unrecognised(&name) {
            Unrecognised::Head => ignored.push(name),
            Unrecognised::Unsupported(_) if final_norm_kept && name.starts_with("fc_norm.") => {
                ignored.push(name)
            }
            Unrecognised::Unsupported(what) => {
                return Err(MaeError::Weights {
                    origin: source.to_string(),
                    message: format!("tensor `{name}` belongs to {what}, which mae's ViT does not implement"),
                })
            }
            Unrecognised::Unknown => unknown.push(name),
        }
    }
    if !ignored.is_empty() {
        tracing::debug!("{source}: leaving out task heads: {}", ignored.join(", "));
    }
    if !unknown.is_empty() {
        tracing::warn!(
            "{source}: ignoring {} tensors with unknown names: {}",
            unknown.len(),
            unknown.join(", ")
        );
        ignored.extend(unknown);
    }
    Ok(ignored)
}

/// The format and config: a config (our header, else `config.json`) says both. Without one, the
/// names tell Hugging Face from the rest, a decoder or a pickle means the paper's checkpoint,
/// and a bare safetensors encoder is timm's.
fn decide_format(
    header: Option<MaeConfig>,
    json: Option<ConfigJson>,
    hf_named: bool,
    pickled: bool,
    has_decoder: bool,
) -> (Format, KnownConfig) {
    match (header, json) {
        (Some(c), _) => (Format::Ours, KnownConfig::Mae(c)),
        (None, Some(ConfigJson::Mae(c))) => (Format::HfVitMae, KnownConfig::Mae(c)),
        (None, Some(ConfigJson::Vit(c))) => (Format::HfVit, KnownConfig::Encoder(c)),
        (None, Some(ConfigJson::Timm(c))) => (Format::Timm, KnownConfig::Encoder(c)),
        (None, None) if hf_named => {
            (if has_decoder { Format::HfVitMae } else { Format::HfVit }, KnownConfig::None)
        }
        (None, None) if pickled || has_decoder => (Format::Official, KnownConfig::None),
        (None, None) => (Format::Timm, KnownConfig::None),
    }
}

/// A file none of whose tensors is ours: names a few of them, and says when it has no config
/// either (likely not a ViT checkpoint at all).
fn no_weights_error(source: String, ignored: &[String], config: &KnownConfig) -> MaeError {
    MaeError::Weights {
        origin: source,
        message: format!(
            "none of its tensors is a ViT or MAE weight (found: {}){}",
            preview(ignored),
            if *config == KnownConfig::None {
                "; it carries no config either (no mae header, no config.json beside it)"
            } else {
                ""
            }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn unrecognised_names_are_heads_errors_or_unknown() {
        let ignored =
            sort_unrecognised(names(&["extra.w", "head.weight", "pooler.dense.bias"]), false, "f").unwrap();
        assert_eq!(ignored, names(&["head.weight", "pooler.dense.bias", "extra.w"]));
        // `fc_norm` is a task head only on top of an intact encoder (final norm kept).
        let ignored = sort_unrecognised(names(&["fc_norm.weight", "head.bias"]), true, "f").unwrap();
        assert_eq!(ignored, names(&["fc_norm.weight", "head.bias"]));
        let err = sort_unrecognised(names(&["fc_norm.weight"]), false, "f").unwrap_err().to_string();
        assert!(err.contains("`fc_norm.weight`") && err.contains("does not implement"), "{err}");
    }

    #[test]
    fn the_format_without_a_config_comes_from_the_names() {
        let cases = [
            ((true, false, true), Format::HfVitMae),
            ((true, false, false), Format::HfVit),
            ((false, true, false), Format::Official),
            ((false, false, true), Format::Official),
            ((false, false, false), Format::Timm),
        ];
        for ((hf_named, pickled, has_decoder), want) in cases {
            let (format, config) = decide_format(None, None, hf_named, pickled, has_decoder);
            assert_eq!((format, config), (want, KnownConfig::None), "{hf_named} {pickled} {has_decoder}");
        }
        let mae = MaeConfig::mae_vit_base_patch16();
        let (format, _) = decide_format(Some(mae.clone()), Some(ConfigJson::Mae(mae)), true, false, true);
        assert_eq!(format, Format::Ours);
    }
}
