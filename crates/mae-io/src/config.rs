//! `MaeConfig`: the whole model's shape and loss options, with the named presets.

use mae_decoder::DecoderConfig;
use mae_vit::{PosEmbed, VitConfig};
use serde::{Deserialize, Serialize};

use crate::error::{MaeError, Result};

/// Width, depth and heads of a transformer stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackShape {
    pub dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_dim: usize,
}

impl StackShape {
    /// The usual MLP ratio of 4.
    pub const fn new(dim: usize, depth: usize, num_heads: usize) -> Self {
        Self { dim, depth, num_heads, mlp_dim: 4 * dim }
    }
}

/// A Masked Autoencoder: ViT encoder, MAE decoder, masking and loss options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaeConfig {
    /// `[height, width]` in pixels, multiples of `patch_size`.
    pub image_size: [usize; 2],
    pub patch_size: usize,
    pub in_channels: usize,
    pub encoder: StackShape,
    pub decoder: StackShape,
    /// Fraction of patches removed (0.75 in the paper).
    pub mask_ratio: f64,
    /// Predict per-patch normalised pixels (the paper's better-representation option).
    pub norm_pix_loss: bool,
    /// 1e-6 in the paper and timm, 1e-12 in Hugging Face's ViTMAE.
    pub layer_norm_eps: f64,
    pub qkv_bias: bool,
    pub pos_embed: PosEmbed,
    pub decoder_pos_embed: PosEmbed,
}

/// The largest image side a model takes (the data pipeline's limit too). Found by mae-fuzz:
/// `--img-size 320000000000` overflowed the patch count in `num_patches`.
pub const MAX_IMAGE_SIDE: usize = 8192;

/// Names accepted by [`MaeConfig::preset`].
pub const PRESETS: [&str; 6] = [
    "mae-vit-micro-patch4-32",
    "mae-vit-tiny-patch4-32",
    "lightly-vit-b32-224",
    "mae-vit-base-patch16",
    "mae-vit-large-patch16",
    "mae-vit-huge-patch14",
];

impl MaeConfig {
    /// The paper's model family: square images, sin-cos position embeddings, LayerNorm eps 1e-6.
    fn paper(image: usize, patch: usize, encoder: StackShape, decoder: StackShape) -> Self {
        Self {
            image_size: [image, image],
            patch_size: patch,
            in_channels: 3,
            encoder,
            decoder,
            mask_ratio: 0.75,
            norm_pix_loss: false,
            layer_norm_eps: 1e-6,
            qkv_bias: true,
            pos_embed: PosEmbed::Sincos,
            decoder_pos_embed: PosEmbed::Sincos,
        }
    }

    /// A 4-block, 128-wide ViT for 32 px images: minutes on a laptop CPU (the quick start).
    pub fn mae_vit_micro_patch4_32() -> Self {
        Self::paper(32, 4, StackShape::new(128, 4, 4), StackShape::new(64, 2, 4))
    }

    /// A ViT-Tiny for 32 px images (CIFAR/MNIST scale): trains on a CPU.
    pub fn mae_vit_tiny_patch4_32() -> Self {
        Self::paper(32, 4, StackShape::new(192, 12, 3), StackShape::new(128, 4, 4))
    }

    /// lightly's `examples/pytorch/mae.py`: timm `vit_base_patch32_224` with a 512-wide, 1-block,
    /// 16-head decoder. lightly's `MaskedVisionTransformerTIMM` replaces timm's learned position
    /// embedding by a frozen sin-cos table, so both tables are sin-cos here too.
    pub fn lightly_vit_b32_224() -> Self {
        Self::paper(224, 32, StackShape::new(768, 12, 12), StackShape::new(512, 1, 16))
    }

    /// The paper's ViT-B/16 (`facebook/vit-mae-base`).
    pub fn mae_vit_base_patch16() -> Self {
        Self::paper(224, 16, StackShape::new(768, 12, 12), StackShape::new(512, 8, 16))
    }

    /// The paper's ViT-L/16 (`facebook/vit-mae-large`).
    pub fn mae_vit_large_patch16() -> Self {
        Self::paper(224, 16, StackShape::new(1024, 24, 16), StackShape::new(512, 8, 16))
    }

    /// The paper's ViT-H/14 (`facebook/vit-mae-huge`).
    pub fn mae_vit_huge_patch14() -> Self {
        Self::paper(224, 14, StackShape::new(1280, 32, 16), StackShape::new(512, 8, 16))
    }

    /// A preset by name (see [`PRESETS`]).
    pub fn preset(name: &str) -> Result<Self> {
        Ok(match name {
            "mae-vit-micro-patch4-32" => Self::mae_vit_micro_patch4_32(),
            "mae-vit-tiny-patch4-32" => Self::mae_vit_tiny_patch4_32(),
            "lightly-vit-b32-224" => Self::lightly_vit_b32_224(),
            "mae-vit-base-patch16" => Self::mae_vit_base_patch16(),
            "mae-vit-large-patch16" => Self::mae_vit_large_patch16(),
            "mae-vit-huge-patch14" => Self::mae_vit_huge_patch14(),
            _ => {
                return Err(MaeError::UnknownPreset {
                    name: name.to_string(),
                    available: PRESETS.iter().map(|s| s.to_string()).collect(),
                })
            }
        })
    }

    /// Checks the shape is buildable, with a message naming the field at fault.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(MaeError::Config(m));
        let [h, w] = self.image_size;
        let p = self.patch_size;
        if p == 0 || h == 0 || w == 0 || h % p != 0 || w % p != 0 {
            return bad(format!("image_size {h}x{w} must be a positive multiple of patch_size {p}"));
        }
        if h > MAX_IMAGE_SIDE || w > MAX_IMAGE_SIDE {
            return bad(format!("image_size {h}x{w}: at most {MAX_IMAGE_SIDE} pixels a side"));
        }
        if self.in_channels == 0 {
            return bad("in_channels must be positive".into());
        }
        for (name, s, pos) in
            [("encoder", self.encoder, self.pos_embed), ("decoder", self.decoder, self.decoder_pos_embed)]
        {
            if s.dim == 0 || s.num_heads == 0 || s.dim % s.num_heads != 0 || s.mlp_dim == 0 {
                return bad(format!(
                    "{name}: dim {} must be a positive multiple of num_heads {} and mlp_dim positive",
                    s.dim, s.num_heads
                ));
            }
            if pos == PosEmbed::Sincos && s.dim % 4 != 0 {
                return bad(format!(
                    "{name}: sin-cos position embeddings need dim divisible by 4, got {}",
                    s.dim
                ));
            }
        }
        if let Err(e) = mae_patch::MaskPlan::len_keep(self.num_patches(), self.mask_ratio) {
            return bad(format!("mask_ratio: {e}"));
        }
        if !self.layer_norm_eps.is_finite() || self.layer_norm_eps <= 0.0 {
            return bad(format!("layer_norm_eps must be positive, got {}", self.layer_norm_eps));
        }
        Ok(())
    }

    /// Patch grid `[rows, cols]`.
    pub fn grid(&self) -> [usize; 2] {
        [self.image_size[0] / self.patch_size, self.image_size[1] / self.patch_size]
    }

    /// Number of patches `L`.
    pub fn num_patches(&self) -> usize {
        let [r, c] = self.grid();
        r * c
    }

    pub fn encoder_config(&self) -> VitConfig {
        VitConfig {
            image_size: self.image_size,
            patch_size: self.patch_size,
            in_channels: self.in_channels,
            embed_dim: self.encoder.dim,
            depth: self.encoder.depth,
            num_heads: self.encoder.num_heads,
            mlp_dim: self.encoder.mlp_dim,
            qkv_bias: self.qkv_bias,
            layer_norm_eps: self.layer_norm_eps,
            pos_embed: self.pos_embed,
        }
    }

    pub fn decoder_config(&self) -> DecoderConfig {
        DecoderConfig {
            encoder_dim: self.encoder.dim,
            embed_dim: self.decoder.dim,
            depth: self.decoder.depth,
            num_heads: self.decoder.num_heads,
            mlp_dim: self.decoder.mlp_dim,
            qkv_bias: self.qkv_bias,
            layer_norm_eps: self.layer_norm_eps,
            pos_embed: self.decoder_pos_embed,
            grid: self.grid(),
            patch_size: self.patch_size,
            in_channels: self.in_channels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_valid_and_round_trips_through_json() {
        for name in PRESETS {
            let cfg = MaeConfig::preset(name).unwrap();
            cfg.validate().unwrap();
            let json = serde_json::to_string(&cfg).unwrap();
            assert_eq!(serde_json::from_str::<MaeConfig>(&json).unwrap(), cfg);
        }
        assert_eq!(MaeConfig::preset("mae-vit-huge-patch14").unwrap().num_patches(), 256);
    }

    #[test]
    fn unknown_preset_lists_the_known_ones() {
        let err = MaeConfig::preset("vit-giant").unwrap_err().to_string();
        assert!(err.contains("vit-giant") && err.contains("mae-vit-base-patch16"), "{err}");
    }

    #[test]
    fn validation_names_the_field() {
        let mut cfg = MaeConfig::mae_vit_tiny_patch4_32();
        cfg.image_size = [30, 32];
        assert!(cfg.validate().unwrap_err().to_string().contains("image_size"));
        let mut cfg = MaeConfig::mae_vit_tiny_patch4_32();
        cfg.mask_ratio = 1.0;
        assert!(cfg.validate().unwrap_err().to_string().contains("mask_ratio"));
    }
}
