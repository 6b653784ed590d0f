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
//! 1.6 and later; [`crate::torch_zip`] checks every declared size first). Every tensor is checked against the configuration when a model is built from
//! a [`Checkpoint`], and errors name the tensor (and what the file calls it).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use mae_vit::{PosEmbed, VitConfig};
use serde_json::Value;

use crate::config::{MaeConfig, StackShape};
use crate::error::{MaeError, Result};
use crate::hub::{Hub, RepoId, WEIGHT_FILES};
use crate::io::WeightsFile;
use crate::naming::{self, Naming, Unrecognised};

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
        // Weights saved from a DistributedDataParallel wrapper carry `module.`.
        let tensors = if tensors.keys().all(|k| k.starts_with("module.")) {
            tensors.into_iter().map(|(k, v)| (k["module.".len()..].to_string(), v)).collect()
        } else {
            tensors
        };
        let hf_named = Naming::detect(tensors.keys()) == Naming::HuggingFace;
        let (ours, unrecognised, file_names) = if hf_named {
            let converted = naming::convert_from_hf(tensors, &source)?;
            (converted.tensors, converted.unknown, converted.file_names)
        } else {
            let (ours, other): (HashMap<_, _>, HashMap<_, _>) =
                tensors.into_iter().partition(|(k, _)| naming::is_ours(k));
            let mut other: Vec<String> = other.into_keys().collect();
            other.sort();
            (ours, other, HashMap::new())
        };
        let mut ignored = Vec::new();
        let mut unknown = Vec::new();
        // A classifier fine-tuned by `mae finetune` keeps the encoder's final norm and adds
        // `fc_norm` + `head` on top: the encoder is intact, and those two are its task head. (timm's
        // and the paper's average-pool fine-tunes drop the final norm instead: not our ViT.)
        let final_norm_kept = ours.contains_key("norm.weight");
        for name in unrecognised {
            match naming::classify_unrecognised(&name) {
                Unrecognised::Head => ignored.push(name),
                Unrecognised::Unsupported(_) if final_norm_kept && name.starts_with("fc_norm.") => {
                    ignored.push(name)
                }
                Unrecognised::Unsupported(what) => {
                    return Err(MaeError::Weights {
                        origin: source,
                        message: format!(
                            "tensor `{name}` belongs to {what}, which mae's ViT does not implement"
                        ),
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
        let has_decoder = ours.keys().any(|k| naming::is_decoder(k));
        let (format, config) = match (header, json) {
            (Some(c), _) => (Format::Ours, KnownConfig::Mae(c)),
            (None, Some(ConfigJson::Mae(c))) => (Format::HfVitMae, KnownConfig::Mae(c)),
            (None, Some(ConfigJson::Vit(c))) => (Format::HfVit, KnownConfig::Encoder(c)),
            (None, Some(ConfigJson::Timm(c))) => (Format::Timm, KnownConfig::Encoder(c)),
            (None, None) if hf_named => {
                (if has_decoder { Format::HfVitMae } else { Format::HfVit }, KnownConfig::None)
            }
            (None, None) if pickled || has_decoder => (Format::Official, KnownConfig::None),
            (None, None) => (Format::Timm, KnownConfig::None),
        };
        if ours.is_empty() {
            return Err(MaeError::Weights {
                origin: source,
                message: format!(
                    "none of its tensors is a ViT or MAE weight (found: {}){}",
                    preview(&ignored),
                    if config == KnownConfig::None {
                        "; it carries no config either (no mae header, no config.json beside it)"
                    } else {
                        ""
                    }
                ),
            });
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

/// The weights of a model directory: the first of [`WEIGHT_FILES`] present, else its only
/// weights file (`*.safetensors`, `*.pth`, `*.pt`, `*.bin`).
fn weights_in_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    for file in WEIGHT_FILES {
        let path = dir.join(file);
        if path.is_file() {
            if file.ends_with(".index.json") {
                return Ok(shard_names(&path)?.into_iter().map(|s| dir.join(s)).collect());
            }
            return Ok(vec![path]);
        }
    }
    let entries = std::fs::read_dir(dir).map_err(|e| MaeError::io(dir, e))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| ["safetensors", "pth", "pt", "bin"].contains(&e))
        })
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found),
        0 => Err(format_error(
            dir,
            "model folder",
            format!("it has none of {} (nor another .safetensors / .pth file)", WEIGHT_FILES.join(", ")),
        )),
        _ => Err(format_error(
            dir,
            "model folder",
            format!(
                "it has several weight files and none of the standard names; pass one of them: {}",
                found.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// The shard files named by a `model.safetensors.index.json`, in order.
pub fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| MaeError::io(index, e))?;
    let json: Value =
        serde_json::from_str(&text).map_err(|e| format_error(index, "shard index", e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| format_error(index, "shard index", "it has no `weight_map` object"))?;
    let mut files = BTreeSet::new();
    for (name, file) in map {
        let file = file.as_str().filter(|f| !f.contains("..") && !f.starts_with('/')).ok_or_else(|| {
            format_error(index, "shard index", format!("`{name}` maps to {file}, not a file name"))
        })?;
        files.insert(file.to_string());
    }
    Ok(files.into_iter().collect())
}

/// Tensors of one file, with our config when the header has it.
struct FileTensors {
    tensors: HashMap<String, Tensor>,
    header: Option<MaeConfig>,
    encoder_header: Option<VitConfig>,
    pickled: bool,
}

/// Reads a safetensors file or a PyTorch (zip) pickle, by content.
fn read_tensors(path: &Path, device: &Device) -> Result<FileTensors> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let n =
        std::fs::File::open(path).and_then(|mut f| f.read(&mut magic)).map_err(|e| MaeError::io(path, e))?;
    let magic = &magic[..n];
    if magic.starts_with(b"PK\x03\x04") {
        return Ok(FileTensors {
            tensors: crate::torch_zip::read_pickle(path)?,
            header: None,
            encoder_header: None,
            pickled: true,
        });
    }
    if magic.first() == Some(&0x80) && magic.get(1).is_some_and(|p| (2..=5).contains(p)) {
        return Err(format_error(
            path,
            "PyTorch checkpoint",
            "it is in PyTorch's legacy (pre-1.6) pickle format, which cannot be read here; re-save it with \
             `torch.save(torch.load(path), path)` in a recent PyTorch",
        ));
    }
    let file = WeightsFile::read(path, device)?;
    let header = file.mae_config()?;
    let encoder_header = file.classifier_encoder_config()?;
    Ok(FileTensors { tensors: file.tensors, header, encoder_header, pickled: false })
}

/// What a `config.json` describes.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigJson {
    /// Hugging Face ViTMAE (`model_type: vit_mae`).
    Mae(MaeConfig),
    /// Hugging Face ViT (`model_type: vit`).
    Vit(VitConfig),
    /// timm (`architecture`).
    Timm(VitConfig),
}

/// Reads a `config.json` of Hugging Face (ViTMAE, ViT) or timm.
pub fn read_config_json(path: &Path) -> Result<ConfigJson> {
    let text = std::fs::read_to_string(path).map_err(|e| MaeError::io(path, e))?;
    let json: Value =
        serde_json::from_str(&text).map_err(|e| format_error(path, "config.json", e.to_string()))?;
    config_from_json(&json, path)
}

/// [`read_config_json`] of parsed JSON; `path` is for messages.
pub fn config_from_json(json: &Value, path: &Path) -> Result<ConfigJson> {
    let architectures: Vec<&str> = json
        .get("architectures")
        .and_then(Value::as_array)
        .map_or(Vec::new(), |a| a.iter().filter_map(Value::as_str).collect());
    match json.get("model_type").and_then(Value::as_str) {
        Some("vit_mae") => return Ok(ConfigJson::Mae(hf_vitmae_config(json, path)?)),
        Some("vit") => return Ok(ConfigJson::Vit(hf_vit_config(json, path)?)),
        Some(other) => {
            return Err(format_error(
                path,
                "config.json",
                format!("model_type `{other}` is not supported (`vit_mae`, `vit`, or a timm config)"),
            ))
        }
        None => {}
    }
    if json.get("architecture").is_some() {
        return Ok(ConfigJson::Timm(timm_config(json, path)?));
    }
    if architectures.iter().any(|a| a.starts_with("ViTModel") || a.starts_with("ViTFor")) {
        return Ok(ConfigJson::Vit(hf_vit_config(json, path)?));
    }
    // transformers' ViTMAE is the default reading (as before this module existed).
    Ok(ConfigJson::Mae(hf_vitmae_config(json, path)?))
}

/// Field access with transformers' defaults and errors naming the field.
struct Fields<'a> {
    json: &'a Value,
    path: &'a Path,
    what: &'static str,
}

impl Fields<'_> {
    fn bad(&self, message: String) -> MaeError {
        format_error(self.path, self.what, message)
    }

    fn int(&self, key: &str, default: usize) -> Result<usize> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| self.bad(format!("`{key}` must be a positive integer, got {v}"))),
        }
    }

    fn float(&self, key: &str, default: f64) -> Result<f64> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.bad(format!("`{key}` must be a number, got {v}"))),
        }
    }

    fn boolean(&self, key: &str, default: bool) -> Result<bool> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.bad(format!("`{key}` must be true or false, got {v}"))),
        }
    }

    /// An int or `[h, w]`.
    fn size(&self, key: &str, default: usize) -> Result<[usize; 2]> {
        match self.json.get(key) {
            Some(Value::Array(a)) => match a.as_slice() {
                [h, w] => {
                    let side = |v: &Value| {
                        v.as_u64()
                            .map(|v| v as usize)
                            .ok_or_else(|| self.bad(format!("`{key}` must hold integers")))
                    };
                    Ok([side(h)?, side(w)?])
                }
                _ => Err(self.bad(format!("`{key}` must be an integer or [height, width]"))),
            },
            _ => {
                let s = self.int(key, default)?;
                Ok([s, s])
            }
        }
    }
}

/// The encoder fields shared by Hugging Face's ViT and ViTMAE configs.
fn hf_encoder(f: &Fields) -> Result<VitConfig> {
    if let Some(act) = f.json.get("hidden_act").and_then(Value::as_str) {
        if act != "gelu" {
            return Err(f.bad(format!("hidden_act `{act}` is not supported (only exact `gelu`)")));
        }
    }
    Ok(VitConfig {
        image_size: f.size("image_size", 224)?,
        patch_size: f.int("patch_size", 16)?,
        in_channels: f.int("num_channels", 3)?,
        embed_dim: f.int("hidden_size", 768)?,
        depth: f.int("num_hidden_layers", 12)?,
        num_heads: f.int("num_attention_heads", 12)?,
        mlp_dim: f.int("intermediate_size", 3072)?,
        qkv_bias: f.boolean("qkv_bias", true)?,
        layer_norm_eps: f.float("layer_norm_eps", 1e-12)?,
        pos_embed: PosEmbed::Learned,
    })
}

/// A Hugging Face `ViTMAEConfig`, with transformers' defaults for absent fields.
pub fn hf_vitmae_config(json: &Value, path: &Path) -> Result<MaeConfig> {
    let f = Fields { json, path, what: "Hugging Face config.json" };
    let e = hf_encoder(&f)?;
    let config = MaeConfig {
        image_size: e.image_size,
        patch_size: e.patch_size,
        in_channels: e.in_channels,
        encoder: StackShape { dim: e.embed_dim, depth: e.depth, num_heads: e.num_heads, mlp_dim: e.mlp_dim },
        decoder: StackShape {
            dim: f.int("decoder_hidden_size", 512)?,
            depth: f.int("decoder_num_hidden_layers", 8)?,
            num_heads: f.int("decoder_num_attention_heads", 16)?,
            mlp_dim: f.int("decoder_intermediate_size", 2048)?,
        },
        mask_ratio: f.float("mask_ratio", 0.75)?,
        norm_pix_loss: f.boolean("norm_pix_loss", false)?,
        layer_norm_eps: e.layer_norm_eps,
        qkv_bias: e.qkv_bias,
        pos_embed: PosEmbed::Sincos,
        decoder_pos_embed: PosEmbed::Sincos,
    };
    config.validate().map_err(|e| f.bad(e.to_string()))?;
    Ok(config)
}

/// A Hugging Face `ViTConfig` (an encoder with a learned position table, LayerNorm eps 1e-12).
pub fn hf_vit_config(json: &Value, path: &Path) -> Result<VitConfig> {
    let f = Fields { json, path, what: "Hugging Face config.json" };
    let config = hf_encoder(&f)?;
    check_vit(&config).map_err(|m| f.bad(m))?;
    Ok(config)
}

/// One of timm's plain ViT sizes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimmSize {
    pub name: &'static str,
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp_ratio: f64,
}

const fn size(name: &'static str, dim: usize, depth: usize, heads: usize, mlp_ratio: f64) -> TimmSize {
    TimmSize { name, dim, depth, heads, mlp_ratio }
}

/// timm's plain ViT sizes (`vit_{name}_patch..`).
pub const TIMM_VIT_SIZES: [TimmSize; 8] = [
    size("tiny", 192, 12, 3, 4.0),
    size("small", 384, 12, 6, 4.0),
    size("medium", 512, 12, 8, 4.0),
    size("base", 768, 12, 12, 4.0),
    size("large", 1024, 24, 16, 4.0),
    size("huge", 1280, 32, 16, 4.0),
    size("giant", 1408, 40, 16, 48.0 / 11.0),
    size("gigantic", 1664, 48, 16, 64.0 / 13.0),
];

/// A timm architecture `vit_{size}_patch{p}_{img}`: its size, patch and image size.
pub fn timm_architecture(name: &str) -> Option<(TimmSize, usize, usize)> {
    let rest = name.strip_prefix("vit_")?;
    let (size, rest) = rest.split_once("_patch")?;
    let (patch, image) = rest.split_once('_')?;
    let row = TIMM_VIT_SIZES.iter().find(|r| r.name == size)?;
    Some((*row, patch.parse().ok()?, image.parse().ok()?))
}

/// timm's `int(dim * mlp_ratio)`.
pub fn timm_mlp_dim_of(dim: usize, ratio: f64) -> usize {
    (dim as f64 * ratio) as usize
}

/// A timm `config.json` (`architecture`, `model_args`, `pretrained_cfg`) as an encoder config:
/// the architecture's defaults, overridden by `model_args`. LayerNorm eps is timm's 1e-6, the
/// position table is learned.
pub fn timm_config(json: &Value, path: &Path) -> Result<VitConfig> {
    let f = Fields { json, path, what: "timm config.json" };
    let arch = json
        .get("architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| f.bad("`architecture` must be a string".into()))?;
    let empty = Value::Object(Default::default());
    let args_json = json.get("model_args").filter(|v| v.is_object()).unwrap_or(&empty);
    let args = Fields { json: args_json, path, what: "timm config.json (model_args)" };
    let get = |k: &str| args_json.get(k).filter(|v| !v.is_null());
    // Variants of timm's VisionTransformer that compute something else.
    let unsupported = [
        ("class_token", get("class_token").and_then(Value::as_bool) == Some(false), "no cls token"),
        (
            "no_embed_class",
            get("no_embed_class").and_then(Value::as_bool) == Some(true),
            "no position for the cls token",
        ),
        ("reg_tokens", get("reg_tokens").and_then(Value::as_u64).is_some_and(|n| n > 0), "register tokens"),
        ("pre_norm", get("pre_norm").and_then(Value::as_bool) == Some(true), "a norm before the blocks"),
        ("init_values", get("init_values").is_some(), "layer scale"),
        ("qk_norm", get("qk_norm").and_then(Value::as_bool) == Some(true), "query/key normalisation"),
        ("fc_norm", get("fc_norm").and_then(Value::as_bool) == Some(true), "a norm after pooling"),
        (
            "act_layer",
            get("act_layer").and_then(Value::as_str).is_some_and(|a| a != "gelu"),
            "another activation",
        ),
    ];
    if let Some((key, _, what)) = unsupported.iter().find(|u| u.1) {
        return Err(f.bad(format!("model_args `{key}` asks for {what}, which mae's ViT does not implement")));
    }
    let pool = get("global_pool").and_then(Value::as_str).unwrap_or("token");
    if ["avg", "avgmax", "max"].contains(&pool) && get("fc_norm").and_then(Value::as_bool) != Some(false) {
        return Err(f.bad(format!(
            "model_args global_pool `{pool}` makes timm move the final norm after pooling (fc_norm), which mae's \
             ViT does not implement"
        )));
    }
    let known = timm_architecture(arch);
    let need = |key: &str, default: Option<usize>| -> Result<usize> {
        match (get(key), default) {
            (Some(_), _) => args.int(key, 0),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(f.bad(format!(
                "architecture `{arch}` is not a plain timm ViT (vit_{{tiny,small,base,large,huge}}_patch{{P}}_{{SIZE}}) \
                 and model_args has no `{key}`"
            ))),
        }
    };
    let embed_dim = need("embed_dim", known.map(|k| k.0.dim))?;
    let mlp_ratio = args.float("mlp_ratio", known.map_or(4.0, |k| k.0.mlp_ratio))?;
    let input_size = json
        .get("pretrained_cfg")
        .and_then(|p| p.get("input_size"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_u64).map(|v| v as usize).collect::<Vec<_>>())
        .filter(|a| a.len() == 3);
    let image_size = match get("img_size") {
        Some(_) => args.size("img_size", 224)?,
        None => match (&input_size, known) {
            (Some(s), _) => [s[1], s[2]],
            (None, Some(k)) => [k.2, k.2],
            (None, None) => [224, 224],
        },
    };
    let config = VitConfig {
        image_size,
        patch_size: need("patch_size", known.map(|k| k.1))?,
        in_channels: need("in_chans", Some(input_size.as_ref().map_or(3, |s| s[0])))?,
        embed_dim,
        depth: need("depth", known.map(|k| k.0.depth))?,
        num_heads: need("num_heads", known.map(|k| k.0.heads))?,
        mlp_dim: timm_mlp_dim_of(embed_dim, mlp_ratio),
        qkv_bias: args.boolean("qkv_bias", true)?,
        layer_norm_eps: 1e-6,
        pos_embed: PosEmbed::Learned,
    };
    check_vit(&config).map_err(|m| f.bad(m))?;
    Ok(config)
}

/// Whether an encoder config is buildable; the message names the field.
pub fn check_vit(c: &VitConfig) -> std::result::Result<(), String> {
    let [h, w] = c.image_size;
    let p = c.patch_size;
    if p == 0 || h == 0 || w == 0 || h % p != 0 || w % p != 0 {
        return Err(format!("image_size {h}x{w} must be a positive multiple of patch_size {p}"));
    }
    if c.in_channels == 0 {
        return Err("in_channels must be positive".into());
    }
    if c.embed_dim == 0 || c.num_heads == 0 || !c.embed_dim.is_multiple_of(c.num_heads) || c.mlp_dim == 0 {
        return Err(format!(
            "embed_dim {} must be a positive multiple of num_heads {} and mlp_dim positive",
            c.embed_dim, c.num_heads
        ));
    }
    if c.pos_embed == PosEmbed::Sincos && !c.embed_dim.is_multiple_of(4) {
        return Err(format!(
            "sin-cos position embeddings need embed_dim divisible by 4, got {}",
            c.embed_dim
        ));
    }
    if !c.layer_norm_eps.is_finite() || c.layer_norm_eps <= 0.0 {
        return Err(format!("layer_norm_eps must be positive, got {}", c.layer_norm_eps));
    }
    Ok(())
}

/// Attention heads of a transformer `width` wide, as the paper's and timm's models have them
/// (the MAE decoder: 16 at 512), else one head per 64 channels.
pub fn heads_for_width(width: usize, decoder: bool) -> Option<usize> {
    match width {
        512 if decoder => Some(16),
        _ => TIMM_VIT_SIZES
            .iter()
            .find(|r| r.dim == width)
            .map(|r| r.heads)
            .or((width > 0 && width.is_multiple_of(64)).then_some(width / 64)),
    }
}

fn shape_of<'a>(
    shapes: &'a HashMap<String, Vec<usize>>,
    name: &str,
) -> std::result::Result<&'a [usize], String> {
    shapes.get(name).map(Vec::as_slice).ok_or_else(|| {
        format!("it has no config (no config.json beside it) and no `{name}` to read the shape from")
    })
}

fn depth_of(shapes: &HashMap<String, Vec<usize>>, prefix: &str) -> usize {
    shapes
        .keys()
        .filter_map(|k| k.strip_prefix(prefix)?.split_once('.')?.0.parse::<usize>().ok())
        .max()
        .map_or(0, |m| m + 1)
}

/// An encoder config from the shapes of weights in our naming: width, channels and patch from
/// `patch_embed.proj.weight`, the (square) grid from `pos_embed`, depth, MLP width, qkv bias;
/// heads from [`heads_for_width`]. The position table is learned (the file's).
pub fn infer_vit_config(
    shapes: &HashMap<String, Vec<usize>>,
    layer_norm_eps: f64,
) -> std::result::Result<VitConfig, String> {
    let (d, c, p) = match shape_of(shapes, "patch_embed.proj.weight")? {
        &[d, c, p, q] if p == q => (d, c, p),
        other => {
            return Err(format!("`patch_embed.proj.weight` has shape {other:?}, not [dim, channels, p, p]"))
        }
    };
    let n = match shape_of(shapes, "pos_embed")? {
        &[1, n, dd] if dd == d && n > 1 => n - 1,
        other => return Err(format!("`pos_embed` has shape {other:?}, not [1, 1 + patches, {d}]")),
    };
    let grid = (n as f64).sqrt().round() as usize;
    if grid * grid != n {
        let hint = if ((n + 1) as f64).sqrt().round().powi(2) as usize == n + 1 {
            " (it looks like a table without a cls row, timm's `no_embed_class`, which mae does not implement)"
        } else {
            " (a non-square grid needs a config.json)"
        };
        return Err(format!("`pos_embed` has {n} patch rows, not a square grid{hint}"));
    }
    let depth = depth_of(shapes, "blocks.");
    let mlp_dim = match shapes.get("blocks.0.mlp.fc1.weight").map(Vec::as_slice) {
        Some(&[m, _]) => m,
        _ => 4 * d,
    };
    let num_heads = heads_for_width(d, false).ok_or_else(|| {
        format!("it has no config, and the attention heads of a {d}-wide encoder cannot be told from the weights; put a config.json beside it")
    })?;
    let config = VitConfig {
        image_size: [grid * p, grid * p],
        patch_size: p,
        in_channels: c,
        embed_dim: d,
        depth,
        num_heads,
        mlp_dim,
        qkv_bias: shapes.contains_key("blocks.0.attn.qkv.bias"),
        layer_norm_eps,
        pos_embed: PosEmbed::Learned,
    };
    check_vit(&config)?;
    Ok(config)
}

/// The decoder's shape from the shapes of weights in our naming.
pub fn infer_decoder_shape(shapes: &HashMap<String, Vec<usize>>) -> std::result::Result<StackShape, String> {
    let dim = match shape_of(shapes, "decoder_embed.weight")? {
        &[dd, _] => dd,
        other => return Err(format!("`decoder_embed.weight` has shape {other:?}, not [decoder dim, dim]")),
    };
    let mlp_dim = match shapes.get("decoder_blocks.0.mlp.fc1.weight").map(Vec::as_slice) {
        Some(&[m, _]) => m,
        _ => 4 * dim,
    };
    let num_heads = heads_for_width(dim, true).ok_or_else(|| {
        format!("it has no config, and the attention heads of a {dim}-wide decoder cannot be told from the weights; put a config.json beside it")
    })?;
    Ok(StackShape { dim, depth: depth_of(shapes, "decoder_blocks."), num_heads, mlp_dim })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paper_shapes(d: usize, depth: usize, dd: usize, p: usize, grid: usize) -> HashMap<String, Vec<usize>> {
        let mut s = HashMap::new();
        s.insert("patch_embed.proj.weight".to_string(), vec![d, 3, p, p]);
        s.insert("pos_embed".to_string(), vec![1, 1 + grid * grid, d]);
        for i in 0..depth {
            s.insert(format!("blocks.{i}.mlp.fc1.weight"), vec![4 * d, d]);
            s.insert(format!("blocks.{i}.attn.qkv.bias"), vec![3 * d]);
        }
        s.insert("decoder_embed.weight".to_string(), vec![dd, d]);
        for i in 0..8 {
            s.insert(format!("decoder_blocks.{i}.mlp.fc1.weight"), vec![4 * dd, dd]);
        }
        s
    }

    #[test]
    fn reads_the_papers_models_from_their_shapes() {
        for (preset, d, depth, p) in [
            ("mae-vit-base-patch16", 768, 12, 16),
            ("mae-vit-large-patch16", 1024, 24, 16),
            ("mae-vit-huge-patch14", 1280, 32, 14),
        ] {
            let shapes = paper_shapes(d, depth, 512, p, 224 / p);
            let v = infer_vit_config(&shapes, 1e-6).unwrap();
            let want = MaeConfig::preset(preset).unwrap();
            let mut enc = want.encoder_config();
            enc.pos_embed = PosEmbed::Learned;
            assert_eq!(v, enc, "{preset}");
            assert_eq!(infer_decoder_shape(&shapes).unwrap(), want.decoder, "{preset}");
        }
    }

    #[test]
    fn shapes_that_do_not_say_enough_are_errors() {
        let mut shapes = paper_shapes(48, 1, 32, 4, 8);
        let err = infer_vit_config(&shapes, 1e-6).unwrap_err();
        assert!(err.contains("48-wide") && err.contains("config.json"), "{err}");
        shapes.insert("patch_embed.proj.weight".into(), vec![64, 3, 4, 4]);
        shapes.insert("pos_embed".into(), vec![1, 64, 64]);
        let err = infer_vit_config(&shapes, 1e-6).unwrap_err();
        assert!(err.contains("no_embed_class"), "{err}");
        shapes.remove("pos_embed");
        let err = infer_vit_config(&shapes, 1e-6).unwrap_err();
        assert!(err.contains("`pos_embed`"), "{err}");
    }

    #[test]
    fn timm_architectures_and_configs() {
        let (size, p, img) = timm_architecture("vit_huge_patch14_224").unwrap();
        assert_eq!((size.name, size.dim, size.depth, size.heads, p, img), ("huge", 1280, 32, 16, 14, 224));
        assert!(timm_architecture("vit_base_patch16_clip_224").is_none());
        assert_eq!(timm_mlp_dim_of(1408, 48.0 / 11.0), 6144);

        let json: Value = serde_json::json!({
            "architecture": "vit_base_patch16_224",
            "num_classes": 0,
            "global_pool": "token",
            "pretrained_cfg": {"tag": "mae", "input_size": [3, 224, 224], "num_classes": 0}
        });
        let c = timm_config(&json, Path::new("config.json")).unwrap();
        let mut want = MaeConfig::mae_vit_base_patch16().encoder_config();
        want.pos_embed = PosEmbed::Learned;
        assert_eq!(c, want);

        let json: Value = serde_json::json!({
            "architecture": "vit_base_patch16_224",
            "model_args": {"img_size": 32, "patch_size": 4, "embed_dim": 48, "depth": 2, "num_heads": 3, "mlp_ratio": 4.0}
        });
        let c = timm_config(&json, Path::new("config.json")).unwrap();
        assert_eq!(
            (c.image_size, c.patch_size, c.embed_dim, c.depth, c.num_heads, c.mlp_dim),
            ([32, 32], 4, 48, 2, 3, 192)
        );

        for bad in [
            serde_json::json!({"architecture": "vit_base_patch16_224", "model_args": {"init_values": 1e-5}}),
            serde_json::json!({"architecture": "vit_base_patch16_224", "model_args": {"global_pool": "avg"}}),
            serde_json::json!({"architecture": "vit_so400m_patch14_siglip_224"}),
        ] {
            let err = timm_config(&bad, Path::new("config.json")).unwrap_err().to_string();
            assert!(err.contains("config.json"), "{err}");
        }
    }

    #[test]
    fn config_json_kinds() {
        let p = Path::new("config.json");
        let vit = serde_json::json!({"model_type": "vit", "hidden_size": 768, "layer_norm_eps": 1e-12});
        match config_from_json(&vit, p).unwrap() {
            ConfigJson::Vit(c) => assert_eq!((c.pos_embed, c.layer_norm_eps), (PosEmbed::Learned, 1e-12)),
            other => panic!("{other:?}"),
        }
        let mae = serde_json::json!({"model_type": "vit_mae"});
        assert_eq!(config_from_json(&mae, p).unwrap(), ConfigJson::Mae(hf_vitmae_config(&mae, p).unwrap()));
        let err = config_from_json(&serde_json::json!({"model_type": "dinov2"}), p).unwrap_err().to_string();
        assert!(err.contains("dinov2"), "{err}");
    }
}
