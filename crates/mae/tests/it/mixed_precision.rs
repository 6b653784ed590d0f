//! `--dtype bf16`: matrix products in bf16, everything else (weights, gradients, optimizer state,
//! norms, softmax, loss) in f32. The loss must stay close to the f32 reference (bf16 keeps 8
//! bits of mantissa, so about 1e-2 relative), every gradient must arrive in f32 and point the
//! same way as the f32 one, and training must still learn.
//!
//! Runs on the CPU here; `MAE_TEST_DEVICE=cuda` runs the same checks on a GPU (the prepared
//! GPU check, `cargo xtask gpu-check`, does).

use crate::common::*;
use candle_core::{DType, Device, Tensor};

fn flat_gradients(model: &mae::MaskedAutoencoder, loss: &Tensor) -> Tensor {
    let grads = loss.backward().unwrap();
    let parts: Vec<Tensor> = model
        .named_vars()
        .iter()
        .map(|(name, var)| {
            let g = grads.get(var).unwrap_or_else(|| panic!("no gradient for {name}"));
            assert_eq!(g.dtype(), DType::F32, "{name}: gradient is not f32");
            g.flatten_all().unwrap().to_device(&Device::Cpu).unwrap()
        })
        .collect();
    Tensor::cat(&parts, 0).unwrap()
}

fn cosine(a: &Tensor, b: &Tensor) -> f32 {
    let dot = (a * b).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    let norm = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn bf16_loss_and_gradients_follow_f32() {
    for name in ["hf_tiny_a", "preset_base_p16"] {
        let LoadedCase { config, batch: b, fixture, mut model, pixels, .. } = load_case(name);
        let noise = det_noise(b, config.num_patches());

        let f32_out = model.forward_with_noise(&pixels, &noise).unwrap();
        let f32_grads = flat_gradients(&model, &f32_out.loss);

        model.set_compute_dtype(Some(DType::BF16));
        let out = model.forward_with_noise(&pixels, &noise).unwrap();
        assert_eq!(out.loss.dtype(), DType::F32, "the loss is computed in f32");
        assert_eq!(out.pred.dtype(), DType::F32, "the decoder hands back f32 predictions");
        let loss = out.loss.to_device(&Device::Cpu).unwrap().reshape(1).unwrap();
        let err = rel_err(&loss, &fixture["loss"]);
        assert!(err < 2e-2, "{name}: bf16 loss {loss} vs f32 reference {} (rel {err})", fixture["loss"]);
        assert!(err > 0.0, "{name}: bf16 gave exactly the f32 loss: the products did not run in bf16");

        let grads = flat_gradients(&model, &out.loss);
        let cos = cosine(&grads, &f32_grads);
        assert!(cos > 0.99, "{name}: bf16 gradient direction differs from f32 (cosine {cos})");
    }
}

#[test]
fn bf16_training_lowers_the_loss() {
    let LoadedCase { config, batch: b, mut model, pixels, .. } = load_case("hf_tiny_a");
    model.set_compute_dtype(Some(DType::BF16));
    let noise = det_noise(b, config.num_patches());
    let mut opt = mae_train::AdamW::new(model.named_vars(), mae_train::AdamWConfig::default()).unwrap();
    let loss_at = |model: &mae::MaskedAutoencoder| model.forward_with_noise(&pixels, &noise).unwrap().loss;
    let first = loss_at(&model).to_scalar::<f32>().unwrap();
    for _ in 0..30 {
        let loss = loss_at(&model);
        let grads = loss.backward().unwrap();
        let g: Vec<Tensor> = model.named_vars().iter().map(|(_, v)| grads.get(v).unwrap().clone()).collect();
        opt.step(&g, 1e-3).unwrap();
    }
    for (name, var) in model.named_vars() {
        assert_eq!(var.dtype(), DType::F32, "{name}: weights stay f32 under bf16 compute");
    }
    let last = loss_at(&model).to_scalar::<f32>().unwrap();
    assert!(last < 0.7 * first, "30 bf16 steps on one batch: loss {first} -> {last}");
}
