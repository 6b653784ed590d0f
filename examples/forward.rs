//! Builds a preset, runs one masked forward pass and backward pass on a batch of images, and
//! prints the loss: the smallest complete use of the model.
//!
//! ```text
//! cargo run --release --example forward                          # mae-vit-tiny-patch4-32
//! cargo run --release --example forward -- mae-vit-base-patch16 4 # preset, batch size
//! ```

use std::time::Instant;

use candle_core::{Device, Tensor};
use mae::{MaeConfig, MaskedAutoencoder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let preset = args.next().unwrap_or_else(|| "mae-vit-tiny-patch4-32".to_string());
    let batch: usize = match args.next() {
        Some(b) => b.parse().map_err(|_| format!("batch size must be a positive integer, got `{b}`"))?,
        None => 8,
    };
    let config = MaeConfig::preset(&preset)?;
    let device = Device::Cpu;
    let model = MaskedAutoencoder::new(&config, 0, &device)?;
    println!(
        "{preset}: {:.1}M parameters, {} patches, mask ratio {}",
        model.num_parameters() as f64 / 1e6,
        config.num_patches(),
        config.mask_ratio
    );

    // Seeded stand-in images in ImageNet-normalised range (the data pipeline brings real ones).
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let [h, w] = config.image_size;
    let values: Vec<f32> = (0..batch * 3 * h * w).map(|_| rng.random_range(-2.0..2.0)).collect();
    let pixels = Tensor::from_vec(values, (batch, 3, h, w), &device)?;

    let start = Instant::now();
    let out = model.forward(&pixels, &mut rng)?;
    let forward = start.elapsed();
    let grads = out.loss.backward()?;
    let backward = start.elapsed() - forward;
    let with_grad = model.named_vars().iter().filter(|(_, v)| grads.get(v).is_some()).count();
    println!(
        "loss {:.4} | pred {:?} | mask {:?} ({} of {} patches hidden per image)",
        out.loss.to_scalar::<f32>()?,
        out.pred.dims(),
        out.mask.dims(),
        out.mask.sum_all()?.to_scalar::<f32>()? as usize / batch,
        config.num_patches()
    );
    println!(
        "forward {:.0} ms, backward {:.0} ms, {with_grad}/{} variables got gradients",
        forward.as_secs_f64() * 1e3,
        backward.as_secs_f64() * 1e3,
        model.named_vars().len()
    );
    Ok(())
}
