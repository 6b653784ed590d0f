//! Parity with lightly's MAE example (`MaskedVisionTransformerTIMM` over a timm ViT, and
//! `MAEDecoderTIMM`), given the same kept/masked token indices: encoder output and predictions
//! within 1e-5 relative, and the same MSE on masked patches.

use crate::common::*;
use candle_core::{Device, Tensor};
use mae::MaskPlan;

/// lightly's indices are in token space (cls = 0); ours count patches from 0.
fn patch_ids(t: &Tensor, skip_cls: bool) -> Vec<Vec<u32>> {
    t.to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|row| row.into_iter().skip(usize::from(skip_cls)).map(|i| (i - 1) as u32).collect())
        .collect()
}

fn check_case(name: &str) {
    let LoadedCase { config, device, batch: b, fixture, model, pixels } = load_case(name);

    let idx_keep = &fixture["idx_keep"];
    let kept = patch_ids(idx_keep, true);
    assert!(
        idx_keep.to_vec2::<i64>().unwrap().iter().all(|r| r[0] == 0),
        "lightly keeps the cls token first"
    );
    let plan = MaskPlan::from_ids_keep(&kept, config.num_patches()).unwrap();

    let latent = model.forward_encoder(&pixels, &plan).unwrap();
    let err = rel_err(&latent, &fixture["encoded"]);
    assert!(err < 1e-5, "{name}: encoder output rel err {err}");

    let pred = model.forward_decoder(&latent, &plan).unwrap(); // [B, L, P]
    let masked = patch_ids(&fixture["idx_mask"], false);
    let rows = fixture["pred"].dim(1).unwrap();
    let ids: Vec<u32> = masked.iter().flat_map(|r| r[..rows].to_vec()).collect();
    let ids = Tensor::from_vec(ids, (b, rows), &device).unwrap();
    let pred_at_masked = mae::mae_patch::gather_tokens(&pred, &ids).unwrap();
    let err = rel_err(&pred_at_masked, &fixture["pred"]);
    assert!(err < 1e-5, "{name}: predictions rel err {err}");

    let target =
        mae::mae_patch::gather_tokens(&mae::mae_patch::patchify(&pixels, config.patch_size).unwrap(), &ids)
            .unwrap();
    assert!(rel_err(&target, &fixture["target"]) < 1e-6, "{name}: targets (patchify layout)");

    let mask = plan.mask(candle_core::DType::F32, &device).unwrap();
    let loss = model.forward_loss(&pixels, &pred, &mask).unwrap();
    let loss = loss.to_device(&Device::Cpu).unwrap().reshape(1).unwrap();
    let err = rel_err(&loss, &fixture["loss"]);
    assert!(err < 1e-5, "{name}: loss {loss} vs {} (rel {err})", fixture["loss"]);
}

#[test]
fn lightly_tiny_two_images() {
    check_case("lightly_tiny");
}

#[test]
fn lightly_vit_b32_224_example_shape_at_depth_1() {
    check_case("lightly_b32_224");
}
