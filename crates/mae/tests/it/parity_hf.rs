//! Number-for-number parity with Hugging Face `ViTMAEForPreTraining` (transformers 5.24): same
//! weights, pixels and noise give the same loss, logits, mask and gradients. Fixtures come from
//! `xtask/fixtures/make_fixtures.py`; tolerances are relative to the reference's largest value:
//! 1e-5 for loss and logits, 1e-4 for gradients.

use crate::common::*;
use candle_core::{DType, Device, IndexOp};
use mae::MaskedAutoencoder;

fn check_case(name: &str) {
    let LoadedCase { config, batch: b, fixture, model, pixels, .. } = load_case(name);
    let noise = det_noise(b, config.num_patches());
    let out = model.forward_with_noise(&pixels, &noise).unwrap();

    let loss = out.loss.to_device(&Device::Cpu).unwrap().reshape(1).unwrap();
    let err = rel_err(&loss, &fixture["loss"]);
    assert!(err < 1e-5, "{name}: loss {loss} vs {} (rel {err})", fixture["loss"]);
    let rows = fixture["logits"].dim(1).unwrap();
    let err = rel_err(&out.pred.i((.., ..rows)).unwrap(), &fixture["logits"]);
    assert!(err < 1e-5, "{name}: logits rel err {err}");
    assert_eq!(
        out.mask.to_device(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap(),
        fixture["mask"].to_vec2::<f32>().unwrap()
    );

    let grads = out.loss.backward().unwrap();
    let vars = model.named_vars();
    let mut checked = 0;
    for (key, want) in fixture.iter().filter(|(k, _)| k.starts_with("grad.")) {
        let var_name = &key["grad.".len()..];
        let (_, var) =
            vars.iter().find(|(n, _)| n == var_name).unwrap_or_else(|| panic!("{name}: no var {var_name}"));
        let got = grads.get(var).unwrap_or_else(|| panic!("{name}: no gradient for {var_name}"));
        let err = rel_err(&strided_sample(got), want);
        assert!(err < 1e-4, "{name}: gradient of {var_name} rel err {err}");
        checked += 1;
    }
    assert_eq!(checked, 9, "{name}: every stored gradient was compared");
}

#[test]
fn det_generator_matches_python() {
    let stored = load_fixture("det_check");
    for (name, want) in &stored {
        let got = match name.as_str() {
            "pixels" => det_tensor("pixels", want.dims(), 1.5),
            "noise" => det_noise(2, 64).reshape(want.dims()).unwrap(),
            _ => det_param(name, want.dims()),
        };
        let got = got.to_dtype(DType::F32).unwrap();
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0, "det `{name}` differs from Python's");
    }
}

#[test]
fn hf_tiny_a_two_images_mask_075() {
    check_case("hf_tiny_a");
}

#[test]
fn hf_tiny_b_norm_pix_loss_three_images_mask_06() {
    check_case("hf_tiny_b");
}

#[test]
fn hf_tiny_c_norm_pix_patch8_mask_05() {
    check_case("hf_tiny_c");
}

#[test]
fn preset_tiny_patch4_32_at_depth_1() {
    check_case("preset_tiny_patch4_32");
}

#[test]
fn preset_lightly_b32_224_at_depth_1() {
    check_case("preset_lightly_b32_224");
}

#[test]
fn preset_base_p16_at_depth_1() {
    check_case("preset_base_p16");
}

#[test]
fn preset_large_p16_at_depth_1() {
    check_case("preset_large_p16");
}

#[test]
fn preset_huge_p14_at_depth_1() {
    check_case("preset_huge_p14");
}

#[test]
fn sincos_matches_the_papers_numpy() {
    let stored = load_fixture("sincos");
    for (key, want) in &stored {
        // sincos_{D}_{G}_{cls|nocls}
        let parts: Vec<&str> = key.split('_').collect();
        let (d, g): (usize, usize) = (parts[1].parse().unwrap(), parts[2].parse().unwrap());
        let cls = parts[3] == "cls";
        let got = mae::mae_patch::sincos_2d_tensor(d, g, g, cls, &Device::Cpu).unwrap().squeeze(0).unwrap();
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6, "{key}: max diff {diff}");
    }
}

/// The Hugging Face directories load through `from_pretrained` (both decoder namings) and give
/// the reference loss.
#[test]
fn from_pretrained_reads_hf_directories() {
    for name in ["hf_tiny_a", "hf_tiny_b", "hf_tiny_c"] {
        let device = device();
        let model = MaskedAutoencoder::from_pretrained(fixtures_dir().join(name), &device).unwrap();
        let c = case(name);
        assert_eq!(model.config(), &case_config(&c), "{name}: config.json read back");
        let b = c["batch"].as_u64().unwrap() as usize;
        let pixels = det_pixels(b, model.config()).to_device(&device).unwrap();
        let out = model.forward_with_noise(&pixels, &det_noise(b, model.config().num_patches())).unwrap();
        let loss = out.loss.to_device(&Device::Cpu).unwrap().reshape(1).unwrap();
        let err = rel_err(&loss, &load_fixture(name)["loss"]);
        assert!(err < 1e-5, "{name}: loss rel err {err}");
    }
}
