//! Seeded initialisation as the paper's `initialize_weights`: xavier-uniform for every Linear and
//! for the patch convolution viewed as a `[D, C*p*p]` matrix, zero biases, unit LayerNorms,
//! normal(0, 0.02) cls and mask tokens (and learned position embeddings, as timm).
//!
//! All values come from one ChaCha8 stream seeded by the caller and visited in the fixed order of
//! [`parameter_shapes`], so a seed gives the same model on every machine (candle's own CPU RNG
//! cannot be seeded).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::config::MaeConfig;
use crate::error::Result;

/// `(name, shape)` of every trainable parameter, encoder (timm names) then decoder (official).
pub fn parameter_shapes(config: &MaeConfig) -> Result<Vec<(String, Vec<usize>)>> {
    config.validate()?;
    let mut out = mae_vit::VisionTransformer::parameter_shapes(&config.encoder_config())?;
    out.extend(mae_decoder::MaeDecoder::parameter_shapes(&config.decoder_config()));
    Ok(out)
}

/// How the paper initialises a parameter, decided by its name and shape.
fn init_values(name: &str, shape: &[usize], rng: &mut impl Rng) -> Vec<f32> {
    let numel: usize = shape.iter().product();
    let leaf = name.rsplit('.').next().unwrap_or(name);
    match leaf {
        "cls_token" | "mask_token" | "pos_embed" | "decoder_pos_embed" => {
            let normal = Normal::new(0.0f32, 0.02).expect("0.02 is a valid std");
            (0..numel).map(|_| normal.sample(rng)).collect()
        }
        "bias" => vec![0.0; numel],
        "weight" if shape.len() == 1 => vec![1.0; numel],
        _ => {
            // xavier_uniform_ on the weight viewed as [fan_out, fan_in].
            let (fan_out, fan_in) = (shape[0], numel / shape[0].max(1));
            let bound = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32;
            (0..numel).map(|_| rng.random_range(-bound..bound)).collect()
        }
    }
}

/// One initialised parameter: name, shape and row-major values.
pub type InitParameter = (String, Vec<usize>, Vec<f32>);

/// Every parameter of `config`, initialised from `seed`.
pub fn init_parameters(config: &MaeConfig, seed: u64) -> Result<Vec<InitParameter>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Ok(parameter_shapes(config)?
        .into_iter()
        .map(|(name, shape)| {
            let values = init_values(&name, &shape, &mut rng);
            (name, shape, values)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_papers_rules() {
        let mut cfg = MaeConfig::mae_vit_tiny_patch4_32();
        cfg.encoder.depth = 1;
        cfg.decoder.depth = 1;
        let params = init_parameters(&cfg, 0).unwrap();
        let get = |n: &str| params.iter().find(|p| p.0 == n).unwrap().2.clone();
        assert!(get("blocks.0.attn.qkv.bias").iter().all(|&v| v == 0.0));
        assert!(get("norm.weight").iter().all(|&v| v == 1.0));
        // Patch conv: fan_in = 3*4*4 = 48, fan_out = 192.
        let bound = (6.0f32 / (48.0 + 192.0)).sqrt();
        let w = get("patch_embed.proj.weight");
        assert!(w.iter().all(|v| v.abs() <= bound));
        assert!(w.iter().any(|v| v.abs() > 0.9 * bound));
        let std = |v: &[f32]| (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
        assert!((std(&get("cls_token")) - 0.02).abs() < 0.006);
        assert_eq!(init_parameters(&cfg, 0).unwrap(), params, "same seed, same weights");
        assert_ne!(init_parameters(&cfg, 1).unwrap(), params);
    }
}
