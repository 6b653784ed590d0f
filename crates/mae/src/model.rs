//! `MaskedAutoencoder`: the paper's model, its stages in the paper's order
//! (`forward_encoder`, `forward_decoder`, `forward_loss`).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use mae_decoder::MaeDecoder;
use mae_patch::MaskPlan;
use mae_vit::VisionTransformer;
use rand::Rng;

use crate::config::MaeConfig;
use crate::error::{MaeError, Result};
use crate::init;

/// What one forward pass gives, in Hugging Face `ViTMAEForPreTraining`'s shapes.
#[derive(Debug, Clone)]
pub struct MaeOutput {
    /// Scalar: mean per-patch MSE over removed patches.
    pub loss: Tensor,
    /// `[B, L, p*p*C]` predicted pixels of every patch (normalised ones with `norm_pix_loss`).
    pub pred: Tensor,
    /// `[B, L]`, 1 = removed.
    pub mask: Tensor,
}

/// ViT encoder + MAE decoder. Owns its variables (a [`VarMap`]), so it can be trained and saved.
pub struct MaskedAutoencoder {
    config: MaeConfig,
    encoder: VisionTransformer,
    decoder: MaeDecoder,
    varmap: VarMap,
    device: Device,
}

impl MaskedAutoencoder {
    /// A freshly initialised model (the paper's initialisation), reproducible from `seed`.
    pub fn new(config: &MaeConfig, seed: u64, device: &Device) -> Result<Self> {
        let mut tensors = HashMap::new();
        for (name, shape, values) in init::init_parameters(config, seed)? {
            tensors.insert(name, Tensor::from_vec(values, shape, device)?);
        }
        Self::from_tensors(config, tensors, "initialisation", device)
    }

    /// A model over the given weights (our naming), checking that every parameter is present with
    /// the right shape; `source` (usually a file name) appears in the errors. Weights are
    /// converted to f32 on `device`; fixed sin-cos tables in `tensors` are not read (they are
    /// recomputed), only compared, with a warning when a file carries something else.
    pub fn from_tensors(
        config: &MaeConfig,
        tensors: HashMap<String, Tensor>,
        source: &str,
        device: &Device,
    ) -> Result<Self> {
        let device = device.clone();
        let varmap = varmap_from(init::parameter_shapes(config)?, &tensors, source, &device)?;
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let model = Self {
            config: config.clone(),
            encoder: VisionTransformer::new(&config.encoder_config(), vb.clone())?,
            decoder: MaeDecoder::new(&config.decoder_config(), vb)?,
            varmap,
            device,
        };
        model.warn_on_foreign_fixed_tables(&tensors, source)?;
        Ok(model)
    }

    /// transformers 5.x saves freshly built models with all-zero position tables; a model that
    /// ran with those would not match ours, which always uses the paper's sin-cos. Say so.
    fn warn_on_foreign_fixed_tables(&self, tensors: &HashMap<String, Tensor>, source: &str) -> Result<()> {
        let fixed = [
            ("pos_embed", self.config.pos_embed, self.encoder.pos_embed()),
            ("decoder_pos_embed", self.config.decoder_pos_embed, self.decoder.pos_embed()),
        ];
        for (name, kind, ours) in fixed {
            let Some(theirs) = tensors.get(name) else { continue };
            if kind != mae_vit::PosEmbed::Sincos || theirs.dims() != ours.dims() {
                continue;
            }
            let theirs = theirs.to_dtype(DType::F32)?.to_device(&self.device)?;
            let diff = (theirs - ours)?.abs()?.max_all()?.to_scalar::<f32>()?;
            if diff > 1e-4 {
                tracing::warn!(
                    "{source}: `{name}` differs from the paper's sin-cos table by up to {diff}; \
                     the model uses sin-cos (a zero table means the file came from a freshly built \
                     transformers model)"
                );
            }
        }
        Ok(())
    }

    pub fn config(&self) -> &MaeConfig {
        &self.config
    }

    /// Mixed precision (`--dtype bf16`): the matrix products of encoder and decoder run in
    /// `dtype`; the weights, the optimizer state, norms, softmax, residual sums and the loss stay
    /// f32, as under PyTorch's autocast. `None` (the default) computes everything in f32.
    pub fn set_compute_dtype(&mut self, dtype: Option<DType>) {
        self.encoder.set_compute_dtype(dtype);
        self.decoder.set_compute_dtype(dtype);
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn encoder(&self) -> &VisionTransformer {
        &self.encoder
    }

    pub fn decoder(&self) -> &MaeDecoder {
        &self.decoder
    }

    /// The trainable variables, sorted by name (a stable order for optimizers and all-reduce;
    /// `VarMap`'s own order is a hash order).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let Ok(vars) = self.varmap.data().lock() else { return Vec::new() };
        let mut out: Vec<_> = vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// Number of trainable parameters.
    pub fn num_parameters(&self) -> usize {
        self.named_vars().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Every weight in our naming, including the fixed position embeddings (as timm's and the
    /// paper's state dicts carry them).
    pub fn state_dict(&self) -> HashMap<String, Tensor> {
        let mut out: HashMap<String, Tensor> =
            self.named_vars().into_iter().map(|(k, v)| (k, v.as_tensor().clone())).collect();
        out.entry("pos_embed".into()).or_insert_with(|| self.encoder.pos_embed().clone());
        out.entry("decoder_pos_embed".into()).or_insert_with(|| self.decoder.pos_embed().clone());
        out
    }

    /// Encoder on the visible patches only: `[B, C, H, W] -> [B, 1 + K, D]`.
    pub fn forward_encoder(&self, pixels: &Tensor, plan: &MaskPlan) -> Result<Tensor> {
        Ok(self.encoder.forward_masked(pixels, plan)?)
    }

    /// Decoder: `[B, 1 + K, D] -> [B, L, p*p*C]`.
    pub fn forward_decoder(&self, latent: &Tensor, plan: &MaskPlan) -> Result<Tensor> {
        Ok(self.decoder.forward(latent, plan)?)
    }

    /// Loss of predictions against the images' patches, over removed patches.
    pub fn forward_loss(&self, pixels: &Tensor, pred: &Tensor, mask: &Tensor) -> Result<Tensor> {
        Ok(mae_loss::mae_loss(pixels, pred, mask, self.config.patch_size, self.config.norm_pix_loss)?)
    }

    /// The full pass for a given mask plan.
    pub fn forward_with_plan(&self, pixels: &Tensor, plan: &MaskPlan) -> Result<MaeOutput> {
        let latent = self.forward_encoder(pixels, plan)?; // [B, 1+K, D]
        let pred = self.forward_decoder(&latent, plan)?; // [B, L, p*p*C]
        let mask = plan.mask(pred.dtype(), pred.device())?; // [B, L]
        let loss = self.forward_loss(pixels, &pred, &mask)?;
        Ok(MaeOutput { loss, pred, mask })
    }

    /// The full pass with the mask fixed by `noise: [B, L]`, as HF's `forward(noise=...)`.
    pub fn forward_with_noise(&self, pixels: &Tensor, noise: &Tensor) -> Result<MaeOutput> {
        let plan = MaskPlan::from_noise(noise, self.config.mask_ratio)?;
        self.forward_with_plan(pixels, &plan)
    }

    /// The full pass with a fresh random mask per image drawn from `rng`.
    pub fn forward<R: Rng + ?Sized>(&self, pixels: &Tensor, rng: &mut R) -> Result<MaeOutput> {
        let (b, ..) = pixels.dims4()?;
        let plan = mae_patch::random_masking(b, self.config.num_patches(), self.config.mask_ratio, rng)?;
        self.forward_with_plan(pixels, &plan)
    }
}

/// A `VarMap` holding, for every `(name, shape)`, that tensor of `tensors` as f32 on `device`;
/// a missing tensor or a wrong shape is an error naming it and `source`.
pub(crate) fn varmap_from(
    shapes: Vec<(String, Vec<usize>)>,
    tensors: &HashMap<String, Tensor>,
    source: &str,
    device: &Device,
) -> Result<VarMap> {
    let varmap = VarMap::new();
    {
        let mut vars =
            varmap.data().lock().map_err(|_| MaeError::Config("variable map lock poisoned".into()))?;
        for (name, shape) in shapes {
            let tensor = tensors
                .get(&name)
                .ok_or_else(|| MaeError::MissingTensor { origin: source.to_string(), name: name.clone() })?;
            if tensor.dims() != shape.as_slice() {
                return Err(MaeError::ShapeMismatch {
                    origin: source.to_string(),
                    name,
                    expected: shape,
                    found: tensor.dims().to_vec(),
                });
            }
            let tensor = tensor.to_dtype(DType::F32)?.to_device(device)?;
            vars.insert(name, Var::from_tensor(&tensor)?);
        }
    }
    Ok(varmap)
}
