//! Every trainable variable receives a non-zero gradient, for every preset's shape at reduced
//! depth. This guards against ops without a backward (candle's fused LayerNorm, softmax, sdpa):
//! with them training "works" while most weights never move.

use crate::common;
use mae::{MaeConfig, MaskedAutoencoder, PRESETS};
use rand::SeedableRng;

#[test]
fn every_variable_of_every_preset_gets_a_gradient() {
    let device = common::device();
    for name in PRESETS {
        let mut config = MaeConfig::preset(name).unwrap();
        config.encoder.depth = 1;
        config.decoder.depth = 1;
        let model = MaskedAutoencoder::new(&config, 0, &device).unwrap();
        let [h, w] = config.image_size;
        let pixels = common::det_tensor("pixels", &[2, 3, h, w], 1.5).to_device(&device).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let loss = model.forward(&pixels, &mut rng).unwrap().loss;
        let grads = loss.backward().unwrap();
        let vars = model.named_vars();
        assert_eq!(vars.len(), mae::init::parameter_shapes(&config).unwrap().len());
        for (var_name, var) in vars {
            let g = grads.get(&var).unwrap_or_else(|| panic!("{name}: `{var_name}` gets no gradient"));
            let norm = g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(norm > 0.0 && norm.is_finite(), "{name}: `{var_name}` gradient sum {norm}");
        }
    }
}

#[test]
fn learned_position_tables_are_trained_and_sincos_ones_are_not() {
    let device = common::device();
    let mut config = MaeConfig::preset("mae-vit-tiny-patch4-32").unwrap();
    config.encoder.depth = 1;
    config.decoder.depth = 1;
    let names = |c: &MaeConfig| -> Vec<String> {
        MaskedAutoencoder::new(c, 0, &device).unwrap().named_vars().into_iter().map(|(n, _)| n).collect()
    };
    assert!(!names(&config).iter().any(|n| n.contains("pos_embed")));
    config.pos_embed = mae::PosEmbed::Learned;
    config.decoder_pos_embed = mae::PosEmbed::Learned;
    let learned = names(&config);
    assert!(learned.contains(&"pos_embed".to_string()) && learned.contains(&"decoder_pos_embed".to_string()));
}
