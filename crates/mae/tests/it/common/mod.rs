//! Shared test support: the fixtures written by `cargo xtask fixtures` and the deterministic
//! "det" generator that `xtask/fixtures/make_fixtures.py` implements identically, so that large
//! models need no stored weights.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use mae::{MaeConfig, PosEmbed, StackShape};
use serde_json::Value;

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// The device under test: CPU, or the GPU when `MAE_TEST_DEVICE=cuda` (with `--features cuda`).
pub fn device() -> Device {
    match std::env::var("MAE_TEST_DEVICE").as_deref() {
        Ok("cuda") => Device::new_cuda(0).expect("MAE_TEST_DEVICE=cuda needs a GPU and --features cuda"),
        _ => Device::Cpu,
    }
}

pub fn load_fixture(name: &str) -> HashMap<String, Tensor> {
    let path = fixtures_dir().join(format!("{name}.safetensors"));
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()))
}

pub fn cases() -> Vec<Value> {
    let path = fixtures_dir().join("cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str::<Vec<Value>>(&text).expect("cases.json is a list")
}

pub fn case(name: &str) -> Value {
    cases().into_iter().find(|c| c["case"] == name).unwrap_or_else(|| panic!("no case {name}"))
}

fn usize_of(v: &Value, key: &str) -> usize {
    v[key].as_u64().unwrap_or_else(|| panic!("case field {key}")) as usize
}

/// The model a fixture case describes.
pub fn case_config(c: &Value) -> MaeConfig {
    let image = &c["image_size"];
    let learned =
        |key: &str| if c[key].as_bool() == Some(true) { PosEmbed::Learned } else { PosEmbed::Sincos };
    MaeConfig {
        image_size: [image[0].as_u64().unwrap() as usize, image[1].as_u64().unwrap() as usize],
        patch_size: usize_of(c, "patch_size"),
        in_channels: usize_of(c, "num_channels"),
        encoder: StackShape {
            dim: usize_of(c, "hidden_size"),
            depth: usize_of(c, "depth"),
            num_heads: usize_of(c, "num_heads"),
            mlp_dim: usize_of(c, "mlp_dim"),
        },
        decoder: StackShape {
            dim: usize_of(c, "decoder_hidden_size"),
            depth: usize_of(c, "decoder_depth"),
            num_heads: usize_of(c, "decoder_num_heads"),
            mlp_dim: usize_of(c, "decoder_mlp_dim"),
        },
        mask_ratio: c["mask_ratio"].as_f64().unwrap(),
        norm_pix_loss: c["norm_pix_loss"].as_bool().unwrap(),
        layer_norm_eps: c["layer_norm_eps"].as_f64().unwrap(),
        qkv_bias: true,
        pos_embed: learned("pos_embed_learned"),
        decoder_pos_embed: learned("decoder_pos_embed_learned"),
    }
}

fn fnv1a64(name: &str) -> u64 {
    name.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

/// det: uniform values in [0, 1) for element i of the tensor called `name` (splitmix64).
pub fn det_uniform01(name: &str, numel: usize) -> Vec<f64> {
    let seed = fnv1a64(name);
    (0..numel as u64)
        .map(|i| {
            let mut z = seed.wrapping_add((i + 1).wrapping_mul(0x9E3779B97F4A7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            z ^= z >> 31;
            (z >> 40) as f64 / 16777216.0
        })
        .collect()
}

pub fn det_tensor(name: &str, shape: &[usize], scale: f64) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f32> = det_uniform01(name, n).iter().map(|u| ((u * 2.0 - 1.0) * scale) as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// det's value rules for a parameter of ours, by name and shape.
pub fn det_param(name: &str, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    if name.ends_with(".weight") && shape.len() == 1 {
        let v: Vec<f32> =
            det_uniform01(name, n).iter().map(|u| (1.0 + (u * 2.0 - 1.0) * 0.1) as f32).collect();
        return Tensor::from_vec(v, shape, &Device::Cpu).unwrap();
    }
    let scale = if name.ends_with(".weight") {
        let fan_in: usize = shape[1..].iter().product();
        (6.0 / (fan_in + shape[0]) as f64).sqrt()
    } else if name.ends_with(".bias") {
        0.05
    } else {
        0.1 // cls_token, mask_token, learned position tables
    };
    det_tensor(name, shape, scale)
}

/// Every parameter of `config` from det.
pub fn det_weights(config: &MaeConfig) -> HashMap<String, Tensor> {
    mae::init::parameter_shapes(config)
        .unwrap()
        .into_iter()
        .map(|(name, shape)| {
            let t = det_param(&name, &shape);
            (name, t)
        })
        .collect()
}

pub fn det_pixels(b: usize, config: &MaeConfig) -> Tensor {
    let [h, w] = config.image_size;
    det_tensor("pixels", &[b, config.in_channels, h, w], 1.5)
}

pub fn det_noise(b: usize, l: usize) -> Tensor {
    let v: Vec<f32> = det_uniform01("noise", b * l).iter().map(|&u| u as f32).collect();
    Tensor::from_vec(v, (b, l), &Device::Cpu).unwrap()
}

/// max |a - b| relative to max |b|: how far `got` is from `want`, on the reference's scale.
pub fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims(), "shapes differ");
    let got = got.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    let want = want.to_dtype(DType::F32).unwrap();
    let diff = (&got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-12);
    diff / scale
}

/// The fixture's gradient sample: the flattened gradient at indices `i * stride`,
/// `stride = max(1, numel / 4096)`, for `i < min(numel, 4096)`.
pub fn strided_sample(grad: &Tensor) -> Tensor {
    let flat = grad.flatten_all().unwrap().to_device(&Device::Cpu).unwrap();
    let numel = flat.elem_count();
    let stride = (numel / 4096).max(1);
    let idx: Vec<u32> = (0..numel.min(4096)).map(|i| (i * stride) as u32).collect();
    let n = idx.len();
    flat.index_select(&Tensor::from_vec(idx, n, &Device::Cpu).unwrap(), 0).unwrap()
}

/// A fixture case ready to run: its det-weighted model on the test device, its pixels, its
/// stored reference outputs.
pub struct LoadedCase {
    pub config: MaeConfig,
    pub device: Device,
    pub batch: usize,
    pub fixture: HashMap<String, Tensor>,
    pub model: mae::MaskedAutoencoder,
    pub pixels: Tensor,
}

pub fn load_case(name: &str) -> LoadedCase {
    let c = case(name);
    let config = case_config(&c);
    let device = device();
    let batch = c["batch"].as_u64().unwrap() as usize;
    let weights = det_weights(&config).into_iter().map(|(k, v)| (k, v.to_device(&device).unwrap())).collect();
    let model = mae::MaskedAutoencoder::from_tensors(&config, weights, name, &device).unwrap();
    let pixels = det_pixels(batch, &config).to_device(&device).unwrap();
    LoadedCase { config, device, batch, fixture: load_fixture(name), model, pixels }
}
