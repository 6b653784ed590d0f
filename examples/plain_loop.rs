//! The plain loop (the "PyTorch" tab of the original docs): the crates used directly, every step
//! written out. the repository's MNIST digits (data/mnist) by default, or any data spec.
//!
//! ```text
//! cargo run --release --example plain_loop                       # 200 steps on MNIST
//! cargo run --release --example plain_loop -- synthetic:5000 100 # data spec, steps
//! ```

use std::sync::Arc;

use candle_core::{Device, Tensor};
use mae::pretrain::batch_noise;
use mae::{MaeConfig, MaskPlan, MaskedAutoencoder};
use mae_data::{DataSpec, Loader, LoaderConfig, MaeTrainTransform, OpenOptions};
use mae_train::{AdamW, AdamWConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let data = args
        .next()
        .unwrap_or_else(|| concat!("mnist:", env!("CARGO_MANIFEST_DIR"), "/../../data/mnist@train").into());
    let steps: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(200);
    let (seed, batch_size, base_lr) = (0u64, 64usize, 1.5e-3);

    // Model: the 32 px micro preset, initialised as the paper does.
    let device = Device::Cpu;
    let config = MaeConfig::preset("mae-vit-micro-patch4-32")?;
    let model = MaskedAutoencoder::new(&config, seed, &device)?;

    // Data: MAE's only augmentation, a random resized crop and a flip.
    let dataset = mae_data::open(&data.parse::<DataSpec>()?, &OpenOptions::default())?;
    let transform = Arc::new(MaeTrainTransform::new(32));
    let loader = Loader::new(dataset, transform, LoaderConfig { seed, ..LoaderConfig::train(batch_size) })?;

    // Optimizer: AdamW, betas (0.9, 0.95), lr scaled by batch / 256, no decay on biases and norms.
    let lr = base_lr * batch_size as f64 / 256.0;
    let mut optimizer = AdamW::new(model.named_vars(), AdamWConfig::default())?;

    let mut step = 0;
    'training: for epoch in 0.. {
        for batch in loader.iter_epoch(epoch)? {
            let batch = batch?;
            // Per-sample mask noise keyed by (seed, epoch, sample): 75% of patches hidden.
            let noise = batch_noise(seed, epoch, &batch.indices, config.num_patches());
            let plan =
                MaskPlan::from_noise_values(&noise, batch.len(), config.num_patches(), config.mask_ratio)?;
            let out = model.forward_with_plan(&batch.images, &plan)?;
            let grads = out.loss.backward()?;
            let grads: Vec<Tensor> = model
                .named_vars()
                .iter()
                .map(|(_, v)| grads.get(v).cloned().map_or_else(|| v.zeros_like(), Ok))
                .collect::<candle_core::Result<_>>()?;
            optimizer.step(&grads, lr)?;
            step += 1;
            if step % 20 == 0 {
                println!("epoch {epoch} step {step}: loss {:.4}", out.loss.to_scalar::<f32>()?);
            }
            if step == steps {
                break 'training;
            }
        }
    }
    model.save("plain_loop.safetensors")?;
    println!("saved plain_loop.safetensors (try: cargo run --release --example reconstruct -- plain_loop.safetensors)");
    Ok(())
}
