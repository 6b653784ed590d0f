//! Weight files and configs: safetensors (ours and others'), PyTorch zip pickles, and the
//! JSON configs of Hugging Face, timm and our trainer.

use std::path::Path;

use candle_core::Device;
use mae_io::formats::{
    config_from_json, hf_vit_config, hf_vitmae_config, read_config_json, shard_names, timm_config, ConfigJson,
};
use mae_io::{check_finite, Checkpoint, MaeConfig, WeightsFile};
use serde_json::Value;

use super::{put, Target};
use crate::seeds::{self, Seed};

/// safetensors: the reader copies each tensor out of the file (1x), after reading the file
/// (1x); candle may convert on load, and `check_finite` makes f32 copies of one tensor at a
/// time (up to 4x for a u8 tensor). 12x the input plus 4 MiB for maps, names and JSON parsing.
pub const SAFETENSORS: Target = Target {
    name: "safetensors",
    about: "Checkpoint::read_local, WeightsFile::read, mae_train::read_tensors on a .safetensors file",
    seeds: safetensors_seeds,
    dict: &[
        b"\"dtype\"",
        b"\"shape\"",
        b"\"data_offsets\"",
        b"\"__metadata__\"",
        b"\"F16\"",
        b"\"BF16\"",
        b"\"I64\"",
        b"\"U8\"",
        b"\"F64\"",
        b"\"mae_config\"",
        b"\"mae_classifier\"",
        b"[]",
        b"{}",
        b"null",
        b"18446744073709551615",
        b"-1",
        b"1e308",
    ],
    alloc_base: 4 << 20,
    alloc_factor: 12,
    run: run_safetensors,
};

/// PyTorch zip: the reader checks every declared tensor size against its zip entry before
/// reading it; `torch.save` stores entries uncompressed, so a tensor is at most the file's
/// size (a deflated entry may declare up to 1032x, deflate's limit; no seed has one). The file
/// is read by candle's zip and pickle readers (a few copies of the pickle), then the tensors:
/// 16x the input plus 4 MiB.
pub const TORCH: Target = Target {
    name: "torch",
    about: "Checkpoint::read_local on a PyTorch zip pickle (pytorch_model.bin, the paper's .pth)",
    seeds: torch_seeds,
    dict: &[
        b"PK\x03\x04",
        b"PK\x01\x02",
        b"PK\x05\x06",
        b"data.pkl",
        b"\x80\x02",
        b"model",
        b"state_dict",
        b"FloatStorage",
        b"HalfStorage",
        b"_rebuild_tensor_v2",
        b"collections\nOrderedDict\n",
        b"q\x00",
        b".",
    ],
    alloc_base: 4 << 20,
    alloc_factor: 16,
    run: run_torch,
};

/// JSON configs: serde_json's `Value` takes a few times the text (maps, strings); the readers
/// parse the same text up to eight times, one at a time. 32x plus 1 MiB.
pub const CONFIG_JSON: Target = Target {
    name: "config-json",
    about: "config_from_json / read_config_json (Hugging Face ViTMAE and ViT, timm), our MaeConfig, \
            mae_train::read_state, shard_names",
    seeds: config_seeds,
    dict: &[
        b"\"model_type\"",
        b"\"vit_mae\"",
        b"\"vit\"",
        b"\"architecture\"",
        b"\"model_args\"",
        b"\"pretrained_cfg\"",
        b"\"input_size\"",
        b"\"image_size\"",
        b"\"patch_size\"",
        b"\"hidden_size\"",
        b"\"weight_map\"",
        b"\"version\"",
        b"0",
        b"-1",
        b"1e400",
        b"18446744073709551615",
        b"null",
        b"[]",
        b"{}",
        b"true",
        b"\"vit_base_patch16_224\"",
    ],
    alloc_base: 1 << 20,
    alloc_factor: 32,
    run: run_config_json,
};

fn safetensors_seeds() -> Vec<Seed> {
    let mut seeds = seeds::files(&[
        "fixtures/hf_tiny_a/model.safetensors",
        "fixtures/hf_tiny_c/model.safetensors",
        "fixtures/preset_tiny_patch4_32.safetensors",
        "fixtures/lightly_tiny.safetensors",
        "fixtures/lr_sched.safetensors",
        "fixtures/det_check.safetensors",
        "fixtures/adamw_torch.safetensors",
        "fixtures/preset_base_p16.safetensors",
    ]);
    let config = serde_json::to_string(&MaeConfig::mae_vit_micro_patch4_32()).unwrap_or_default();
    let tensors: &[(&str, &str, &[usize])] = &[
        ("cls_token", "F32", &[1, 1, 8]),
        ("patch_embed.proj.weight", "F16", &[8, 3, 2, 2]),
        ("decoder_embed.bias", "BF16", &[4]),
        ("ids", "I64", &[2, 3]),
        ("mask", "U8", &[5]),
        ("norm.weight", "F64", &[2]),
    ];
    seeds.push(Seed::new(
        "generated: ours, mae_config header",
        seeds::safetensors(tensors, &[("mae_config", config)]),
    ));
    let classifier = r#"{"vit":{"image_size":[8,8],"patch_size":2,"in_channels":3,"embed_dim":8,"depth":1,
        "num_heads":2,"mlp_dim":16,"qkv_bias":true,"layer_norm_eps":1e-6,"pos_embed":"learned"},
        "num_classes":3,"pool":"cls"}"#;
    seeds.push(Seed::new(
        "generated: classifier header",
        seeds::safetensors(&tensors[..2], &[("mae_classifier", classifier.into())]),
    ));
    seeds.push(Seed::new("generated: empty", seeds::safetensors(&[], &[])));
    seeds
}

fn torch_seeds() -> Vec<Seed> {
    seeds::files(&["fixtures/hf_tiny_c_bin/pytorch_model.bin", "fixtures/official_tiny.pth"])
}

/// Reads a weights file as every public reader does, and what a loader asks of the result.
fn read_weights(path: &Path) {
    let device = Device::Cpu;
    if let Ok(checkpoint) = Checkpoint::read_local(path, &device) {
        let _ = checkpoint.mae_config();
        let _ = checkpoint.vit_config().map(|v| v.grid());
        let _ = checkpoint.has_decoder();
        let _ = check_finite(&checkpoint.tensors, "fuzz");
    }
}

fn run_safetensors(dir: &Path, input: &[u8]) -> Result<(), String> {
    let path = put(dir, "weights.safetensors", input)?;
    read_weights(&path);
    if let Ok(file) = WeightsFile::read(&path, &Device::Cpu) {
        let _ = file.mae_config();
        let _ = file.classifier_encoder_config();
    }
    let _ = mae_train::read_tensors(&path, &Device::Cpu);
    Ok(())
}

fn run_torch(dir: &Path, input: &[u8]) -> Result<(), String> {
    let path = put(dir, "model.pth", input)?;
    read_weights(&path);
    Ok(())
}

fn config_seeds() -> Vec<Seed> {
    let mut seeds = seeds::files(&[
        "fixtures/hf_tiny_a/config.json",
        "fixtures/hf_tiny_b/config.json",
        "fixtures/hf_tiny_c/config.json",
        "fixtures/hf_tiny_c_bin/config.json",
    ]);
    let generated = [
        ("generated: timm", r#"{"architecture":"vit_base_patch16_224","num_classes":0,"model_args":{"img_size":224,"global_pool":"token"},"pretrained_cfg":{"input_size":[3,224,224]}}"#.to_string()),
        ("generated: timm custom", r#"{"architecture":"vit_custom","model_args":{"embed_dim":64,"depth":2,"num_heads":4,"patch_size":8,"img_size":[32,48],"mlp_ratio":4.0,"qkv_bias":false}}"#.to_string()),
        ("generated: hf vit", r#"{"model_type":"vit","architectures":["ViTModel"],"hidden_size":48,"num_hidden_layers":2,"num_attention_heads":3,"intermediate_size":192,"image_size":32,"patch_size":4,"num_channels":3,"qkv_bias":true,"layer_norm_eps":1e-12}"#.to_string()),
        ("generated: MaeConfig", serde_json::to_string(&MaeConfig::mae_vit_micro_patch4_32()).unwrap_or_default()),
        ("generated: state.json", r#"{"version":1,"written_by":"0.1.0","step":100,"epoch":2,"batch_in_epoch":3,"seed":0,"world_size":1,"recent_loss":0.5,"run_config":{"lr":0.001}}"#.to_string()),
        ("generated: shard index", r#"{"metadata":{"total_size":64},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}"#.to_string()),
    ];
    seeds.extend(generated.into_iter().map(|(name, text)| Seed::new(name, text.into_bytes())));
    seeds
}

/// What a caller does with a config that a reader accepted: validate it, then derive shapes.
fn use_config(config: ConfigJson) {
    match config {
        ConfigJson::Mae(c) => use_mae_config(&c),
        ConfigJson::Vit(v) | ConfigJson::Timm(v) => {
            if mae_io::formats::check_vit(&v).is_ok() {
                let _ = v.grid();
            }
        }
    }
}

fn use_mae_config(c: &MaeConfig) {
    if c.validate().is_ok() {
        let _ = (c.grid(), c.num_patches(), c.encoder_config(), c.decoder_config());
    }
}

fn run_config_json(dir: &Path, input: &[u8]) -> Result<(), String> {
    let path = put(dir, "config.json", input)?;
    if let Ok(json) = serde_json::from_slice::<Value>(input) {
        if let Ok(config) = config_from_json(&json, &path) {
            use_config(config);
        }
        let _ = hf_vitmae_config(&json, &path).map(|c| use_mae_config(&c));
        let _ = hf_vit_config(&json, &path);
        let _ = timm_config(&json, &path);
    }
    let _ = read_config_json(&path);
    let _ = mae_io::config_from_hf_json(&path);
    let _ = shard_names(&path);
    if let Ok(c) = serde_json::from_slice::<MaeConfig>(input) {
        use_mae_config(&c);
    }
    put(dir, "state.json", input)?;
    let _ = mae_train::read_state(dir);
    Ok(())
}
