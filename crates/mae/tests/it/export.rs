//! Namings and formats: export (timm, Hugging Face, ours) and load back to identical tensors and
//! loss; timm-, official- and Hugging-Face-named checkpoints (safetensors and PyTorch pickles)
//! load; shapes that do not fit, unsupported variants and missing decoders are errors naming
//! the tensor.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use crate::common::*;
use candle_core::{Device, Tensor};
use mae::{
    Checkpoint, Encoder, ExportFormat, Format, Hub, MaeConfig, MaeError, MaskedAutoencoder, PosEmbed,
    StackShape,
};

fn cpu() -> Device {
    Device::Cpu
}

fn hf_tiny_a() -> MaskedAutoencoder {
    MaskedAutoencoder::from_pretrained(fixtures_dir().join("hf_tiny_a"), &cpu()).unwrap()
}

/// The paper's model family at a tiny size, whose heads the shapes tell (192 wide: 3 heads as
/// ViT-Tiny; 128-wide decoder: 2), with det weights.
fn paper_tiny() -> MaskedAutoencoder {
    let config = MaeConfig {
        image_size: [32, 32],
        patch_size: 4,
        in_channels: 3,
        encoder: StackShape::new(192, 2, 3),
        decoder: StackShape::new(128, 1, 2),
        mask_ratio: 0.75,
        norm_pix_loss: false,
        layer_norm_eps: 1e-6,
        qkv_bias: true,
        pos_embed: PosEmbed::Sincos,
        decoder_pos_embed: PosEmbed::Sincos,
    };
    MaskedAutoencoder::from_tensors(&config, det_weights(&config), "det", &cpu()).unwrap()
}

fn loss(model: &MaskedAutoencoder) -> f32 {
    let pixels = det_pixels(2, model.config());
    let noise = det_noise(2, model.config().num_patches());
    model.forward_with_noise(&pixels, &noise).unwrap().loss.to_scalar::<f32>().unwrap()
}

fn assert_same_tensors(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) {
    let mut ka: Vec<_> = a.keys().collect();
    let mut kb: Vec<_> = b.keys().collect();
    ka.sort();
    kb.sort();
    assert_eq!(ka, kb);
    for (k, t) in a {
        let (x, y) = (
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b[k].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(t.dims(), b[k].dims(), "{k}");
        assert!(x == y, "{k} differs");
    }
}

#[test]
fn hf_export_is_the_hub_layout_and_round_trips() {
    let model = hf_tiny_a();
    let dir = tempfile::tempdir().unwrap();
    let written = model.save_hf(dir.path()).unwrap();
    assert_eq!(written.len(), 2);

    // Exactly the tensors of the transformers-written fixture folder, bit for bit.
    let ours = candle_core::safetensors::load(dir.path().join("model.safetensors"), &cpu()).unwrap();
    let reference =
        candle_core::safetensors::load(fixtures_dir().join("hf_tiny_a/model.safetensors"), &cpu()).unwrap();
    assert_same_tensors(&ours, &reference);
    // And the config transformers wrote, field for field.
    let read = |p: &Path| serde_json::from_str::<serde_json::Value>(&fs::read_to_string(p).unwrap()).unwrap();
    let (ours_cfg, ref_cfg) =
        (read(&dir.path().join("config.json")), read(&fixtures_dir().join("hf_tiny_a/config.json")));
    for (key, want) in ref_cfg.as_object().unwrap() {
        if key == "transformers_version" {
            continue;
        }
        let got = &ours_cfg[key];
        let same = match (got.as_f64(), want.as_f64()) {
            (Some(g), Some(w)) => g == w,
            _ => got == want,
        };
        assert!(same, "config.json `{key}`: {got} vs {want}");
    }

    let back = MaskedAutoencoder::from_pretrained(dir.path(), &cpu()).unwrap();
    assert_eq!(back.config(), model.config());
    assert_same_tensors(&back.state_dict(), &model.state_dict());
    assert_eq!(loss(&back), loss(&model));
}

#[test]
fn timm_export_round_trips_the_encoder() {
    let model = paper_tiny();
    let dir = tempfile::tempdir().unwrap();
    model.save_timm(dir.path()).unwrap();

    let stored = candle_core::safetensors::load(dir.path().join("model.safetensors"), &cpu()).unwrap();
    let mut encoder_names: Vec<String> =
        mae::mae_vit::VisionTransformer::parameter_shapes(&model.config().encoder_config())
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
    encoder_names.push("pos_embed".into());
    encoder_names.sort();
    let mut names: Vec<String> = stored.keys().cloned().collect();
    names.sort();
    assert_eq!(names, encoder_names, "timm's VisionTransformer(num_classes=0) state dict");
    let config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_args"]["embed_dim"], 192);
    assert_eq!(config["model_args"]["mlp_ratio"], 4.0);

    let checkpoint = Checkpoint::read_local(dir.path(), &cpu()).unwrap();
    assert_eq!(checkpoint.format, Format::Timm);
    let encoder = Encoder::from_checkpoint(checkpoint, &cpu()).unwrap();
    let mut want_config = model.config().encoder_config();
    want_config.pos_embed = PosEmbed::Learned; // timm's table is a parameter
    assert_eq!(encoder.config(), &want_config);
    let mut model_encoder = model.state_dict();
    model_encoder.retain(|k, _| !mae::naming::is_decoder(k));
    assert_same_tensors(&encoder.state_dict(), &model_encoder);
    let pixels = det_pixels(2, model.config());
    let got = encoder.forward(&pixels).unwrap();
    assert_eq!(rel_err(&got, &model.encoder().forward(&pixels).unwrap()), 0.0);

    // A whole MAE from encoder-only weights: an error naming what is missing.
    let err = MaskedAutoencoder::from_pretrained(dir.path(), &cpu()).err().unwrap().to_string();
    assert!(
        err.contains("decoder")
            && err.contains("only an encoder")
            && err.contains("Encoder::from_pretrained"),
        "{err}"
    );
}

#[test]
fn ours_export_and_the_export_function() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::new(dir.path().join("cache")).with_offline(true);
    let src = fixtures_dir().join("hf_tiny_a");
    let file = dir.path().join("sub/tiny.safetensors");
    let written = mae::export::export(&src, ExportFormat::Ours, &file, &hub, &cpu()).unwrap();
    assert_eq!(written, vec![file.clone()]);
    let back = MaskedAutoencoder::load(&file, &cpu()).unwrap();
    assert_same_tensors(&back.state_dict(), &hf_tiny_a().state_dict());
    assert_eq!(loss(&back), loss(&hf_tiny_a()));

    // hf from ours, timm from ours (timm needs the encoder only, also from encoder-only weights).
    mae::export::export(&file, ExportFormat::Hf, &dir.path().join("hf"), &hub, &cpu()).unwrap();
    assert_eq!(
        loss(&MaskedAutoencoder::from_pretrained(dir.path().join("hf"), &cpu()).unwrap()),
        loss(&back)
    );
    mae::export::export(&file, ExportFormat::Timm, &dir.path().join("timm"), &hub, &cpu()).unwrap();
    mae::export::export(dir.path().join("timm"), ExportFormat::Timm, &dir.path().join("timm2"), &hub, &cpu())
        .unwrap();
    let err =
        mae::export::export(dir.path().join("timm"), ExportFormat::Hf, &dir.path().join("x"), &hub, &cpu())
            .err()
            .unwrap();
    assert!(err.to_string().contains("decoder"), "{err}");
    assert_eq!("timm".parse::<ExportFormat>().unwrap(), ExportFormat::Timm);
    assert!("onnx".parse::<ExportFormat>().is_err());
}

#[test]
fn the_papers_pth_checkpoint_reads_through_the_pickle_path() {
    // fixtures/official_tiny.pth: torch.save({"model": state_dict}) of hf_tiny_c's weights in
    // the official names, as facebookresearch/mae's checkpoints are.
    let path = fixtures_dir().join("official_tiny.pth");
    let checkpoint = Checkpoint::read_local(&path, &cpu()).unwrap();
    assert_eq!(checkpoint.format, Format::Official);
    assert!(checkpoint.has_decoder());
    let config = case_config(&case("hf_tiny_c"));
    let model = MaskedAutoencoder::from_checkpoint_with_config(checkpoint, &config, &cpu()).unwrap();
    let c = case("hf_tiny_c");
    let b = c["batch"].as_u64().unwrap() as usize;
    let out = model.forward_with_noise(&det_pixels(b, &config), &det_noise(b, config.num_patches())).unwrap();
    let err = rel_err(&out.loss.reshape(1).unwrap(), &load_fixture("hf_tiny_c")["loss"]);
    assert!(err < 1e-5, "loss rel err {err}");

    // Alone, a 32-wide model does not say how many heads it has: an error asking for a config.
    let msg = MaskedAutoencoder::from_pretrained(&path, &cpu()).err().unwrap().to_string();
    assert!(msg.contains("attention heads") && msg.contains("config.json"), "{msg}");

    // transformers' pytorch_model.bin (a flat state dict, hub naming) beside its config.json.
    let model = MaskedAutoencoder::from_pretrained(fixtures_dir().join("hf_tiny_c_bin"), &cpu()).unwrap();
    assert_eq!(model.config(), &config);
    let out = model.forward_with_noise(&det_pixels(b, &config), &det_noise(b, config.num_patches())).unwrap();
    let err = rel_err(&out.loss.reshape(1).unwrap(), &load_fixture("hf_tiny_c")["loss"]);
    assert!(err < 1e-5, "loss rel err {err}");
}

#[test]
fn official_named_weights_without_a_config_take_their_shape_from_the_tensors() {
    let model = paper_tiny();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mae_visualize_vit_tiny.safetensors");
    candle_core::safetensors::save(&model.state_dict(), &path).unwrap();

    let back = MaskedAutoencoder::from_pretrained(&path, &cpu()).unwrap();
    assert_eq!(back.config(), model.config());
    assert_eq!(loss(&back), loss(&model));
    // The encoder alone keeps the file's position table as a learned one.
    let encoder = Encoder::from_pretrained(&path, &cpu()).unwrap();
    assert_eq!(encoder.config().pos_embed, PosEmbed::Learned);
    let pixels = det_pixels(2, model.config());
    assert_eq!(rel_err(&encoder.forward(&pixels).unwrap(), &model.encoder().forward(&pixels).unwrap()), 0.0);

    // The paper's encoder-only checkpoint (mae_pretrain_vit_*.pth) in the same way.
    let mut encoder_only = model.state_dict();
    encoder_only.retain(|k, _| !mae::naming::is_decoder(k));
    let path = dir.path().join("mae_pretrain_vit_tiny.safetensors");
    candle_core::safetensors::save(&encoder_only, &path).unwrap();
    assert!(Encoder::from_pretrained(&path, &cpu()).is_ok());
    let msg = MaskedAutoencoder::from_pretrained(&path, &cpu()).err().unwrap().to_string();
    assert!(msg.contains("decoder_embed") && msg.contains("missing"), "{msg}");
}

/// The hf_tiny_a encoder as a timm hub folder holds it (with a classifier head), renamed from ours.
#[test]
fn a_timm_named_checkpoint_loads_as_an_encoder() {
    let model = hf_tiny_a();
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = model.state_dict();
    tensors.retain(|k, _| !mae::naming::is_decoder(k));
    tensors.insert("head.weight".into(), Tensor::zeros((10, 48), candle_core::DType::F32, &cpu()).unwrap());
    tensors.insert("head.bias".into(), Tensor::zeros(10, candle_core::DType::F32, &cpu()).unwrap());
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "architecture": "vit_base_patch16_224",
        "num_classes": 10,
        "num_features": 48,
        "global_pool": "token",
        "model_args": {"img_size": 32, "patch_size": 4, "embed_dim": 48, "depth": 2, "num_heads": 3},
        "pretrained_cfg": {"tag": "mae", "input_size": [3, 32, 32], "num_classes": 10, "classifier": "head"},
    });
    fs::write(dir.path().join("config.json"), config.to_string()).unwrap();

    let checkpoint = Checkpoint::read_local(dir.path(), &cpu()).unwrap();
    assert_eq!(checkpoint.format, Format::Timm);
    assert_eq!(checkpoint.ignored, vec!["head.bias".to_string(), "head.weight".to_string()]);
    let encoder = Encoder::from_checkpoint(checkpoint, &cpu()).unwrap();
    assert_eq!(encoder.config().layer_norm_eps, 1e-6, "timm's eps");
    // Same weights; the MAE's HF eps is 1e-12, so the outputs agree to about 1e-6.
    let pixels = det_pixels(2, model.config());
    let err = rel_err(&encoder.forward(&pixels).unwrap(), &model.encoder().forward(&pixels).unwrap());
    assert!(err < 1e-4, "{err}");
    let msg = MaskedAutoencoder::from_pretrained(dir.path(), &cpu()).err().unwrap().to_string();
    assert!(msg.contains("timm") && msg.contains("decoder"), "{msg}");

    // A variant with layer scale is refused, naming the tensor.
    tensors.insert("blocks.0.ls1.gamma".into(), Tensor::ones(48, candle_core::DType::F32, &cpu()).unwrap());
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    let msg = Encoder::from_pretrained(dir.path(), &cpu()).err().unwrap().to_string();
    assert!(msg.contains("blocks.0.ls1.gamma") && msg.contains("layer scale"), "{msg}");
}

#[test]
fn a_tensor_of_the_wrong_shape_is_named_in_both_namings() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures_dir().join("hf_tiny_a");
    fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let mut tensors = candle_core::safetensors::load(src.join("model.safetensors"), &cpu()).unwrap();
    let name = "vit.encoder.layer.1.intermediate.dense.weight";
    tensors.insert(name.into(), Tensor::zeros((100, 48), candle_core::DType::F32, &cpu()).unwrap());
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    let err = MaskedAutoencoder::from_pretrained(dir.path(), &cpu()).err().unwrap();
    let msg = err.to_string();
    assert!(matches!(err, MaeError::ShapeMismatch { .. }), "{msg}");
    assert!(
        msg.contains("blocks.1.mlp.fc1.weight") && msg.contains(name) && msg.contains("[100, 48]"),
        "{msg}"
    );

    // The same through the encoder loader, and for a joined query/key/value.
    let q = "vit.encoder.layer.0.attention.attention.query.weight";
    tensors.insert(name.into(), Tensor::zeros((192, 48), candle_core::DType::F32, &cpu()).unwrap());
    tensors.insert(q.into(), Tensor::zeros((40, 48), candle_core::DType::F32, &cpu()).unwrap());
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    let msg = Encoder::from_pretrained(dir.path(), &cpu()).err().unwrap().to_string();
    assert!(msg.contains(q) && msg.contains("[40, 48]"), "{msg}");
}

/// Writes a tiny model exported as timm and Hugging Face folders, with the inputs and our
/// outputs, for `xtask/fixtures/verify_export.py` to load in PyTorch (see docs/weights.md):
/// `MAE_EXPORT_CHECK_DIR=target/export-check cargo test -p mae --test it -- --ignored export::`.
#[test]
#[ignore = "writes files for xtask/fixtures/verify_export.py"]
fn write_exports_for_the_pytorch_check() {
    let dir = std::env::var("MAE_EXPORT_CHECK_DIR").unwrap_or_else(|_| "../../target/export-check".into());
    let dir = Path::new(&dir);
    // A micro preset at depth 2/1 with det weights (non-zero biases, non-unit norms).
    let mut config = MaeConfig::preset("mae-vit-micro-patch4-32").unwrap();
    config.encoder.depth = 2;
    config.decoder.depth = 1;
    let model = MaskedAutoencoder::from_tensors(&config, det_weights(&config), "det", &cpu()).unwrap();
    model.save_hf(dir.join("hf")).unwrap();
    model.save_timm(dir.join("timm")).unwrap();
    let pixels = det_pixels(2, &config);
    let noise = det_noise(2, config.num_patches());
    let out = model.forward_with_noise(&pixels, &noise).unwrap();
    let expected = HashMap::from([
        ("pixels".to_string(), pixels.clone()),
        ("noise".to_string(), noise),
        ("loss".to_string(), out.loss.reshape(1).unwrap()),
        ("logits".to_string(), out.pred),
        ("mask".to_string(), out.mask),
        ("features".to_string(), model.encoder().forward(&pixels).unwrap()),
    ]);
    candle_core::safetensors::save(&expected, dir.join("expected.safetensors")).unwrap();
    println!("wrote {}", dir.display());
}
