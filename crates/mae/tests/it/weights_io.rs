//! Saving and loading weights: round trips, and clear errors for files that do not fit.

use crate::common;
use std::collections::HashMap;

use candle_core::{Device, Tensor};
use mae::{MaeConfig, MaeError, MaskedAutoencoder};
use rand::SeedableRng;

fn tiny() -> MaeConfig {
    let mut config = MaeConfig::preset("mae-vit-tiny-patch4-32").unwrap();
    config.encoder.depth = 2;
    config.decoder.depth = 1;
    config
}

fn loss_of(model: &MaskedAutoencoder) -> f32 {
    let pixels = common::det_tensor("pixels", &[2, 3, 32, 32], 1.5);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    model.forward(&pixels, &mut rng).unwrap().loss.to_scalar::<f32>().unwrap()
}

#[test]
fn save_then_load_gives_the_same_model() {
    let dir = tempdir();
    let dir = dir.path();
    let model = MaskedAutoencoder::new(&tiny(), 3, &Device::Cpu).unwrap();
    let path = dir.join("model.safetensors");
    model.save(&path).unwrap();
    let loaded = MaskedAutoencoder::load(&path, &Device::Cpu).unwrap();
    assert_eq!(loaded.config(), model.config());
    assert_eq!(loss_of(&loaded), loss_of(&model));
    // from_pretrained accepts our files too, and no temporary file is left behind.
    assert_eq!(loss_of(&MaskedAutoencoder::from_pretrained(&path, &Device::Cpu).unwrap()), loss_of(&model));
    let names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    // The file carries timm / official names, fixed tables included.
    let stored = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    for key in ["pos_embed", "decoder_pos_embed", "blocks.1.attn.qkv.weight", "decoder_blocks.0.mlp.fc2.bias"]
    {
        assert!(stored.contains_key(key), "{key}");
    }
}

#[test]
fn same_seed_same_model_and_same_mask() {
    let a = MaskedAutoencoder::new(&tiny(), 11, &Device::Cpu).unwrap();
    let b = MaskedAutoencoder::new(&tiny(), 11, &Device::Cpu).unwrap();
    assert_eq!(loss_of(&a), loss_of(&b));
    let c = MaskedAutoencoder::new(&tiny(), 12, &Device::Cpu).unwrap();
    assert_ne!(loss_of(&a), loss_of(&c));
}

#[test]
fn a_checkpoint_of_another_shape_names_the_tensor() {
    let dir = tempdir();
    let dir = dir.path();
    let path = dir.join("small.safetensors");
    MaskedAutoencoder::new(&tiny(), 0, &Device::Cpu).unwrap().save(&path).unwrap();
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let mut wider = tiny();
    wider.decoder.dim = 64;
    wider.decoder.num_heads = 4;
    wider.decoder.mlp_dim = 256;
    let err = MaskedAutoencoder::from_tensors(&wider, tensors.clone(), "small.safetensors", &Device::Cpu)
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(matches!(err, MaeError::ShapeMismatch { .. }), "{msg}");
    assert!(msg.contains("small.safetensors") && msg.contains("decoder_"), "{msg}");

    tensors.remove("blocks.1.norm2.bias");
    let err =
        MaskedAutoencoder::from_tensors(&tiny(), tensors, "small.safetensors", &Device::Cpu).err().unwrap();
    assert!(err.to_string().contains("`blocks.1.norm2.bias` is missing"), "{err}");
}

#[test]
fn unreadable_files_are_errors_naming_the_file() {
    let dir = tempdir();
    let dir = dir.path();
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a safetensors file").unwrap();
    let err = MaskedAutoencoder::load(&garbage, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("garbage.safetensors"), "{err}");

    let empty = dir.join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    assert!(MaskedAutoencoder::load(&empty, &Device::Cpu).is_err());

    let missing = dir.join("nope");
    let err = MaskedAutoencoder::from_pretrained(&missing, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("nope"), "{err}");

    // Weights without our header and without a config.json beside them.
    let bare = dir.join("bare.safetensors");
    let t: HashMap<String, Tensor> =
        HashMap::from([("x".to_string(), Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap())]);
    candle_core::safetensors::save(&t, &bare).unwrap();
    let err = MaskedAutoencoder::from_pretrained(&bare, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("config.json"), "{err}");

    // A config.json that is not one.
    let hf = dir.join("hf");
    std::fs::create_dir(&hf).unwrap();
    std::fs::copy(common::fixtures_dir().join("hf_tiny_a/model.safetensors"), hf.join("model.safetensors"))
        .unwrap();
    std::fs::write(hf.join("config.json"), r#"{"hidden_size": "wide"}"#).unwrap();
    let err = MaskedAutoencoder::from_pretrained(&hf, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("config.json") && err.contains("hidden_size"), "{err}");
}

/// A fresh folder, removed when the test ends.
fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// `from_pretrained` of a run folder reads its newest complete checkpoint (an incomplete one,
/// without `state.json`, as a crash leaves it, is passed over); the checkpoint folder itself
/// and the encoder read the same way; a run with no checkpoint yet is a clear error.
#[test]
fn from_pretrained_reads_a_run_folder_s_newest_checkpoint() {
    let run = tempdir();
    let checkpoints = run.path().join("checkpoints");
    let empty = MaskedAutoencoder::from_pretrained(run.path(), &Device::Cpu);
    assert!(empty.is_err(), "no checkpoints folder: not a run");
    std::fs::create_dir_all(&checkpoints).unwrap();
    let msg = MaskedAutoencoder::from_pretrained(run.path(), &Device::Cpu).err().unwrap().to_string();
    assert!(msg.contains("no complete checkpoint"), "{msg}");
    let (old, new) = (
        MaskedAutoencoder::new(&tiny(), 1, &Device::Cpu).unwrap(),
        MaskedAutoencoder::new(&tiny(), 2, &Device::Cpu).unwrap(),
    );
    for (step, model, complete) in [(2, &old, true), (4, &new, true), (6, &old, false)] {
        let dir = checkpoints.join(format!("step-{step:08}"));
        std::fs::create_dir_all(&dir).unwrap();
        model.save(dir.join("model.safetensors")).unwrap();
        if complete {
            std::fs::write(dir.join("state.json"), "{}").unwrap();
        }
    }
    let loaded = MaskedAutoencoder::from_pretrained(run.path(), &Device::Cpu).unwrap();
    assert_eq!(loss_of(&loaded), loss_of(&new), "step 4, the newest complete one");
    assert_ne!(loss_of(&loaded), loss_of(&old));
    let from_folder =
        MaskedAutoencoder::from_pretrained(checkpoints.join("step-00000002"), &Device::Cpu).unwrap();
    assert_eq!(loss_of(&from_folder), loss_of(&old));
    let encoder = mae::Encoder::from_pretrained(run.path(), &Device::Cpu).unwrap();
    assert_eq!(encoder.config(), &tiny().encoder_config());
}
