//! Images other than RGB through every command: a folder of 16-bit grayscale PNGs pre-trained
//! with `--in-channels 1` (and its own --mean/--std), a folder of 16-bit RGBA TIFFs with
//! `--in-channels 4`, then reconstruct, embed and k-NN on the weights (with the run's own
//! statistics); and the errors of images or statistics that do not fit the channel count.

use std::path::Path;

use mae_data::image::{DynamicImage, ImageBuffer, ImageFormat, Luma, Rgb, Rgba};

use crate::run_mae::{assert_clean_failure, mae, stderr};

const RUN: &[&str] = &[
    "pretrain",
    "--preset",
    "mae-vit-micro-patch4-32",
    "--steps",
    "2",
    "--batch-size",
    "4",
    "--workers",
    "1",
    "--progress",
    "silent",
    "--checkpoint-every",
    "2",
];

/// Two classes of 16-bit pictures (`class` sets the pattern), written as `format`.
fn write_folder(root: &Path, make: impl Fn(u32, u32, u32) -> DynamicImage, format: ImageFormat, ext: &str) {
    for class in 0..2u32 {
        let dir = root.join(format!("c{class}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..4u32 {
            make(class, i, 32).save_with_format(dir.join(format!("{i}.{ext}")), format).unwrap();
        }
    }
}

fn gray16(class: u32, i: u32, side: u32) -> DynamicImage {
    DynamicImage::ImageLuma16(ImageBuffer::from_fn(side, side, |x, y| {
        let v = if class == 0 { x * 2000 + i * 7 } else { y * 2000 + i * 7 };
        Luma([v as u16])
    }))
}

fn rgba16(class: u32, i: u32, side: u32) -> DynamicImage {
    DynamicImage::ImageRgba16(ImageBuffer::from_fn(side, side, |x, y| {
        let v = (if class == 0 { x } else { y } * 2000 + i * 7) as u16;
        Rgba([v, 65535 - v, 30000, if (x + y) % 2 == 0 { 65535 } else { 1000 }])
    }))
}

fn run_ok(args: &[&str], dir: &Path) -> String {
    let o = mae(args, dir);
    assert!(o.status.success(), "mae {}: {}", args.join(" "), stderr(&o));
    stderr(&o)
}

#[test]
fn gray_and_rgba_16_bit_folders_pretrain_and_serve_every_command() {
    let dir = tempfile::tempdir().unwrap();
    write_folder(&dir.path().join("gray"), gray16, ImageFormat::Png, "png");
    write_folder(&dir.path().join("rgba"), rgba16, ImageFormat::Tiff, "tif");
    let gray =
        [RUN, &["--data", "folder:gray", "--in-channels", "1", "--mean", "0.4", "--std", "0.3"]].concat();
    run_ok(&[&gray[..], &["--out", "g"]].concat(), dir.path());
    let config = std::fs::read_to_string(dir.path().join("g/config.toml")).unwrap();
    assert!(config.contains("in_channels = 1") && config.contains("mean = [0.4]"), "{config}");
    // `mae stats` prints the flags of the folder's own statistics, which pretrain takes as they are.
    let o = mae(&["stats", "--data", "folder:gray", "--in-channels", "1", "--img-size", "32"], dir.path());
    let flags = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(o.status.success() && flags.starts_with("--in-channels 1 --mean 0.4"), "{flags} {}", stderr(&o));
    let flags: Vec<&str> = flags.split_whitespace().collect();
    run_ok(&[RUN, &["--data", "folder:gray", "--out", "s"], &flags].concat(), dir.path());
    let rgba = [RUN, &["--data", "folder:rgba", "--in-channels", "4", "--out", "r"]].concat();
    run_ok(&rgba, dir.path());
    for (run, data, image) in [("g", "folder:gray", "gray/c0/0.png"), ("r", "folder:rgba", "rgba/c1/2.tif")] {
        run_ok(&["reconstruct", "--weights", run, "--image", image, "--out", "rec.png"], dir.path());
        assert!(dir.path().join("rec.png").is_file());
        let embed =
            run_ok(&["embed", "--weights", run, "--data", data, "--out", "e.safetensors"], dir.path());
        // The gray run's own statistics are read back from its config.toml; the RGBA run used
        // the defaults, and says nothing.
        assert_eq!(embed.contains("the run's --mean [0.4] --std [0.3]"), run == "g", "{embed}");
        let o = mae(
            &["knn", "--weights", run, "--train", data, "--test", data, "--k", "3", "--json"],
            dir.path(),
        );
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success() && out.contains("top1"), "{out} {}", stderr(&o));
    }
}

/// Domain pre-training from RGB weights: `--init` takes an RGB run's weights into a gray model.
#[test]
fn a_gray_run_starts_from_rgb_weights() {
    let dir = tempfile::tempdir().unwrap();
    write_folder(&dir.path().join("gray"), gray16, ImageFormat::Png, "png");
    run_ok(&[RUN, &["--data", "synthetic:16", "--out", "rgb"]].concat(), dir.path());
    let init = ["pretrain", "--init", "rgb", "--data", "folder:gray", "--in-channels", "1", "--steps", "2"];
    let log = run_ok(
        &[&init[..], &["--batch-size", "4", "--progress", "silent", "--out", "g"]].concat(),
        dir.path(),
    );
    assert!(log.contains("adapted to 1") && log.contains("decoder_pred"), "{log}");
    let config = std::fs::read_to_string(dir.path().join("g/config.toml")).unwrap();
    assert!(config.contains("init = \"rgb\"") && config.contains("in_channels = 1"), "{config}");
    // The finished run resumes like any other (its checkpoints hold the adapted model).
    run_ok(&["pretrain", "--resume", "g", "--progress", "silent"], dir.path());
    let o = mae(&[&init[..], &["--preset", "mae-vit-micro-patch4-32"]].concat(), dir.path());
    assert!(!o.status.success() && stderr(&o).contains("--preset"), "{}", stderr(&o));
}

#[test]
fn images_and_statistics_that_do_not_fit_the_channels_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let rgb = |_: u32, _: u32, side: u32| {
        DynamicImage::ImageRgb8(ImageBuffer::from_pixel(side, side, Rgb([1, 2, 3])))
    };
    write_folder(&dir.path().join("rgb"), rgb, ImageFormat::Png, "png");
    let o = mae(&[RUN, &["--data", "folder:rgb", "--in-channels", "1", "--out", "x"]].concat(), dir.path());
    assert_clean_failure(&o, &["rgb/c", ".png: the image is Rgb8", "--in-channels 1"]);
    let o = mae(&[RUN, &["--in-channels", "1", "--mean", "0.5,0.5", "--out", "y"]].concat(), dir.path());
    assert_clean_failure(&o, &["--mean has 2 value(s)", "--in-channels 1"]);
    let o = mae(&[RUN, &["--in-channels", "257", "--out", "z"]].concat(), dir.path());
    assert_clean_failure(&o, &["--in-channels 257: images have 1 to 256 channels here"]);
    // Five channels of RGB are refused at the first image, naming it.
    let o = mae(&[RUN, &["--data", "folder:rgb", "--in-channels", "5", "--out", "w"]].concat(), dir.path());
    assert_clean_failure(&o, &["rgb/c", ".png: the image is Rgb8", "--in-channels 5"]);
}

/// Six samples of 16 bits a pixel, MinIsBlack: a multi-band TIFF as GDAL or tifffile write one
/// (written here by the tiff crate's encoder, not ours).
struct SixBands;

impl tiff::encoder::colortype::ColorType for SixBands {
    type Inner = u16;
    const TIFF_VALUE: tiff::tags::PhotometricInterpretation =
        tiff::tags::PhotometricInterpretation::BlackIsZero;
    const BITS_PER_SAMPLE: &'static [u16] = &[16; 6];
    const SAMPLE_FORMAT: &'static [tiff::tags::SampleFormat] = &[tiff::tags::SampleFormat::Uint; 6];
    fn horizontal_predict(_: &[u16], _: &mut Vec<u16>) {}
}

/// Two classes of 6-band 16-bit tiles: class 0 varies along x in bands 0-2, class 1 along y in
/// bands 3-5.
fn write_band_folder(root: &Path) {
    for class in 0..2u32 {
        let dir = root.join(format!("c{class}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..4u32 {
            let mut data = Vec::with_capacity(32 * 32 * 6);
            for y in 0..32u32 {
                for x in 0..32u32 {
                    for b in 0..6u32 {
                        let along = if (b < 3) == (class == 0) { x + y * (b % 3) } else { 7 };
                        data.push((along * 2000 + i * 11 + b * 300) as u16);
                    }
                }
            }
            let file = std::fs::File::create(dir.join(format!("{i}.tif"))).unwrap();
            tiff::encoder::TiffEncoder::new(file).unwrap().write_image::<SixBands>(32, 32, &data).unwrap();
        }
    }
}

#[test]
fn a_six_band_16_bit_tiff_folder_pretrains_and_serves_every_command() {
    let dir = tempfile::tempdir().unwrap();
    write_band_folder(&dir.path().join("bands"));
    let o = mae(&["stats", "--data", "folder:bands", "--in-channels", "6", "--img-size", "32"], dir.path());
    let flags = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(o.status.success() && flags.starts_with("--in-channels 6 --mean "), "{flags} {}", stderr(&o));
    let flags: Vec<&str> = flags.split_whitespace().collect();
    run_ok(
        &[RUN, &["--data", "folder:bands", "--bands", "4,3,2", "--out", "b"], &flags].concat(),
        dir.path(),
    );
    let config = std::fs::read_to_string(dir.path().join("b/config.toml")).unwrap();
    assert!(config.contains("in_channels = 6") && config.contains("bands = \"4,3,2\""), "{config}");
    assert!(dir.path().join("b/reconstructions").read_dir().map(|d| d.count() > 0).unwrap_or(false));
    for bands in ["gray", "6,1,2", "auto"] {
        let args = [
            "reconstruct",
            "--weights",
            "b",
            "--image",
            "bands/c1/3.tif",
            "--bands",
            bands,
            "--out",
            "rec.png",
        ];
        run_ok(&args, dir.path());
        let picture = mae_data::image::open(dir.path().join("rec.png")).unwrap();
        // Each band in grey: six rows of panels for the one image.
        let rows = if bands == "gray" { 6 } else { 1 };
        assert_eq!(picture.height(), rows * 128 + (rows + 1) * 4, "--bands {bands}");
    }
    run_ok(&["embed", "--weights", "b", "--data", "folder:bands", "--out", "e.safetensors"], dir.path());
    let o = mae(
        &["knn", "--weights", "b", "--train", "folder:bands", "--test", "folder:bands", "--k", "3", "--json"],
        dir.path(),
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.contains("top1"), "{out} {}", stderr(&o));
    // A band past the sixth, and six bands for a three-channel run, are clear errors.
    let o =
        mae(&["reconstruct", "--weights", "b", "--image", "bands/c0/0.tif", "--bands", "7,1,2"], dir.path());
    assert_clean_failure(&o, &["--bands", "band 7", "6"]);
    let o = mae(&[RUN, &["--data", "folder:bands", "--out", "rgb"]].concat(), dir.path());
    assert_clean_failure(&o, &["bands/c", ".tif: the image has 6 bands", "--in-channels 3"]);
}
