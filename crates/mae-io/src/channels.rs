//! Pre-trained weights into a model of another channel count (RGB weights for grayscale or
//! multi-band images), the way timm's `adapt_input_conv` does it, so that a fine-tune or a
//! domain pre-training starts from what the RGB filters learned rather than from noise.

use candle_core::{DType, Tensor};

use crate::error::{MaeError, Result};

/// The name of the patch embedding's convolution weight, `[D, C, p, p]`, in our naming.
pub const PATCH_EMBED_WEIGHT: &str = "patch_embed.proj.weight";

/// A convolution weight `[O, I, J, K]` for `in_channels` inputs, as timm's `adapt_input_conv`:
/// one channel gets the sum over the input channels (over each group of three for a
/// space-to-depth stem whose `I` is a multiple of 3), so that a gray image repeated three times
/// gives the same response; any other count repeats the RGB filters and scales them by
/// `3 / in_channels`, keeping the response's size. The weight itself for its own count; other
/// conversions are an error, as in timm. The result is f32.
pub fn adapt_input_conv(weight: &Tensor, in_channels: usize) -> Result<Tensor> {
    let weight = weight.to_dtype(DType::F32)?;
    let (o, i, j, k) = weight.dims4()?;
    if in_channels == i {
        return Ok(weight);
    }
    if in_channels == 1 {
        if i > 3 && i % 3 == 0 {
            return Ok(weight.reshape((o, i / 3, 3, j, k))?.sum(2)?);
        }
        return Ok(weight.sum_keepdim(1)?);
    }
    if in_channels == 0 || i != 3 {
        return Err(MaeError::Config(format!(
            "cannot adapt a convolution of {i} input channels to {in_channels} (only 3 to any count, or any to 1)"
        )));
    }
    let repeat = in_channels.div_ceil(3);
    let tiled = Tensor::cat(&vec![&weight; repeat], 1)?.narrow(1, 0, in_channels)?;
    Ok(tiled.affine(3.0 / in_channels as f64, 0.0)?.contiguous()?)
}
