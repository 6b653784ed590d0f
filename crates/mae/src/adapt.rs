//! Pre-trained weights of one channel count (the hub's RGB MAEs) into a model of another:
//! the patch embedding adapted as timm's `adapt_input_conv` does ([`mae_io::channels`]), the
//! decoder's pixel head (whose width is `p * p * C`) re-initialised, and a notice saying so.

use std::path::Path;

use candle_core::Device;
use mae_io::channels::{adapt_input_conv, PATCH_EMBED_WEIGHT};
use mae_io::{Checkpoint, Hub, MaeError, Result};

use crate::encoder::Encoder;
use crate::model::MaskedAutoencoder;
use crate::pretrained::resolve_weights;

/// Replaces the checkpoint's patch embedding with its adaptation to `to` channels.
fn adapt_patch_embedding(checkpoint: &mut Checkpoint, from: usize, to: usize) -> Result<()> {
    let weight = checkpoint.tensors.get(PATCH_EMBED_WEIGHT).ok_or_else(|| {
        MaeError::Config(format!("{}: tensor `{PATCH_EMBED_WEIGHT}` is missing", checkpoint.source))
    })?;
    let adapted = adapt_input_conv(weight, to)?;
    checkpoint.tensors.insert(PATCH_EMBED_WEIGHT.to_string(), adapted);
    let how = if to == 1 { "summed over its channels" } else { "repeated and scaled by 3/N" };
    tracing::warn!(
        "{}: weights of {from} channels adapted to {to}: the patch embedding {how} (timm's adapt_input_conv)",
        checkpoint.source
    );
    Ok(())
}

impl MaskedAutoencoder {
    /// [`MaskedAutoencoder::from_pretrained`] into a model of `in_channels` channels: weights
    /// of another count have their patch embedding adapted (see [`adapt_input_conv`]) and the
    /// decoder's pixel head, whose width changes, initialised afresh as [`MaskedAutoencoder::new`]
    /// with `seed` does. Weights of `in_channels` load unchanged.
    pub fn from_pretrained_with_channels(
        id_or_path: impl AsRef<Path>,
        in_channels: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let checkpoint = Checkpoint::open(resolve_weights(id_or_path.as_ref())?, &Hub::from_env(), device)?;
        Self::from_checkpoint_with_channels(checkpoint, in_channels, seed, device)
    }

    /// [`MaskedAutoencoder::from_pretrained_with_channels`] of a checkpoint already read.
    pub fn from_checkpoint_with_channels(
        mut checkpoint: Checkpoint,
        in_channels: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let mut config = checkpoint.mae_config()?;
        let from = config.in_channels;
        if from == in_channels {
            return Self::from_checkpoint_with_config(checkpoint, &config, device);
        }
        config.in_channels = in_channels;
        config.validate()?;
        adapt_patch_embedding(&mut checkpoint, from, in_channels)?;
        let fresh = MaskedAutoencoder::new(&config, seed, device)?.state_dict();
        for name in ["decoder_pred.weight", "decoder_pred.bias"] {
            let init =
                fresh.get(name).ok_or_else(|| MaeError::Config(format!("the model has no `{name}`")))?;
            checkpoint.tensors.insert(name.to_string(), init.clone());
        }
        tracing::warn!(
            "{}: the decoder's pixel head (`decoder_pred`, {} outputs for {from} channels) starts afresh with {} for {in_channels}",
            checkpoint.source,
            config.patch_size * config.patch_size * from,
            config.patch_size * config.patch_size * in_channels
        );
        Self::from_checkpoint_with_config(checkpoint, &config, device)
    }
}

impl Encoder {
    /// [`Encoder::from_pretrained`] into an encoder of `in_channels` channels, the patch
    /// embedding adapted as [`adapt_input_conv`] does when the weights have another count.
    pub fn from_pretrained_with_channels(
        id_or_path: impl AsRef<Path>,
        in_channels: usize,
        device: &Device,
    ) -> Result<Self> {
        let checkpoint = Checkpoint::open(resolve_weights(id_or_path.as_ref())?, &Hub::from_env(), device)?;
        Self::from_checkpoint_with_channels(checkpoint, in_channels, device)
    }

    /// [`Encoder::from_pretrained_with_channels`] of a checkpoint already read.
    pub fn from_checkpoint_with_channels(
        mut checkpoint: Checkpoint,
        in_channels: usize,
        device: &Device,
    ) -> Result<Self> {
        let mut config = checkpoint.vit_config()?;
        let from = config.in_channels;
        if from != in_channels {
            config.in_channels = in_channels;
            adapt_patch_embedding(&mut checkpoint, from, in_channels)?;
        }
        Self::from_checkpoint_with_config(checkpoint, &config, device)
    }
}
