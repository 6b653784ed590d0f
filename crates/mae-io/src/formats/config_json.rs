//! `config.json` files: Hugging Face's ViTMAE and ViT configs (with transformers' defaults) and
//! timm's (`architecture` + `model_args` / `pretrained_cfg`), as our configs.

use std::path::Path;

use mae_vit::{PosEmbed, VitConfig};
use serde_json::Value;

use super::{check_vit, format_error};
use crate::config::{MaeConfig, StackShape};
use crate::error::{MaeError, Result};

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
    // Hub configs of the plain sizes often have no `model_args`: the name says it all.
    let empty = Value::Object(Default::default());
    let args_json = json.get("model_args").filter(|v| v.is_object()).unwrap_or(&empty);
    let args = Fields { json: args_json, path, what: "timm config.json (model_args)" };
    check_timm_args(&f, args_json)?;
    let known = timm_architecture(arch);
    // A size `model_args` leaves out is the architecture's; an architecture that is not a plain
    // size has no defaults to fall back on.
    let need = |key: &str, default: Option<usize>| -> Result<usize> {
        match (model_arg(args_json, key), default) {
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
    let input_size = pretrained_input_size(json);
    let image_size = timm_image_size(&args, input_size, known)?;
    let config = VitConfig {
        image_size,
        patch_size: need("patch_size", known.map(|k| k.1))?,
        in_channels: need("in_chans", Some(input_size.map_or(3, |s| s[0])))?,
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

/// A `model_args` field; `null` is timm's default, as if absent.
fn model_arg<'a>(args: &'a Value, key: &str) -> Option<&'a Value> {
    args.get(key).filter(|v| !v.is_null())
}

/// Refuses the `model_args` of timm's `VisionTransformer` variants that compute something else
/// than mae's ViT: their weights would load (the names match) and silently give other outputs.
fn check_timm_args(f: &Fields, args: &Value) -> Result<()> {
    let get = |k: &str| model_arg(args, k);
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
    // timm's `fc_norm: None` means "after pooling when the pool is an average": only an explicit
    // `false` keeps the final norm where mae's ViT has it.
    let pool = get("global_pool").and_then(Value::as_str).unwrap_or("token");
    if ["avg", "avgmax", "max"].contains(&pool) && get("fc_norm").and_then(Value::as_bool) != Some(false) {
        return Err(f.bad(format!(
            "model_args global_pool `{pool}` makes timm move the final norm after pooling (fc_norm), which mae's \
             ViT does not implement"
        )));
    }
    Ok(())
}

/// `pretrained_cfg.input_size` (`[channels, height, width]`), when it is one.
fn pretrained_input_size(json: &Value) -> Option<[usize; 3]> {
    json.get("pretrained_cfg")
        .and_then(|p| p.get("input_size"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_u64).map(|v| v as usize).collect::<Vec<_>>())
        .and_then(|a| a.try_into().ok())
}

/// The image size: `model_args.img_size`, else the pretrained input size (what the weights were
/// trained at), else the architecture's name, else 224.
fn timm_image_size(
    args: &Fields,
    input_size: Option<[usize; 3]>,
    known: Option<(TimmSize, usize, usize)>,
) -> Result<[usize; 2]> {
    if model_arg(args.json, "img_size").is_some() {
        return args.size("img_size", 224);
    }
    Ok(match (input_size, known) {
        (Some(s), _) => [s[1], s[2]],
        (None, Some(k)) => [k.2, k.2],
        (None, None) => [224, 224],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
