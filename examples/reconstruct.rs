//! Load a checkpoint (a run folder's, our .safetensors, or a Hugging Face folder) and write the
//! paper's reconstruction picture for a few images.
//!
//! ```text
//! cargo run --release --example reconstruct -- runs/example-trainer/checkpoints/best/model.safetensors
//! cargo run --release --example reconstruct -- fixtures/hf_tiny_a data/photos/chelsea.png
//! ```

use candle_core::{Device, Tensor};
use mae::pretrain::batch_noise;
use mae::visualize::{reconstruct, save_grid, Denormalize};
use mae::{MaskPlan, MaskedAutoencoder};
use mae_data::{open_image, DecodeLimits, EvalTransform, Transform};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let weights = args.next().ok_or("usage: reconstruct WEIGHTS [IMAGE...]")?;
    let mut images: Vec<String> = args.collect();
    if images.is_empty() {
        images = ["chelsea.png", "coffee.png", "rocket.jpg"]
            .iter()
            .map(|f| format!("{}/../../data/photos/{f}", env!("CARGO_MANIFEST_DIR")))
            .collect();
    }
    let model = MaskedAutoencoder::from_pretrained(&weights, &Device::Cpu)?;
    let transform = EvalTransform::new(model.config().image_size[0]);
    let mut pixels = Vec::new();
    for path in &images {
        let image = open_image(path.as_ref(), &DecodeLimits::default())?;
        pixels.push(transform.apply(&image, &mut mae_data::sample_rng(0, 0, 0, 0))?);
    }
    let pixels = Tensor::stack(&pixels, 0)?;
    let (b, l) = (images.len(), model.config().num_patches());
    let plan = MaskPlan::from_noise_values(&batch_noise(0, 0, &(0..b).collect::<Vec<_>>(), l), b, l, 0.75)?;
    let picture = reconstruct(&model, &pixels, &plan)?;
    save_grid(&picture, &Denormalize::default(), "reconstruction.png".as_ref())?;
    println!("wrote reconstruction.png (original | masked | reconstruction | reconstruction + visible)");
    Ok(())
}
