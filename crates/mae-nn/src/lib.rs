//! What the MAE encoder and decoder share: [`layers`] (Linear, LayerNorm, attention, MLP, the
//! transformer block, in timm's names), [`fused`] and [`attention`] (the ops with our own forward
//! and backward: CPU kernels, composed candle ops elsewhere), plus how position tables are made.
//!
//! This crate knows nothing of images, masks or MAE: it is the transformer, and the place where
//! the kernels of the hot path live.

pub mod attention;
pub mod fused;
#[cfg(feature = "cuda")]
mod fused_cuda;
pub mod layers;
pub mod linear;
pub mod product;
pub mod vmath;

#[cfg(test)]
mod grad_store_tests;
#[cfg(test)]
pub(crate) mod test_support;

use serde::{Deserialize, Serialize};

/// How position embeddings are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PosEmbed {
    /// The paper's fixed 2-D sin-cos table (not trained).
    #[default]
    Sincos,
    /// A trained table, as timm's plain ViT (lightly's example encoder) has.
    Learned,
}
