use candle_core::{bail, Module, Result, Tensor};
use candle_nn::VarBuilder;
use mae_patch::{MaskPlan, PatchGrid};

use crate::layers::{Block, LayerNorm, Linear, ResidualKeep};
use crate::{Pool, PosEmbed, VitConfig};

/// ViT encoder: patch embedding, cls token, position embedding, pre-norm blocks, final norm.
#[derive(Debug, Clone)]
pub struct VisionTransformer {
    config: VitConfig,
    grid: PatchGrid,
    /// The stride-p patch convolution as a linear map over `(C, p, q)`-ordered patch pixels:
    /// identical to `Conv2d(kernel = stride = p)`, and a plain matmul forward and backward.
    patch_embed: Linear,
    cls_token: Tensor,
    /// `[1, 1 + L, D]`, row 0 for the cls token.
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
}

impl VisionTransformer {
    pub fn new(config: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let grid = config.grid()?;
        let (c, p, d) = (config.in_channels, config.patch_size, config.embed_dim);
        let proj = vb.pp("patch_embed").pp("proj");
        let patch_embed = Linear::new(
            proj.get((d, c, p, p), "weight")?.reshape((d, c * p * p))?,
            Some(proj.get(d, "bias")?),
        );
        let pos_embed = match config.pos_embed {
            PosEmbed::Sincos => mae_patch::sincos_2d_tensor(d, grid.rows, grid.cols, true, vb.device())?
                .to_dtype(vb.dtype())?,
            PosEmbed::Learned => vb.get((1, 1 + grid.len(), d), "pos_embed")?,
        };
        let blocks = (0..config.depth)
            .map(|i| Block::new(&config.block(), vb.pp("blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config: config.clone(),
            grid,
            patch_embed,
            cls_token: vb.get((1, 1, d), "cls_token")?,
            pos_embed,
            blocks,
            norm: LayerNorm::new(d, config.layer_norm_eps, vb.pp("norm"))?,
        })
    }

    /// `(name, shape)` of every trainable parameter, in timm's names.
    pub fn parameter_shapes(config: &VitConfig) -> Result<Vec<(String, Vec<usize>)>> {
        let grid = config.grid()?;
        let (c, p, d) = (config.in_channels, config.patch_size, config.embed_dim);
        let mut out = vec![
            ("cls_token".to_string(), vec![1, 1, d]),
            ("patch_embed.proj.weight".to_string(), vec![d, c, p, p]),
            ("patch_embed.proj.bias".to_string(), vec![d]),
        ];
        if config.pos_embed == PosEmbed::Learned {
            out.push(("pos_embed".to_string(), vec![1, 1 + grid.len(), d]));
        }
        for i in 0..config.depth {
            for (name, shape) in Block::parameter_shapes(&config.block()) {
                out.push((format!("blocks.{i}.{name}"), shape));
            }
        }
        out.push(("norm.weight".to_string(), vec![d]));
        out.push(("norm.bias".to_string(), vec![d]));
        Ok(out)
    }

    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    pub fn grid(&self) -> PatchGrid {
        self.grid
    }

    /// Mixed precision: every matrix product of the encoder runs in `dtype` (bf16 on a GPU)
    /// while the weights, norms, softmax and residual stream stay in f32; `None` turns it off.
    /// See [`crate::layers::cast_for_compute`].
    pub fn set_compute_dtype(&mut self, dtype: Option<candle_core::DType>) {
        self.patch_embed.set_compute_dtype(dtype);
        for block in &mut self.blocks {
            block.set_compute_dtype(dtype);
        }
    }

    /// The position embedding `[1, 1 + L, D]` (fixed sin-cos or learned).
    pub fn pos_embed(&self) -> &Tensor {
        &self.pos_embed
    }

    /// Patch tokens with their position embedding: `[B, C, H, W] -> [B, L, D]`.
    pub fn embed_patches(&self, imgs: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = imgs.dims4()?;
        let expected = &self.config;
        if c != expected.in_channels || [h, w] != expected.image_size {
            bail!(
                "encoder expects images [B, {}, {}, {}], got [{b}, {c}, {h}, {w}]",
                expected.in_channels,
                expected.image_size[0],
                expected.image_size[1]
            )
        }
        let (p, g) = (self.grid.patch, self.grid);
        // x: [B, C, h, p, w, q] -> [B, h, w, C, p, q] -> [B, L, C*p*q]
        let patches = imgs.reshape((b, c, g.rows, p, g.cols, p))?.permute((0, 2, 4, 1, 3, 5))?.reshape((
            b,
            g.len(),
            c * p * p,
        ))?;
        let x = self.patch_embed.forward(&patches)?; // [B, L, D]
        x.broadcast_add(&self.pos_embed.narrow(1, 1, g.len())?)
    }

    /// Prepends the cls token (plus its position embedding): `[B, N, D] -> [B, 1 + N, D]`.
    fn prepend_cls(&self, x: &Tensor) -> Result<Tensor> {
        let (b, _, d) = x.dims3()?;
        let cls = (&self.cls_token + self.pos_embed.narrow(1, 0, 1)?)?.broadcast_as((b, 1, d))?;
        Tensor::cat(&[&cls.contiguous()?, x], 1)
    }

    fn run_blocks(&self, mut x: Tensor) -> Result<Tensor> {
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        self.norm.forward(&x)
    }

    /// The unmasked pass for fine-tuning, with stochastic depth: `drop_path[i]` scales the
    /// residual branches of block `i` (blocks past its end keep theirs), and no final norm:
    /// `[B, C, H, W] -> [B, 1 + L, D]`. Classification then pools: the cls token through
    /// [`VisionTransformer::final_norm`], or the mean of the patch tokens through a norm of its
    /// own (the paper's `global_pool`, where `norm` is not used).
    pub fn forward_train(&self, imgs: &Tensor, drop_path: &[ResidualKeep]) -> Result<Tensor> {
        let mut x = self.prepend_cls(&self.embed_patches(imgs)?)?; // [B, 1 + L, D]
        let keep_all = ResidualKeep::default();
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward_with_keep(&x, drop_path.get(i).unwrap_or(&keep_all))?;
        }
        Ok(x)
    }

    /// The final LayerNorm (`norm`) over the last dimension.
    pub fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        self.norm.forward(x)
    }

    /// The MAE encoder pass: only the patches `plan` keeps enter the transformer.
    /// `[B, C, H, W] -> [B, 1 + K, D]` (cls first, then kept patches in the plan's order).
    pub fn forward_masked(&self, imgs: &Tensor, plan: &MaskPlan) -> Result<Tensor> {
        let x = self.embed_patches(imgs)?; // [B, L, D]
        let x = plan.keep(&x)?; // [B, K, D]
        self.run_blocks(self.prepend_cls(&x)?)
    }

    /// All patches: `[B, C, H, W] -> [B, 1 + L, D]`.
    pub fn forward(&self, imgs: &Tensor) -> Result<Tensor> {
        let x = self.embed_patches(imgs)?;
        self.run_blocks(self.prepend_cls(&x)?)
    }

    /// One feature vector per image, `[B, D]`, from the unmasked encoder.
    pub fn features(&self, imgs: &Tensor, pool: Pool) -> Result<Tensor> {
        pool_tokens(&self.forward(imgs)?, pool)
    }
}

/// `[B, 1 + N, D] -> [B, D]`: the cls token, or the mean of the other tokens.
pub fn pool_tokens(tokens: &Tensor, pool: Pool) -> Result<Tensor> {
    let n = tokens.dim(1)?;
    match pool {
        Pool::Cls => tokens.narrow(1, 0, 1)?.squeeze(1),
        Pool::Mean => tokens.narrow(1, 1, n - 1)?.mean(1),
    }
}
