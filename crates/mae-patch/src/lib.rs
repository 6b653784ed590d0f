//! The image-side plumbing of a Masked Autoencoder, shared by encoder, decoder and loss:
//!
//! - [`patchify`] / [`unpatchify`]: images `[N, C, H, W]` to patch rows `[N, L, p*p*C]` in the
//!   paper's layout (`nchpwq -> nhwpqc`: channels innermost inside a patch);
//! - [`MaskPlan`]: which patches an image keeps, built from a noise tensor exactly as
//!   facebookresearch/mae `random_masking` and Hugging Face `ViTMAEForPreTraining(noise=...)` do,
//!   or from our own seeded RNG ([`random_masking`]);
//! - token gather / unshuffle helpers ([`gather_tokens`], [`MaskPlan::unshuffle`]);
//! - the fixed 2-D sin-cos position embedding of the paper's `pos_embed.py` ([`sincos_2d`]).

mod masking;
mod patchify;
mod pos_embed;

pub use masking::{gather_tokens, noise, random_masking, MaskPlan};
pub use patchify::{patchify, unpatchify, PatchGrid};
pub use pos_embed::{sincos_2d, sincos_2d_tensor};
