//! Multi-band, paged, planar, signed and float TIFFs (read by our own TIFF path, past the image
//! crate's 4 channels): values, layouts, band counts that do not fit, and bad samples.

use std::sync::Arc;

use mae_data::{
    decode_image, pixel_stats, sample_rng, DataError, DecodeLimits, EvalTransform, Image, ImageFolder,
    Loader, LoaderConfig, MaeTrainTransform, Normalize, StatsOptions, Transform,
};

use crate::common::{tiff_bytes, values, write, TiffPage, TiffSample};

/// `bands` bands of `side` x `side` pixels: band b at pixel p is `b * 1000 + p * 3 + 1`, all
/// distinct and none a multiple of 257 (so an 8-bit step would show).
fn band_values(side: u32, bands: usize) -> Vec<f64> {
    let pixels = (side * side) as usize;
    (0..pixels * bands).map(|i| ((i % bands) * 1000 + (i / bands) * 3 + 1) as f64).collect()
}

fn page(side: u32, samples: u16, sample: TiffSample, planar: bool, values: &[f64]) -> TiffPage<'_> {
    TiffPage { width: side, height: side, samples, sample, planar, values }
}

fn decode(bytes: &[u8]) -> Image {
    decode_image(bytes, "bands.tif", &DecodeLimits::default()).unwrap()
}

/// The identity eval transform at the image's own size: the values as decoded, CHW.
fn same_size(image: &Image, channels: usize, side: usize) -> Vec<f32> {
    let t = EvalTransform { crop_pct: 1.0, ..EvalTransform::new(side) }
        .with_normalize(Normalize::identity(channels));
    values(&t.apply(image, &mut sample_rng(0, 0, 0, 0)).unwrap())
}

#[test]
fn seven_16_bit_bands_arrive_exactly_chunky_or_planar() {
    let v = band_values(8, 7);
    for planar in [false, true] {
        let image = decode(&tiff_bytes(&[page(8, 7, TiffSample::U16, planar, &v)]));
        let bands = image.as_bands().expect("more than 4 samples are bands");
        assert_eq!((bands.width, bands.height, bands.bands), (8, 8, 7));
        let out = same_size(&image, 7, 8);
        for b in 0..7 {
            for p in 0..64 {
                let expected = v[p * 7 + b] / 65535.0;
                assert!(
                    (out[b * 64 + p] as f64 - expected).abs() < 1e-7,
                    "planar {planar} band {b} pixel {p}"
                );
            }
        }
    }
}

#[test]
fn resizing_many_bands_keeps_16_bit_levels_and_matches_each_band_alone() {
    let side = 32;
    let v = band_values(side, 6);
    let image = decode(&tiff_bytes(&[page(side, 6, TiffSample::U16, false, &v)]));
    let t = MaeTrainTransform::new(20).with_normalize(Normalize::identity(6));
    let out = values(&t.apply(&image, &mut sample_rng(3, 0, 0, 0)).unwrap());
    // No band collapses to 256 levels: a 20x20 crop of a 16-bit ramp keeps nearly every value.
    for band in out.chunks_exact(400) {
        let mut bits: Vec<u32> = band.iter().map(|x| x.to_bits()).collect();
        bits.sort_unstable();
        bits.dedup();
        assert!(bits.len() > 300, "{} distinct values", bits.len());
    }
    // Band 4 through the same crop (same seed) as a one-band image gives the same values.
    let band4: Vec<f64> = (0..(side * side) as usize).map(|p| v[p * 6 + 4]).collect();
    let alone = decode(&tiff_bytes(&[page(side, 1, TiffSample::U32, false, &band4)]));
    let t1 = MaeTrainTransform::new(20).with_normalize(Normalize::identity(1));
    let one = values(&t1.apply(&alone, &mut sample_rng(3, 0, 0, 0)).unwrap());
    // U32 scales by 1/(2^32-1), U16 by 1/65535: compare in the stored units.
    for (a, b) in out[4 * 400..5 * 400].iter().zip(&one) {
        let (a, b) = (*a as f64 * 65535.0, *b as f64 * u32::MAX as f64);
        assert!((a - b).abs() < 0.05, "{a} vs {b}");
    }
}

#[test]
fn float_and_signed_gray_keep_their_values_and_replicate_to_rgb() {
    // Hounsfield-like floats and elevations: values far outside [0, 1] are kept as they are.
    let v: Vec<f64> = (0..64).map(|i| -1000.0 + i as f64 * 37.5).collect();
    for sample in [TiffSample::F32, TiffSample::I16] {
        let image = decode(&tiff_bytes(&[page(8, 1, sample, false, &v)]));
        assert_eq!(image.as_bands().map(|b| b.bands), Some(1), "{sample:?}");
        let one = same_size(&image, 1, 8);
        let expected: Vec<f32> =
            v.iter().map(|&x| if sample == TiffSample::I16 { (x as i16) as f32 } else { x as f32 }).collect();
        assert_eq!(one, expected, "{sample:?}");
        // Three channels replicate the band, as for any gray image.
        assert_eq!(same_size(&image, 3, 8), [expected.clone(), expected.clone(), expected].concat());
    }
}

#[test]
fn one_sample_pages_of_one_size_are_bands_and_overviews_are_ignored() {
    let v = band_values(8, 5);
    let planes: Vec<Vec<f64>> = (0..5).map(|b| (0..64).map(|p| v[p * 5 + b]).collect()).collect();
    let overview = vec![7.0; 16];
    let mut pages: Vec<TiffPage> = planes.iter().map(|p| page(8, 1, TiffSample::U16, false, p)).collect();
    pages.push(page(4, 1, TiffSample::U16, false, &overview));
    let image = decode(&tiff_bytes(&pages));
    assert_eq!(image.as_bands().map(|b| b.bands), Some(5));
    let out = same_size(&image, 5, 8);
    for b in 0..5 {
        assert_eq!(
            out[b * 64..(b + 1) * 64],
            planes[b].iter().map(|x| (x / 65535.0) as f32).collect::<Vec<_>>()[..]
        );
    }
    // A single 8 or 16-bit page is still the image crate's, as before.
    let single = decode(&tiff_bytes(&[page(8, 1, TiffSample::U16, false, &planes[0])]));
    assert!(single.as_standard().is_some());
}

#[test]
fn band_counts_that_do_not_fit_the_run_are_errors_naming_the_file() {
    let v = band_values(8, 7);
    let image = decode(&tiff_bytes(&[page(8, 7, TiffSample::U16, false, &v)]));
    for channels in [1, 3, 4, 8] {
        let t = EvalTransform::new(8).with_normalize(Normalize::identity(channels));
        let err = t.apply(&image, &mut sample_rng(0, 0, 0, 0)).unwrap_err();
        assert!(
            matches!(err, DataError::Config(_))
                && err.to_string().contains("7 bands")
                && err.to_string().contains(&format!("--in-channels {channels}")),
            "{err}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("tile.tif"), &tiff_bytes(&[page(8, 7, TiffSample::U16, false, &v)]));
    let folder = Arc::new(ImageFolder::open(dir.path(), DecodeLimits::default()).unwrap());
    let transform = Arc::new(MaeTrainTransform::new(8).with_normalize(Normalize::identity(4)));
    let loader =
        Loader::new(folder, transform, LoaderConfig { workers: 0, ..LoaderConfig::train(1) }).unwrap();
    let err = loader.iter_epoch(0).unwrap().find_map(|b| b.err()).expect("an error");
    assert!(err.to_string().contains("tile.tif") && err.to_string().contains("7 bands"), "{err}");
}

#[test]
fn nan_samples_and_truncated_data_are_decode_errors_naming_the_file() {
    let mut v = vec![0.5; 64];
    v[10] = f64::NAN;
    let err =
        decode_image(&tiff_bytes(&[page(8, 1, TiffSample::F32, false, &v)]), "dem.tif", &Default::default())
            .unwrap_err();
    assert!(
        err.is_sample_error()
            && err.to_string().contains("dem.tif")
            && err.to_string().contains("band 1 is NaN at pixel (2, 1)"),
        "{err}"
    );
    let good = tiff_bytes(&[page(8, 6, TiffSample::U16, false, &band_values(8, 6))]);
    // Cut inside the pixel data (which comes before the IFD): the strip offsets point past the end.
    let mut cut = good.clone();
    cut.drain(8..400);
    let err = decode_image(&cut, "cut.tif", &Default::default()).unwrap_err();
    assert!(err.is_sample_error() && err.to_string().contains("cut.tif"), "{err}");
    // The allocation cap holds for band stacks too.
    let small = DecodeLimits { max_pixels: 1 << 20, max_alloc: 1000 };
    let err = decode_image(&good, "big.tif", &small).unwrap_err();
    assert!(err.to_string().contains("big.tif") && err.to_string().contains("allocate"), "{err}");
}

#[test]
fn pixel_stats_of_a_band_folder_are_per_band() {
    let dir = tempfile::tempdir().unwrap();
    for (name, scale) in [("a.tif", 1.0), ("b.tif", 3.0)] {
        // Band b is flat at (b + 1) * scale, stored as floats (kept as they are).
        let v: Vec<f64> = (0..64 * 5).map(|i| ((i % 5) + 1) as f64 * scale).collect();
        write(&dir.path().join(name), &tiff_bytes(&[page(8, 5, TiffSample::F32, false, &v)]));
    }
    let folder = Arc::new(ImageFolder::open(dir.path(), DecodeLimits::default()).unwrap());
    let stats =
        pixel_stats(folder, &StatsOptions { size: 8, channels: 5, workers: 0, limit: None }, |_| {}).unwrap();
    for b in 0..5 {
        let (lo, hi) = ((b + 1) as f64, (b + 1) as f64 * 3.0);
        assert!((stats.mean[b] - (lo + hi) / 2.0).abs() < 1e-9, "{stats:?}");
        assert!((stats.std[b] - (hi - lo) / 2.0).abs() < 1e-9, "{stats:?}");
    }
}

#[test]
fn unsigned_bands_scale_by_their_type_maximum() {
    let v: Vec<f64> = (0..64 * 5).map(|i| (i % 251) as f64).collect();
    for (sample, max) in
        [(TiffSample::U8, 255.0), (TiffSample::U16, 65535.0), (TiffSample::U32, u32::MAX as f64)]
    {
        let image = decode(&tiff_bytes(&[page(8, 5, sample, false, &v)]));
        let out = same_size(&image, 5, 8);
        for (i, x) in out.iter().enumerate() {
            let (b, p) = (i / 64, i % 64);
            assert!((*x as f64 - v[p * 5 + b] / max).abs() < 1e-7, "{sample:?} band {b} pixel {p}");
        }
    }
}
