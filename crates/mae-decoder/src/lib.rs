//! The MAE decoder (facebookresearch/mae `forward_decoder`), in the official names:
//!
//! ```text
//! x = decoder_embed(latent)                          # [B, 1+K, Dd]
//! x_ = cat(x[:, 1:], mask_token repeated L-K times)  # [B, L, Dd], shuffled order
//! x_ = unshuffle(x_, ids_restore)                    # [B, L, Dd], patch order
//! x = cat(x[:, :1], x_) + decoder_pos_embed          # [B, 1+L, Dd]
//! x = decoder_norm(decoder_blocks(x))
//! pred = decoder_pred(x)[:, 1:]                      # [B, L, p*p*C]
//! ```

use candle_core::{bail, Module, Result, Tensor};
use candle_nn::VarBuilder;
use mae_nn::layers::{linear, Block, BlockConfig, LayerNorm, Linear};
use mae_nn::PosEmbed;
use mae_patch::{MaskPlan, PatchGrid};
use serde::{Deserialize, Serialize};

/// Shape of an MAE decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecoderConfig {
    /// Width of the encoder tokens it receives.
    pub encoder_dim: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_dim: usize,
    pub qkv_bias: bool,
    pub layer_norm_eps: f64,
    pub pos_embed: PosEmbed,
    /// Pixels predicted per patch come from this grid and channel count (`p*p*C`).
    pub grid: [usize; 2],
    pub patch_size: usize,
    pub in_channels: usize,
}

impl DecoderConfig {
    fn block(&self) -> BlockConfig {
        BlockConfig {
            dim: self.embed_dim,
            num_heads: self.num_heads,
            mlp_dim: self.mlp_dim,
            qkv_bias: self.qkv_bias,
            layer_norm_eps: self.layer_norm_eps,
        }
    }

    fn num_patches(&self) -> usize {
        self.grid[0] * self.grid[1]
    }

    /// Values predicted per patch, `p * p * C`.
    pub fn patch_dim(&self) -> usize {
        self.patch_size * self.patch_size * self.in_channels
    }
}

#[derive(Debug, Clone)]
pub struct MaeDecoder {
    config: DecoderConfig,
    decoder_embed: Linear,
    mask_token: Tensor,
    /// `[1, 1 + L, Dd]`, row 0 for the cls token.
    decoder_pos_embed: Tensor,
    decoder_blocks: Vec<Block>,
    decoder_norm: LayerNorm,
    decoder_pred: Linear,
}

impl MaeDecoder {
    pub fn new(config: &DecoderConfig, vb: VarBuilder) -> Result<Self> {
        let (dd, l) = (config.embed_dim, config.num_patches());
        let decoder_pos_embed = match config.pos_embed {
            PosEmbed::Sincos => {
                mae_patch::sincos_2d_tensor(dd, config.grid[0], config.grid[1], true, vb.device())?
                    .to_dtype(vb.dtype())?
            }
            PosEmbed::Learned => vb.get((1, 1 + l, dd), "decoder_pos_embed")?,
        };
        let decoder_blocks = (0..config.depth)
            .map(|i| Block::new(&config.block(), vb.pp("decoder_blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config: config.clone(),
            decoder_embed: linear(config.encoder_dim, dd, true, vb.pp("decoder_embed"))?,
            mask_token: vb.get((1, 1, dd), "mask_token")?,
            decoder_pos_embed,
            decoder_blocks,
            decoder_norm: LayerNorm::new(dd, config.layer_norm_eps, vb.pp("decoder_norm"))?,
            decoder_pred: linear(dd, config.patch_dim(), true, vb.pp("decoder_pred"))?,
        })
    }

    /// `(name, shape)` of every trainable parameter, in the official names.
    pub fn parameter_shapes(config: &DecoderConfig) -> Vec<(String, Vec<usize>)> {
        let (d, dd) = (config.encoder_dim, config.embed_dim);
        let mut out = vec![
            ("decoder_embed.weight".to_string(), vec![dd, d]),
            ("decoder_embed.bias".to_string(), vec![dd]),
            ("mask_token".to_string(), vec![1, 1, dd]),
        ];
        if config.pos_embed == PosEmbed::Learned {
            out.push(("decoder_pos_embed".to_string(), vec![1, 1 + config.num_patches(), dd]));
        }
        for i in 0..config.depth {
            for (name, shape) in Block::parameter_shapes(&config.block()) {
                out.push((format!("decoder_blocks.{i}.{name}"), shape));
            }
        }
        out.extend([
            ("decoder_norm.weight".to_string(), vec![dd]),
            ("decoder_norm.bias".to_string(), vec![dd]),
            ("decoder_pred.weight".to_string(), vec![config.patch_dim(), dd]),
            ("decoder_pred.bias".to_string(), vec![config.patch_dim()]),
        ]);
        out
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// Mixed precision: the decoder's matrix products run in `dtype` (see
    /// [`mae_nn::layers::cast_for_compute`]); its output stays f32.
    pub fn set_compute_dtype(&mut self, dtype: Option<candle_core::DType>) {
        self.decoder_embed.set_compute_dtype(dtype);
        for block in &mut self.decoder_blocks {
            block.set_compute_dtype(dtype);
        }
        self.decoder_pred.set_compute_dtype(dtype);
    }

    /// The decoder position embedding `[1, 1 + L, Dd]`.
    pub fn pos_embed(&self) -> &Tensor {
        &self.decoder_pos_embed
    }

    pub fn grid(&self) -> Result<PatchGrid> {
        PatchGrid::new(
            self.config.grid[0] * self.config.patch_size,
            self.config.grid[1] * self.config.patch_size,
            self.config.patch_size,
        )
    }

    /// `latent: [B, 1 + K, D]` from the encoder -> pixel predictions `[B, L, p*p*C]`.
    pub fn forward(&self, latent: &Tensor, plan: &MaskPlan) -> Result<Tensor> {
        let (b, n, _) = latent.dims3()?;
        let (l, k) = (plan.num_patches(), plan.num_kept());
        if n != 1 + k || l != self.config.num_patches() || b != plan.batch() {
            bail!(
                "decoder got {b} x {n} tokens for a plan keeping {k} of {l} patches in {} images (decoder grid has {})",
                plan.batch(),
                self.config.num_patches()
            )
        }
        let x = self.decoder_embed.forward(latent)?; // [B, 1+K, Dd]
        let dd = self.config.embed_dim;
        let mask_tokens = self.mask_token.broadcast_as((b, l - k, dd))?.contiguous()?;
        let x_ = Tensor::cat(&[&x.narrow(1, 1, k)?, &mask_tokens], 1)?; // [B, L, Dd], shuffled
        let x_ = plan.unshuffle(&x_)?; // [B, L, Dd], patch order
        let x = Tensor::cat(&[&x.narrow(1, 0, 1)?, &x_], 1)?; // [B, 1+L, Dd]
        let mut x = x.broadcast_add(&self.decoder_pos_embed)?;
        for block in &self.decoder_blocks {
            x = block.forward(&x)?;
        }
        let x = self.decoder_pred.forward(&self.decoder_norm.forward(&x)?)?; // [B, 1+L, p*p*C]
        x.narrow(1, 1, l)
    }
}
