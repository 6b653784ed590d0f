//! Masked Autoencoders (He et al., 2021) on candle: the model, its presets, and weight I/O.
//!
//! ```no_run
//! use mae::{MaeConfig, MaskedAutoencoder};
//! use rand::SeedableRng;
//!
//! let device = candle_core::Device::Cpu;
//! let model = MaskedAutoencoder::new(&MaeConfig::preset("mae-vit-tiny-patch4-32")?, 0, &device)?;
//! let pixels = candle_core::Tensor::zeros((2, 3, 32, 32), candle_core::DType::F32, &device)?;
//! let out = model.forward(&pixels, &mut rand_chacha::ChaCha8Rng::seed_from_u64(0))?;
//! println!("loss {}", out.loss.to_scalar::<f32>()?);
//! # Ok::<(), mae::MaeError>(())
//! ```

mod adapt;
mod encoder;
pub mod init;
mod model;
pub mod pretrain;
mod pretrained;
pub mod visualize;

// Weight I/O lives below the model, in `mae-io`; its modules keep their paths here
// (`mae::formats`, `mae::hub`, ...) for code written against them.
pub use mae_io::{channels, config, error, formats, hub, io, naming};
/// Writing weights for timm and transformers (`mae-io`), and [`export`](pretrained::export)
/// from anything `from_pretrained` reads.
pub mod export {
    pub use crate::pretrained::export;
    pub use mae_io::export::*;
}

pub use config::{MaeConfig, StackShape, PRESETS};
pub use encoder::{load_encoder, Encoder};
pub use error::{MaeError, Result};
pub use export::ExportFormat;
pub use formats::{Checkpoint, Format};
pub use hub::{Hub, RepoId};
pub use io::{config_from_hf_json, write_atomically, WeightsFile};
pub use mae_patch::MaskPlan;
pub use mae_vit::{Pool, PosEmbed, VisionTransformer, VitConfig};
pub use model::{MaeOutput, MaskedAutoencoder};
pub use pretrained::resolve_weights;

/// The crates this one composes, for users who build their own models from the pieces.
pub use {mae_decoder, mae_io, mae_loss, mae_nn, mae_patch, mae_vit};
