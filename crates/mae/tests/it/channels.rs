//! RGB weights into models of 1, 2, 4 and 7 channels: the patch embedding against timm's own
//! `adapt_input_conv` on the same weights (fixtures/adapt_input_conv.safetensors, written by
//! `cargo xtask fixtures -- --only channels`), and whole checkpoints loaded that way.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use mae::channels::adapt_input_conv;
use mae::{Encoder, MaeConfig, MaskedAutoencoder};

use crate::common::fixtures_dir;

fn fixture() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures_dir().join("adapt_input_conv.safetensors"), &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn the_patch_embedding_is_adapted_as_timm_does() {
    let t = fixture();
    let rgb = &t["weight_rgb"];
    for n in [1, 2, 3, 4, 7] {
        let ours = adapt_input_conv(rgb, n).unwrap();
        let diff = max_diff(&ours, &t[&format!("adapted_{n}")]);
        assert!(diff < 1e-6, "{n} channels: {diff}");
    }
    // timm refuses what it cannot do, and so do we.
    let two = adapt_input_conv(rgb, 2).unwrap();
    assert!(adapt_input_conv(&two, 4).is_err() && adapt_input_conv(rgb, 0).is_err());
}

#[test]
fn an_rgb_checkpoint_loads_into_models_of_other_channel_counts() {
    let device = Device::Cpu;
    let t = fixture();
    let config = MaeConfig::preset("mae-vit-micro-patch4-32").unwrap();
    let mut tensors = MaskedAutoencoder::new(&config, 1, &device).unwrap().state_dict();
    tensors.insert("patch_embed.proj.weight".into(), t["weight_rgb"].clone());
    let rgb = MaskedAutoencoder::from_tensors(&config, tensors, "test", &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rgb.safetensors");
    rgb.save(&path).unwrap();

    let four = MaskedAutoencoder::from_pretrained_with_channels(&path, 4, 0, &device).unwrap();
    assert_eq!(four.config().in_channels, 4);
    let weights = four.state_dict();
    assert!(max_diff(&weights["patch_embed.proj.weight"], &t["adapted_4"]) < 1e-6);
    // The pixel head is new (16 pixels x 4 channels), the rest of the decoder is the checkpoint's.
    assert_eq!(weights["decoder_pred.weight"].dims(), &[64, 64]);
    assert_eq!(max_diff(&weights["decoder_embed.weight"], &rgb.state_dict()["decoder_embed.weight"]), 0.0);
    let pixels = Tensor::zeros((2, 4, 32, 32), candle_core::DType::F32, &device).unwrap();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let loss = four.forward(&pixels, &mut rng).unwrap().loss.to_scalar::<f32>().unwrap();
    assert!(loss.is_finite());

    let gray = Encoder::from_pretrained_with_channels(&path, 1, &device).unwrap();
    assert_eq!(gray.config().in_channels, 1);
    assert!(max_diff(&gray.state_dict()["patch_embed.proj.weight"], &t["adapted_1"]) < 1e-6);
    // Weights of the count asked for load unchanged.
    let same = MaskedAutoencoder::from_pretrained_with_channels(&path, 3, 0, &device).unwrap();
    assert_eq!(
        max_diff(&same.state_dict()["decoder_pred.weight"], &rgb.state_dict()["decoder_pred.weight"]),
        0.0
    );
}
