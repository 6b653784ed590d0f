//! Conversions between weight namings, as pure renaming-and-reshaping functions (timm's
//! `checkpoint_filter_fn` idea). Ours: timm names for the encoder, the official facebookresearch/mae
//! names for the decoder. Hugging Face `ViTMAEForPreTraining` splits qkv into query/key/value and
//! nests everything under `vit.` / `decoder.`; hub checkpoints name decoder layers
//! `decoder.decoder_layers.N`, transformers 5.x saves them as `decoder.decoder_encoder.layer.N`.

use std::collections::HashMap;

use candle_core::Tensor;

use crate::error::{MaeError, Result};

/// Which naming a set of weights uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// timm encoder + official decoder names (ours, the paper's checkpoints, timm's MAE tags).
    Ours,
    /// Hugging Face `ViTMAEForPreTraining` / `ViTMAEModel` / `ViTModel`.
    HuggingFace,
}

impl Naming {
    pub fn detect<'a>(mut names: impl Iterator<Item = &'a String>) -> Self {
        if names
            .any(|n| n.starts_with("vit.") || n.starts_with("embeddings.") || n.starts_with("encoder.layer."))
        {
            Naming::HuggingFace
        } else {
            Naming::Ours
        }
    }
}

/// Sub-module renames inside one transformer layer: (ours, Hugging Face).
const LAYER_PARTS: [(&str, &str); 5] = [
    ("norm1", "layernorm_before"),
    ("attn.proj", "attention.output.dense"),
    ("norm2", "layernorm_after"),
    ("mlp.fc1", "intermediate.dense"),
    ("mlp.fc2", "output.dense"),
];

/// Non-layer renames: (ours, Hugging Face).
const GLOBAL_PARTS: [(&str, &str); 9] = [
    ("cls_token", "vit.embeddings.cls_token"),
    ("pos_embed", "vit.embeddings.position_embeddings"),
    ("patch_embed.proj", "vit.embeddings.patch_embeddings.projection"),
    ("norm", "vit.layernorm"),
    ("decoder_embed", "decoder.decoder_embed"),
    ("mask_token", "decoder.mask_token"),
    ("decoder_pos_embed", "decoder.decoder_pos_embed"),
    ("decoder_norm", "decoder.decoder_norm"),
    ("decoder_pred", "decoder.decoder_pred"),
];

/// Hugging Face layer prefixes: (ours, HF, HF alternative).
const LAYER_PREFIXES: [(&str, &str, &str); 2] = [
    ("blocks.", "vit.encoder.layer.", "encoder.layer."),
    ("decoder_blocks.", "decoder.decoder_layers.", "decoder.decoder_encoder.layer."),
];

const QKV: [&str; 3] = ["query", "key", "value"];

/// Renames Hugging Face weights to ours, joining query/key/value into one `qkv`.
/// `source` names the file for error messages. Unknown names are returned separately.
pub fn from_hf(
    tensors: HashMap<String, Tensor>,
    source: &str,
) -> Result<(HashMap<String, Tensor>, Vec<String>)> {
    let converted = convert_from_hf(tensors, source)?;
    Ok((converted.tensors, converted.unknown))
}

/// Weights renamed to ours, with what the file called them.
#[derive(Debug, Default)]
pub struct Converted {
    /// In our naming.
    pub tensors: HashMap<String, Tensor>,
    /// Names that have no counterpart of ours, sorted (in the file's naming).
    pub unknown: Vec<String>,
    /// Our name -> the file's name(s), where they differ (for error messages).
    pub file_names: HashMap<String, String>,
}

/// [`from_hf`], also recording the file's name of every converted tensor.
pub fn convert_from_hf(tensors: HashMap<String, Tensor>, source: &str) -> Result<Converted> {
    // An encoder-only ViTModel has no `vit.` prefix.
    let prefixed = tensors.keys().any(|k| k.starts_with("vit."));
    let mut out = Converted::default();
    // (our qkv prefix, leaf) -> (file name, tensor) of query, key, value.
    type Parts = [Option<(String, Tensor)>; 3];
    let mut qkv_parts: HashMap<(String, String), Parts> = HashMap::new();
    for (original, tensor) in tensors {
        let name = if prefixed { original.clone() } else { format!("vit.{original}") };
        if let Some((ours_prefix, index, rest)) = split_layer(&name) {
            if let Some(part) = rest.strip_prefix("attention.attention.") {
                if let Some((which, leaf)) = part.split_once('.') {
                    if let Some(slot) = QKV.iter().position(|q| *q == which) {
                        let key = (format!("{ours_prefix}{index}.attn.qkv"), leaf.to_string());
                        qkv_parts.entry(key).or_default()[slot] = Some((original, tensor));
                        continue;
                    }
                }
            }
            match LAYER_PARTS.iter().find_map(|(o, h)| rest.strip_prefix(h).map(|leaf| (o, leaf))) {
                Some((ours, leaf)) => {
                    let ours = format!("{ours_prefix}{index}.{ours}{leaf}");
                    out.file_names.insert(ours.clone(), original);
                    out.tensors.insert(ours, tensor);
                }
                None => out.unknown.push(original),
            }
            continue;
        }
        match GLOBAL_PARTS.iter().find_map(|(o, h)| name.strip_prefix(h).map(|leaf| (o, leaf))) {
            Some((ours, leaf)) if leaf.is_empty() || leaf.starts_with('.') => {
                let ours = format!("{ours}{leaf}");
                out.file_names.insert(ours.clone(), original);
                out.tensors.insert(ours, tensor);
            }
            _ => out.unknown.push(original),
        }
    }
    for ((prefix, leaf), parts) in qkv_parts {
        let mut found = Vec::with_capacity(3);
        for (part, which) in parts.iter().zip(QKV) {
            match part {
                Some(p) => found.push(p),
                None => {
                    return Err(MaeError::Weights {
                        origin: source.to_string(),
                        message: format!("`{prefix}` has no attention `{which}.{leaf}` to join into qkv"),
                    })
                }
            }
        }
        let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        if found.iter().any(|(_, t)| t.dims() != found[0].1.dims()) {
            let shapes: Vec<String> = found.iter().map(|(n, t)| format!("`{n}` {:?}", t.dims())).collect();
            return Err(MaeError::Weights {
                origin: source.to_string(),
                message: format!("query, key and value differ in shape: {}", shapes.join(", ")),
            });
        }
        let tensors: Vec<&Tensor> = found.iter().map(|(_, t)| t).collect();
        let ours = format!("{prefix}.{leaf}");
        out.file_names.insert(ours.clone(), names.join(" + "));
        out.tensors.insert(ours, Tensor::cat(&tensors, 0)?);
    }
    out.unknown.sort();
    Ok(out)
}

/// Whether `name` is one of our (timm encoder / official decoder) parameter names, by pattern.
pub fn is_ours(name: &str) -> bool {
    const GLOBAL: [&str; 9] = [
        "cls_token",
        "pos_embed",
        "patch_embed.proj.",
        "norm.",
        "mask_token",
        "decoder_embed.",
        "decoder_pos_embed",
        "decoder_norm.",
        "decoder_pred.",
    ];
    if let Some(rest) = name.strip_prefix("blocks.").or_else(|| name.strip_prefix("decoder_blocks.")) {
        let Some((index, rest)) = rest.split_once('.') else { return false };
        return index.parse::<usize>().is_ok()
            && ["norm1.", "attn.qkv.", "attn.proj.", "norm2.", "mlp.fc1.", "mlp.fc2."]
                .iter()
                .any(|p| rest.starts_with(p));
    }
    GLOBAL.iter().any(|g| if g.ends_with('.') { name.starts_with(g) } else { name == *g })
}

/// What a name that is not ours means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrecognised {
    /// A task head or pooler that MAE does not use (`head.*`, `pooler.*`, `classifier.*`).
    Head,
    /// A part of a ViT variant that changes the computation and that mae does not implement; the
    /// text says which.
    Unsupported(&'static str),
    /// Anything else.
    Unknown,
}

/// Sorts a name that is neither ours nor Hugging Face's known ones (file naming).
pub fn classify_unrecognised(name: &str) -> Unrecognised {
    let bare = name.strip_prefix("vit.").unwrap_or(name);
    if ["head.", "head_dist.", "pooler.", "classifier.", "fc_norm_head."].iter().any(|p| bare.starts_with(p))
    {
        return Unrecognised::Head;
    }
    const UNSUPPORTED: [(&str, &str); 9] = [
        (".ls1.", "layer scale (timm `init_values`)"),
        (".ls2.", "layer scale (timm `init_values`)"),
        ("norm_pre.", "a norm before the blocks (timm `pre_norm`, CLIP-style)"),
        ("reg_token", "register tokens"),
        ("dist_token", "a distillation token (DeiT)"),
        (".q_norm.", "query/key normalisation (timm `qk_norm`)"),
        (".k_norm.", "query/key normalisation (timm `qk_norm`)"),
        ("fc_norm.", "a norm after average pooling instead of the final norm (timm `fc_norm`)"),
        ("attn_pool.", "an attention-pooling head"),
    ];
    let dotted = format!(".{bare}");
    UNSUPPORTED
        .iter()
        .find(|(pattern, _)| dotted.contains(pattern))
        .map_or(Unrecognised::Unknown, |(_, what)| Unrecognised::Unsupported(what))
}

/// The encoder's weights of ours in timm's `VisionTransformer` naming (the same names: this
/// selects them, position table included).
pub fn to_timm(tensors: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    tensors
        .iter()
        .filter(|(name, _)| is_ours(name) && !is_decoder(name))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Whether one of our names belongs to the MAE decoder.
pub fn is_decoder(name: &str) -> bool {
    name.starts_with("decoder_") || name == "mask_token"
}

/// `vit.encoder.layer.3.attention...` -> (`blocks.`, `3`, `attention...`).
fn split_layer(name: &str) -> Option<(&'static str, &str, &str)> {
    LAYER_PREFIXES.iter().find_map(|(ours, hf, alt)| {
        let rest = name.strip_prefix(hf).or_else(|| name.strip_prefix(alt))?;
        let (index, rest) = rest.split_once('.')?;
        index.parse::<usize>().ok()?;
        Some((*ours, index, rest))
    })
}

/// Renames our weights to Hugging Face's `ViTMAEForPreTraining` (hub naming), splitting qkv.
pub fn to_hf(tensors: &HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for (name, tensor) in tensors {
        if let Some((hf_prefix, index, rest)) = LAYER_PREFIXES.iter().find_map(|(ours, hf, _)| {
            let (index, rest) = name.strip_prefix(ours)?.split_once('.')?;
            Some((*hf, index, rest))
        }) {
            let layer = format!("{hf_prefix}{index}");
            if let Some(leaf) = rest.strip_prefix("attn.qkv") {
                let d = tensor.dim(0)? / 3;
                for (i, which) in QKV.iter().enumerate() {
                    out.insert(
                        format!("{layer}.attention.attention.{which}{leaf}"),
                        tensor.narrow(0, i * d, d)?,
                    );
                }
                continue;
            }
            let (hf, leaf) = LAYER_PARTS
                .iter()
                .find_map(|(o, h)| rest.strip_prefix(o).map(|leaf| (h, leaf)))
                .ok_or_else(|| unmapped(name))?;
            out.insert(format!("{layer}.{hf}{leaf}"), tensor.clone());
            continue;
        }
        let (hf, leaf) = GLOBAL_PARTS
            .iter()
            .find_map(|(o, h)| {
                name.strip_prefix(o).filter(|l| l.is_empty() || l.starts_with('.')).map(|l| (h, l))
            })
            .ok_or_else(|| unmapped(name))?;
        out.insert(format!("{hf}{leaf}"), tensor.clone());
    }
    Ok(out)
}

fn unmapped(name: &str) -> MaeError {
    MaeError::Weights { origin: "export".into(), message: format!("no Hugging Face name for `{name}`") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: f32, n: usize) -> Tensor {
        Tensor::full(v, n, &Device::Cpu).unwrap()
    }

    #[test]
    fn round_trips_and_joins_qkv_in_q_k_v_order() {
        let ours: HashMap<String, Tensor> = [
            ("cls_token", t(1., 4)),
            ("patch_embed.proj.weight", t(2., 4)),
            ("blocks.0.attn.qkv.weight", Tensor::arange(0f32, 6., &Device::Cpu).unwrap()),
            ("blocks.0.norm1.bias", t(3., 2)),
            ("blocks.11.mlp.fc2.weight", t(4., 2)),
            ("norm.weight", t(5., 2)),
            ("decoder_blocks.2.attn.proj.bias", t(6., 2)),
            ("decoder_norm.weight", t(7., 2)),
            ("decoder_pred.bias", t(8., 2)),
            ("mask_token", t(9., 2)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let hf = to_hf(&ours).unwrap();
        let q = hf["vit.encoder.layer.0.attention.attention.query.weight"].to_vec1::<f32>().unwrap();
        assert_eq!(q, vec![0., 1.]);
        assert!(hf.contains_key("decoder.decoder_layers.2.attention.output.dense.bias"));
        assert!(hf.contains_key("vit.layernorm.weight"));
        assert!(hf.contains_key("vit.encoder.layer.11.output.dense.weight"));
        let (back, unknown) = from_hf(hf, "test").unwrap();
        assert!(unknown.is_empty(), "{unknown:?}");
        let mut keys: Vec<_> = back.keys().collect();
        keys.sort();
        let mut expected: Vec<_> = ours.keys().collect();
        expected.sort();
        assert_eq!(keys, expected);
        assert_eq!(back["blocks.0.attn.qkv.weight"].to_vec1::<f32>().unwrap(), vec![0., 1., 2., 3., 4., 5.]);
    }

    #[test]
    fn reads_the_transformers_5_decoder_naming_and_reports_strays() {
        let hf: HashMap<String, Tensor> = [
            ("decoder.decoder_encoder.layer.1.layernorm_before.weight", t(1., 2)),
            ("vit.embeddings.foo", t(1., 2)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let (ours, unknown) = from_hf(hf, "x").unwrap();
        assert!(ours.contains_key("decoder_blocks.1.norm1.weight"));
        assert_eq!(unknown, vec!["vit.embeddings.foo".to_string()]);
    }

    #[test]
    fn sorts_names_that_are_not_ours() {
        for name in ["blocks.3.attn.qkv.bias", "decoder_blocks.0.mlp.fc2.weight", "pos_embed", "norm.weight"]
        {
            assert!(is_ours(name), "{name}");
        }
        for name in ["blocks.x.norm1.weight", "head.weight", "norm", "pos_embed_extra", "blocks.0.ls1.gamma"]
        {
            assert!(!is_ours(name), "{name}");
        }
        assert_eq!(classify_unrecognised("head.weight"), Unrecognised::Head);
        assert_eq!(classify_unrecognised("pooler.dense.bias"), Unrecognised::Head);
        assert!(matches!(classify_unrecognised("blocks.0.ls1.gamma"), Unrecognised::Unsupported(_)));
        assert!(matches!(classify_unrecognised("norm_pre.weight"), Unrecognised::Unsupported(_)));
        assert!(matches!(classify_unrecognised("fc_norm.weight"), Unrecognised::Unsupported(_)));
        assert_eq!(classify_unrecognised("vit.embeddings.foo"), Unrecognised::Unknown);
    }

    #[test]
    fn records_the_files_names_and_checks_qkv_shapes() {
        let hf: HashMap<String, Tensor> = [
            ("encoder.layer.0.attention.attention.query.weight", t(1., 2)),
            ("encoder.layer.0.attention.attention.key.weight", t(2., 2)),
            ("encoder.layer.0.attention.attention.value.weight", t(3., 2)),
            ("layernorm.bias", t(4., 2)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let out = convert_from_hf(hf.clone(), "x").unwrap();
        assert_eq!(out.file_names["norm.bias"], "layernorm.bias");
        assert!(out.file_names["blocks.0.attn.qkv.weight"].contains("attention.attention.key.weight"));
        let mut bad = hf;
        bad.insert("encoder.layer.0.attention.attention.key.weight".into(), t(2., 3));
        let err = convert_from_hf(bad, "x").unwrap_err().to_string();
        assert!(err.contains("encoder.layer.0.attention.attention.key.weight` [3]"), "{err}");
    }

    #[test]
    fn a_missing_value_projection_is_an_error_naming_it() {
        let hf: HashMap<String, Tensor> = [
            ("vit.encoder.layer.0.attention.attention.query.weight", t(1., 2)),
            ("vit.encoder.layer.0.attention.attention.key.weight", t(1., 2)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let err = from_hf(hf, "model.safetensors").unwrap_err().to_string();
        assert!(err.contains("value") && err.contains("model.safetensors"), "{err}");
    }
}
