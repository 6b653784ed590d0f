//! The train and eval transforms: torchvision's crop parameters, colour handling, flips.

use image::{DynamicImage, ImageBuffer, Luma, LumaA, Rgb, Rgba};
use mae_data::{
    random_resized_crop_params, sample_rng, CropBox, EvalTransform, MaeTrainTransform, Normalize, Transform,
};

use crate::common::{test_card, values};

#[test]
fn random_resized_crop_stays_in_range() {
    let mut rng = sample_rng(0, 0, 0, 0);
    let (mut tried, mut fallbacks) = (0, 0);
    for &(w, h) in &[(224u32, 224u32), (640, 427), (28, 28), (1000, 300), (3, 5)] {
        for _ in 0..300 {
            let b = random_resized_crop_params(w, h, (0.2, 1.0), (3.0 / 4.0, 4.0 / 3.0), &mut rng);
            assert!(b.width >= 1 && b.height >= 1 && b.left + b.width <= w && b.top + b.height <= h, "{b:?}");
            let area = (b.width * b.height) as f64 / (w * h) as f64;
            let ratio = b.width as f64 / b.height as f64;
            tried += 1;
            // Rounding to whole pixels blurs the bounds on tiny images; check them where it does not.
            if w >= 224 && h >= 224 {
                let full_fallback = b == CropBox { top: 0, left: 0, height: h, width: w };
                fallbacks += full_fallback as usize;
                assert!(full_fallback || (0.19..=1.01).contains(&area), "{area}");
                assert!(full_fallback || (0.74..=1.35).contains(&ratio), "{ratio}");
            }
        }
    }
    assert!(fallbacks < tried / 50, "the ten tries almost always succeed on sane images");
}

#[test]
fn random_resized_crop_falls_back_to_torchvisions_central_crop() {
    // 100x10 with a near-full area: every try is taller than the image, so the fallback crops
    // the centre to the widest allowed ratio: h = 10, w = round(10 * 4/3) = 13, left = 87 // 2.
    let mut rng = sample_rng(0, 0, 0, 0);
    let b = random_resized_crop_params(100, 10, (0.99, 1.0), (3.0 / 4.0, 4.0 / 3.0), &mut rng);
    assert_eq!(b, CropBox { top: 0, left: 43, height: 10, width: 13 });
    let b = random_resized_crop_params(10, 100, (0.99, 1.0), (3.0 / 4.0, 4.0 / 3.0), &mut rng);
    assert_eq!(b, CropBox { top: 43, left: 0, height: 13, width: 10 });
}

#[test]
fn eval_resize_follows_torchvision() {
    let t = EvalTransform::new(224);
    assert_eq!(t.resized_size(640, 427), (383, 256));
    assert_eq!(t.resized_size(427, 640), (256, 383));
    assert_eq!(t.resized_size(512, 512), (256, 256));
    assert_eq!(EvalTransform { crop_pct: 1.0, ..EvalTransform::new(32) }.resized_size(28, 28), (32, 32));
}

/// A 4096x2 strip: the eval transform keeps its middle (cut to 16:1 before the resize, so the
/// resize makes 576x36 pixels, not 73,728x36), as the uncut resize and centre crop would: the
/// crop of a 2-pixel-high strip spans only the middle ~2 pixels of its length.
#[test]
fn eval_of_an_extreme_strip_keeps_its_middle_without_a_huge_resize() {
    let t = EvalTransform { normalize: Normalize::IDENTITY, ..EvalTransform::new(32) };
    for (middle, rest) in [(255u8, 0u8), (0, 255)] {
        let strip = DynamicImage::ImageRgb8(ImageBuffer::from_fn(4096, 2, |x, _| {
            Rgb([if (2040..2056).contains(&x) { middle } else { rest }; 3])
        }));
        let v = raw(&t, &strip, 0);
        assert_eq!(v.len(), 3 * 32 * 32);
        let want = f32::from(middle) / 255.0;
        assert!(v.iter().all(|p| (p - want).abs() < 0.02), "the middle band fills the output");
    }
}

fn raw(t: &dyn Transform, image: &DynamicImage, seed: u64) -> Vec<f32> {
    values(&t.apply(&image.clone().into(), &mut sample_rng(seed, 0, 0, 0)).unwrap())
}

#[test]
fn identity_eval_keeps_pixels_and_normalises() {
    let card = test_card(16, 16);
    let rgb = card.to_rgb8();
    let t = EvalTransform { crop_pct: 1.0, normalize: Normalize::IDENTITY, ..EvalTransform::new(16) };
    let v = raw(&t, &card, 0);
    for (x, y) in [(0, 0), (15, 3), (7, 12)] {
        for c in 0..3 {
            let expected = rgb.get_pixel(x, y).0[c] as f32 / 255.0;
            assert!((v[c * 256 + y as usize * 16 + x as usize] - expected).abs() < 1e-6);
        }
    }
    let imagenet = raw(&EvalTransform { crop_pct: 1.0, ..EvalTransform::new(16) }, &card, 0);
    let (m, s) = (Normalize::IMAGENET.mean, Normalize::IMAGENET.std);
    for c in 0..3 {
        assert!((imagenet[c * 256] - (v[c * 256] - m[c]) / s[c]).abs() < 1e-5);
    }
}

#[test]
fn gray_alpha_and_16_bit_become_rgb_in_unit_range() {
    let t = EvalTransform { crop_pct: 1.0, normalize: Normalize::IDENTITY, ..EvalTransform::new(8) };
    let check = |image: DynamicImage, expected: [f32; 3]| {
        let v = raw(&t, &image, 0);
        for c in 0..3 {
            assert!(v[c * 64..(c + 1) * 64].iter().all(|x| (x - expected[c]).abs() < 1e-3), "{image:?} {c}");
        }
    };
    check(DynamicImage::ImageLuma8(ImageBuffer::from_pixel(8, 8, Luma([51]))), [0.2; 3]);
    check(DynamicImage::ImageLumaA8(ImageBuffer::from_pixel(8, 8, LumaA([51, 0]))), [0.2; 3]);
    // Alpha is dropped, not composited (PIL's convert("RGB")).
    check(DynamicImage::ImageRgba8(ImageBuffer::from_pixel(8, 8, Rgba([255, 102, 0, 10]))), [1.0, 0.4, 0.0]);
    // 16-bit: 32768 is one half, not clipped to 1.
    check(DynamicImage::ImageLuma16(ImageBuffer::from_pixel(8, 8, Luma([32768]))), [0.5; 3]);
    check(DynamicImage::ImageRgb16(ImageBuffer::from_pixel(8, 8, Rgb([65535, 0, 13107]))), [1.0, 0.0, 0.2]);
    // And through a real resize: a 16-bit image shrinks like its 8-bit twin.
    let t = MaeTrainTransform { normalize: Normalize::IDENTITY, ..MaeTrainTransform::new(12) };
    let card8 = test_card(40, 30);
    let card16 = DynamicImage::ImageRgb16(card8.to_rgb16());
    let (a, b) = (raw(&t, &card8, 3), raw(&t, &card16, 3));
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 0.01));
}

#[test]
fn flip_mirrors_and_is_drawn_per_sample() {
    let card = test_card(20, 20);
    let whole = |hflip| MaeTrainTransform {
        scale: (1.0, 1.0),
        ratio: (1.0, 1.0),
        hflip,
        normalize: Normalize::IDENTITY,
        ..MaeTrainTransform::new(20)
    };
    let (kept, flipped) = (raw(&whole(0.0), &card, 0), raw(&whole(1.0), &card, 0));
    for y in 0..20 {
        for x in 0..20 {
            assert_eq!(kept[y * 20 + x], flipped[y * 20 + 19 - x]);
        }
    }
    // p = 0.5: some seeds flip, some do not, and each seed always decides the same way.
    let half = whole(0.5);
    let flips: Vec<bool> = (0..32).map(|s| raw(&half, &card, s) == flipped).collect();
    assert!(flips.iter().any(|&f| f) && flips.iter().any(|&f| !f));
    assert_eq!(flips, (0..32).map(|s| raw(&half, &card, s) == flipped).collect::<Vec<_>>());
}

#[test]
fn transform_parameters_are_checked() {
    let bad: [Box<dyn Transform>; 5] = [
        Box::new(MaeTrainTransform::new(0)),
        Box::new(MaeTrainTransform { ratio: (0.0, 1.0), ..MaeTrainTransform::new(8) }),
        Box::new(MaeTrainTransform { hflip: 1.5, ..MaeTrainTransform::new(8) }),
        Box::new(EvalTransform { crop_pct: 0.0, ..EvalTransform::new(8) }),
        Box::new(EvalTransform {
            normalize: Normalize::new(vec![0.0; 3], vec![0.0; 3]),
            ..EvalTransform::new(8)
        }),
    ];
    for t in bad {
        assert!(t.check().is_err(), "{t:?}");
        assert!(t.apply(&test_card(8, 8).into(), &mut sample_rng(0, 0, 0, 0)).is_err());
    }
}
