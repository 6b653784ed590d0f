//! A pre-trained ViT encoder on its own: from an MAE checkpoint (ours, Hugging Face ViTMAE, the
//! paper's `.pth`) or an encoder-only one (timm's MAE tags, Hugging Face `ViTModel`, the paper's
//! `mae_pretrain_vit_*.pth`), for features, k-NN, fine-tuning.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use mae_vit::{Pool, PosEmbed, VisionTransformer, VitConfig};

use crate::error::{MaeError, Result};
use crate::formats::{check_vit, Checkpoint};
use crate::hub::Hub;

/// A ViT encoder that owns its variables (a [`VarMap`]), as [`crate::MaskedAutoencoder`] does.
pub struct Encoder {
    config: VitConfig,
    vit: VisionTransformer,
    varmap: VarMap,
    device: Device,
}

impl Encoder {
    /// The dtype of the matrix products (`Some(BF16)`: mixed precision, on the CPU the bf16
    /// product kernel of `mae_nn::product`); weights and everything else stay f32.
    pub fn set_compute_dtype(&mut self, dtype: Option<candle_core::DType>) {
        self.vit.set_compute_dtype(dtype);
    }

    /// An encoder over the given weights (timm names), checking that every parameter is present
    /// with the right shape; other tensors (a decoder, say) are left alone. Weights become f32
    /// on `device`; a fixed sin-cos table in `tensors` is only compared (with a warning).
    pub fn from_tensors(
        config: &VitConfig,
        tensors: HashMap<String, Tensor>,
        source: &str,
        device: &Device,
    ) -> Result<Self> {
        check_vit(config).map_err(|m| MaeError::Config(format!("{source}: {m}")))?;
        let varmap = crate::model::varmap_from(
            VisionTransformer::parameter_shapes(config)?,
            &tensors,
            source,
            device,
        )?;
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let vit = VisionTransformer::new(config, vb)?;
        if config.pos_embed == PosEmbed::Sincos {
            if let Some(theirs) = tensors.get("pos_embed").filter(|t| t.dims() == vit.pos_embed().dims()) {
                let theirs = theirs.to_dtype(DType::F32)?.to_device(device)?;
                let diff = (theirs - vit.pos_embed())?.abs()?.max_all()?.to_scalar::<f32>()?;
                if diff > 1e-4 {
                    tracing::warn!(
                        "{source}: `pos_embed` differs from the paper's sin-cos table by up to {diff}; the encoder \
                         uses sin-cos"
                    );
                }
            }
        }
        Ok(Self { config: config.clone(), vit, varmap, device: device.clone() })
    }

    /// Loads a pre-trained encoder: anything [`crate::MaskedAutoencoder::from_pretrained`]
    /// reads (its encoder), and encoder-only weights: timm (`timm/vit_base_patch16_224.mae`),
    /// Hugging Face ViT (`google/vit-base-patch16-224-in21k`), `mae_pretrain_vit_base.pth`.
    pub fn from_pretrained(id_or_path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Self::from_pretrained_with(id_or_path, &Hub::from_env(), device)
    }

    /// [`Encoder::from_pretrained`] with hub ids resolved through `hub`.
    pub fn from_pretrained_with(id_or_path: impl AsRef<Path>, hub: &Hub, device: &Device) -> Result<Self> {
        let path = crate::pretrained::resolve_weights(id_or_path.as_ref())?;
        Self::from_checkpoint(Checkpoint::open(path, hub, device)?, device)
    }

    /// The encoder of a checkpoint, with its config (or the one read from its shapes).
    pub fn from_checkpoint(checkpoint: Checkpoint, device: &Device) -> Result<Self> {
        let config = checkpoint.vit_config()?;
        Self::from_checkpoint_with_config(checkpoint, &config, device)
    }

    /// The encoder of a checkpoint with a config of the caller's.
    pub fn from_checkpoint_with_config(
        mut checkpoint: Checkpoint,
        config: &VitConfig,
        device: &Device,
    ) -> Result<Self> {
        let tensors = std::mem::take(&mut checkpoint.tensors);
        mae_io::check_finite(&tensors, &checkpoint.source)?;
        Self::from_tensors(config, tensors, &checkpoint.source, device).map_err(|e| checkpoint.explain(e))
    }

    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    pub fn vit(&self) -> &VisionTransformer {
        &self.vit
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The config, the transformer and its variables.
    pub fn into_parts(self) -> (VitConfig, VisionTransformer, VarMap) {
        (self.config, self.vit, self.varmap)
    }

    /// The trainable variables, sorted by name.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let Ok(vars) = self.varmap.data().lock() else { return Vec::new() };
        let mut out: Vec<_> = vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub fn num_parameters(&self) -> usize {
        self.named_vars().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Every weight in timm's names, the position table included.
    pub fn state_dict(&self) -> HashMap<String, Tensor> {
        let mut out: HashMap<String, Tensor> =
            self.named_vars().into_iter().map(|(k, v)| (k, v.as_tensor().clone())).collect();
        out.entry("pos_embed".into()).or_insert_with(|| self.vit.pos_embed().clone());
        out
    }

    /// All tokens: `[B, C, H, W] -> [B, 1 + L, D]` (timm's `forward_features`).
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self.vit.forward(pixels)?)
    }

    /// One vector per image, `[B, D]`.
    pub fn features(&self, pixels: &Tensor, pool: Pool) -> Result<Tensor> {
        Ok(self.vit.features(pixels, pool)?)
    }
}

/// The encoder of `id_or_path` (see [`Encoder::from_pretrained`]) as a config and a
/// [`VisionTransformer`] (whose tensors are the variables of a dropped [`VarMap`]: fine for
/// inference; keep the [`Encoder`] to train).
pub fn load_encoder(id_or_path: impl AsRef<Path>, device: &Device) -> Result<(VitConfig, VisionTransformer)> {
    let (config, vit, _) = Encoder::from_pretrained(id_or_path, device)?.into_parts();
    Ok((config, vit))
}
