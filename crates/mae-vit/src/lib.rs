//! A Vision Transformer encoder for MAE, weights in timm's names.
//!
//! [`VisionTransformer::forward_masked`] runs only the visible tokens, the paper's saving: the
//! removed patches never enter the encoder. The transformer block it stacks comes from `mae-nn`,
//! which the MAE decoder shares.

mod config;
mod vit;

/// The shared layers, re-exported for code written against `mae_vit::layers`.
pub use mae_nn::{fused, layers};

pub use config::{Pool, PosEmbed, VitConfig};
pub use vit::{pool_tokens, VisionTransformer};
