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

/// On the CPU, `--dtype bf16` is mixed precision inside the linear op (`mae_nn::product`): with
/// AVX512-BF16 its products must really run on the bf16 kernel (a dispatch counter, so the f32
/// fallback cannot pass for it), and the loss and the gradient of *every* parameter must stay
/// within bf16's tolerance of the f32 step, parameter by parameter (a pooled cosine would hide
/// one parameter that went wrong). Without AVX512-BF16 the kernel part is reported as skipped
/// (`MAE_REQUIRE_BF16=1` makes that a failure).
#[test]
fn cpu_bf16_step_runs_the_bf16_kernel_and_every_gradient_follows_f32() {
    use mae_nn::product::{bf16_kernel, dispatch_counts, Kernel};
    if !device().is_cpu() {
        eprintln!("SKIPPED cpu_bf16_step...: the device under test is not the CPU");
        return;
    }
    let kernel_here = bf16_kernel() == Kernel::Avx512Bf16;
    if !kernel_here {
        assert!(
            std::env::var("MAE_REQUIRE_BF16").is_err(),
            "MAE_REQUIRE_BF16 is set, but bf16 products run in f32 here"
        );
        eprintln!("SKIPPED the kernel part of cpu_bf16_step...: no AVX512-BF16 (or MAE_PRODUCT=f32)");
    }
    for name in ["hf_tiny_a", "preset_base_p16"] {
        let LoadedCase { config, batch: b, mut model, pixels, .. } = load_case(name);
        let noise = det_noise(b, config.num_patches());
        let f32_out = model.forward_with_noise(&pixels, &noise).unwrap();
        let f32_grads = f32_out.loss.backward().unwrap();

        model.set_compute_dtype(Some(DType::BF16));
        let before = dispatch_counts();
        let out = model.forward_with_noise(&pixels, &noise).unwrap();
        let grads = out.loss.backward().unwrap();
        let after = dispatch_counts();
        if kernel_here {
            let ran = |k: Kernel| {
                let at = |c: &[(Kernel, u64)]| c.iter().find(|(kk, _)| *kk == k).map_or(0, |(_, n)| *n);
                at(&after) - at(&before)
            };
            // Every linear layer: one product forward, two backward (the encoder's patch
            // embedding has no input gradient to compute, but is counted as any other).
            assert!(ran(Kernel::Avx512Bf16) >= 3 * 4, "{name}: {} bf16 products", ran(Kernel::Avx512Bf16));
        }

        let (l32, l16) = (f32_out.loss.to_scalar::<f32>().unwrap(), out.loss.to_scalar::<f32>().unwrap());
        assert!(((l16 - l32) / l32).abs() < 1e-2, "{name}: bf16 loss {l16} vs f32 {l32}");
        for (pname, var) in model.named_vars() {
            let (g32, g16) =
                (f32_grads.get(&var).expect("f32 gradient"), grads.get(&var).expect("bf16 gradient"));
            assert_eq!(g16.dtype(), DType::F32, "{pname}: gradient not f32");
            let norm = g32.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
            let diff =
                (g16 - g32).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
            // bf16 keeps 8 bits of mantissa (2^-9 relative rounding of each operand); through a
            // few layers of products the error grows to a few percent of the gradient's norm.
            let rel = diff / norm.max(1e-12);
            assert!(
                rel < 5e-2 || diff < 1e-6,
                "{name}: {pname}: bf16 gradient off by {rel} of its norm ({norm})"
            );
        }
    }
}

/// After an AdamW step the bf16 products use the new weights: the trained model's bf16 loss is,
/// bit for bit, that of a fresh model built from copies of its weights (nothing packed from the
/// old weights survives the step), and it differs from the loss before the step.
#[test]
fn after_an_optimizer_step_bf16_products_use_the_new_weights() {
    let LoadedCase { config, batch: b, mut model, pixels, .. } = load_case("hf_tiny_a");
    model.set_compute_dtype(Some(DType::BF16));
    let noise = det_noise(b, config.num_patches());
    let loss_of = |m: &mae::MaskedAutoencoder| {
        m.forward_with_noise(&pixels, &noise).unwrap().loss.to_scalar::<f32>().unwrap()
    };
    let before = loss_of(&model);
    let mut opt = mae_train::AdamW::new(model.named_vars(), mae_train::AdamWConfig::default()).unwrap();
    let loss = model.forward_with_noise(&pixels, &noise).unwrap().loss;
    let grads = loss.backward().unwrap();
    let g: Vec<Tensor> = model.named_vars().iter().map(|(_, v)| grads.get(v).unwrap().clone()).collect();
    opt.step(&g, 1e-3).unwrap();
    let after = loss_of(&model);
    assert_ne!(before.to_bits(), after.to_bits(), "the step changed nothing");

    let copies: std::collections::HashMap<String, Tensor> =
        model.named_vars().into_iter().map(|(n, v)| (n, v.as_tensor().copy().unwrap())).collect();
    let mut fresh =
        mae::MaskedAutoencoder::from_tensors(&config, copies, "the trained weights", pixels.device())
            .unwrap();
    fresh.set_compute_dtype(Some(DType::BF16));
    assert_eq!(loss_of(&fresh).to_bits(), after.to_bits(), "bf16 products used stale weights");
}
