//! An encoder's config and a decoder's shape read from the shapes of weights in our naming, for
//! checkpoints without a config (the paper's `.pth`, bare timm files), and the check that an
//! encoder config is buildable.

use std::collections::HashMap;

use mae_vit::{PosEmbed, VitConfig};

use super::TIMM_VIT_SIZES;
use crate::config::StackShape;

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
    use crate::config::MaeConfig;

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
}
