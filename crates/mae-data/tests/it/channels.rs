//! Channel counts other than RGB's three: grayscale kept as one channel, RGBA's alpha kept, 16-bit
//! precision through decode, crop and resize, and images that cannot give the channels asked for.

use std::sync::Arc;

use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, Rgb, Rgba};
use mae_data::{
    decode_image, pixel_stats, sample_rng, DataError, DecodeLimits, EvalTransform, ImageFolder, Loader,
    LoaderConfig, MaeTrainTransform, Normalize, StatsOptions, SyntheticShapes, Transform,
};

use crate::common::{encode, values, write};

/// A 16-bit ramp: 4096 distinct levels over a 64x64 image, 16 apart, none a multiple of 257
/// (so none survives a round trip through 8 bits).
fn ramp16(side: u32) -> DynamicImage {
    DynamicImage::ImageLuma16(ImageBuffer::from_fn(side, side, |x, y| Luma([(y * side + x) as u16 * 16 + 1])))
}

fn distinct(v: &[f32]) -> usize {
    let mut bits: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
    bits.sort_unstable();
    bits.dedup();
    bits.len()
}

#[test]
fn a_16_bit_ramp_keeps_its_levels_through_decode_crop_and_resize() {
    let png = encode(&ramp16(64), ImageFormat::Png);
    let image = decode_image(&png, "ramp.png", &DecodeLimits::default()).unwrap();
    let mut rng = sample_rng(0, 0, 0, 0);
    // Same size: every value arrives exactly, as v / 65535.
    let same =
        EvalTransform { crop_pct: 1.0, ..EvalTransform::new(64) }.with_normalize(Normalize::identity(1));
    let out = values(&same.apply(&image, &mut rng).unwrap());
    assert_eq!(out.len(), 64 * 64);
    for (i, v) in out.iter().enumerate() {
        let expected = (i as f32 * 16.0 + 1.0) / 65535.0;
        assert!((v - expected).abs() < 1e-6, "pixel {i}: {v} vs {expected}");
    }
    assert_eq!(distinct(&out), 4096);
    // Cropped and resized, the levels stay far more than 8 bits could hold.
    let crop = MaeTrainTransform::new(48).with_normalize(Normalize::identity(1));
    let out = values(&crop.apply(&image, &mut rng).unwrap());
    assert_eq!(out.len(), 48 * 48);
    assert!(distinct(&out) > 1000, "{} levels", distinct(&out));
    let shrunk = EvalTransform::new(32).with_normalize(Normalize::identity(1));
    assert!(distinct(&values(&shrunk.apply(&image, &mut rng).unwrap())) > 500);
}

#[test]
fn rgba_keeps_its_alpha_with_four_channels_and_drops_it_with_three() {
    let rgba = DynamicImage::ImageRgba16(ImageBuffer::from_fn(8, 8, |x, _| {
        Rgba([1000 * x as u16, 20000, 65535, 300 * x as u16 + 7])
    }));
    let mut rng = sample_rng(0, 0, 0, 0);
    let four =
        EvalTransform { crop_pct: 1.0, ..EvalTransform::new(8) }.with_normalize(Normalize::identity(4));
    let out = values(&four.apply(&rgba.clone().into(), &mut rng).unwrap());
    assert_eq!(out.len(), 4 * 64);
    for x in 0..8 {
        assert!((out[x] - 1000.0 * x as f32 / 65535.0).abs() < 1e-6);
        assert!((out[3 * 64 + x] - (300.0 * x as f32 + 7.0) / 65535.0).abs() < 1e-6, "alpha of pixel {x}");
    }
    let three = EvalTransform { crop_pct: 1.0, normalize: Normalize::IDENTITY, ..EvalTransform::new(8) };
    assert_eq!(values(&three.apply(&rgba.clone().into(), &mut rng).unwrap())[..3 * 64], out[..3 * 64]);
}

#[test]
fn images_that_cannot_give_the_channels_asked_for_are_errors_naming_them() {
    let rgb = DynamicImage::ImageRgb8(ImageBuffer::from_pixel(4, 4, Rgb([1, 2, 3])));
    let gray = DynamicImage::ImageLuma8(ImageBuffer::from_pixel(4, 4, Luma([9])));
    let mut rng = sample_rng(0, 0, 0, 0);
    let with = |c| EvalTransform::new(4).with_normalize(Normalize::identity(c));
    for (image, channels) in [(&rgb, 1), (&rgb, 4), (&gray, 4), (&gray, 2)] {
        let err = with(channels).apply(&image.clone().into(), &mut rng).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, DataError::Config(_)) && message.contains(&format!("--in-channels {channels}")),
            "{message}"
        );
    }
    // Gray to RGB is replicated, and gray stays one channel.
    assert_eq!(values(&with(3).apply(&gray.clone().into(), &mut rng).unwrap()), vec![9.0 / 255.0; 48]);
    assert_eq!(values(&with(1).apply(&gray.clone().into(), &mut rng).unwrap()), vec![9.0 / 255.0; 16]);
    for bad in [
        Normalize::new(vec![0.5; 2], vec![0.2; 3]),
        Normalize::identity(mae_data::MAX_CHANNELS + 1),
        Normalize::identity(0),
    ] {
        assert!(EvalTransform::new(4).with_normalize(bad).check().is_err());
    }
}

/// In a run, the first image that does not fit stops the loader with its file named (skipping
/// it would skip every such image).
#[test]
fn the_loader_names_the_file_whose_channels_do_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("a.png"), &encode(&ramp16(8), ImageFormat::Png));
    let rgb = DynamicImage::ImageRgb8(ImageBuffer::from_pixel(8, 8, Rgb([1, 2, 3])));
    write(&dir.path().join("b.png"), &encode(&rgb, ImageFormat::Png));
    let folder = Arc::new(ImageFolder::open(dir.path(), DecodeLimits::default()).unwrap());
    let transform = Arc::new(MaeTrainTransform::new(8).with_normalize(Normalize::identity(1)));
    let config = LoaderConfig { shuffle: false, workers: 0, ..LoaderConfig::train(2) };
    let loader = Loader::new(folder, transform, config).unwrap();
    let err = loader.iter_epoch(0).unwrap().find_map(|b| b.err()).expect("an error");
    assert!(err.to_string().contains("b.png") && err.to_string().contains("Rgb8"), "{err}");
}

#[test]
fn pixel_stats_are_exact_on_flat_images_and_the_same_bits_on_any_number_of_workers() {
    let dir = tempfile::tempdir().unwrap();
    for (name, v) in [("a.png", 13107u16), ("b.png", 39321)] {
        let flat = DynamicImage::ImageLuma16(ImageBuffer::from_pixel(8, 8, Luma([v])));
        write(&dir.path().join(name), &encode(&flat, ImageFormat::Png));
    }
    let folder = Arc::new(ImageFolder::open(dir.path(), DecodeLimits::default()).unwrap());
    let options = StatsOptions { size: 8, channels: 1, workers: 0, limit: None };
    let stats = pixel_stats(folder, &options, |_| {}).unwrap();
    assert_eq!((stats.images, stats.skipped), (2, 0));
    assert!((stats.mean[0] - 0.4).abs() < 1e-6 && (stats.std[0] - 0.2).abs() < 1e-6, "{stats:?}");

    let shapes = || -> Arc<dyn mae_data::Dataset> {
        Arc::new(SyntheticShapes::new(100, 32, 5, mae_data::Split::Train).unwrap())
    };
    let with = |workers| StatsOptions { size: 24, channels: 3, workers, limit: Some(90) };
    let one = pixel_stats(shapes(), &with(0), |_| {}).unwrap();
    let two = pixel_stats(shapes(), &with(2), |_| {}).unwrap();
    assert_eq!(one, two);
    assert_eq!(one.images, 90);
    assert!(one.mean.iter().chain(&one.std).all(|v| (0.01..0.99).contains(v)), "{one:?}");
}
