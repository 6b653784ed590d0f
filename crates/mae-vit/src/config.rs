use serde::{Deserialize, Serialize};

use mae_nn::layers::BlockConfig;
pub use mae_nn::PosEmbed;

/// How a sequence of encoder tokens becomes one feature vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Pool {
    /// The cls token.
    #[default]
    Cls,
    /// The mean of the patch tokens (better for MAE features under k-NN / linear probes).
    Mean,
}

/// Shape of a ViT encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    /// `[height, width]` in pixels; both multiples of `patch_size`.
    pub image_size: [usize; 2],
    pub patch_size: usize,
    pub in_channels: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_dim: usize,
    pub qkv_bias: bool,
    pub layer_norm_eps: f64,
    pub pos_embed: PosEmbed,
}

impl VitConfig {
    pub fn block(&self) -> BlockConfig {
        BlockConfig {
            dim: self.embed_dim,
            num_heads: self.num_heads,
            mlp_dim: self.mlp_dim,
            qkv_bias: self.qkv_bias,
            layer_norm_eps: self.layer_norm_eps,
        }
    }

    pub fn grid(&self) -> candle_core::Result<mae_patch::PatchGrid> {
        mae_patch::PatchGrid::new(self.image_size[0], self.image_size[1], self.patch_size)
    }
}
