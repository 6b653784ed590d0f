//! A Vision Transformer encoder for MAE, weights in timm's names.
//!
//! [`VisionTransformer::forward_masked`] runs only the visible tokens, the paper's saving: the
//! removed patches never enter the encoder. [`layers`] holds the transformer block that the MAE
//! decoder reuses.

mod config;
pub mod fused;
pub mod layers;
mod vit;

pub use config::{Pool, PosEmbed, VitConfig};
pub use vit::{pool_tokens, VisionTransformer};
