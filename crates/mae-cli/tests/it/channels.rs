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
    let o = mae(&[RUN, &["--in-channels", "5", "--out", "z"]].concat(), dir.path());
    assert_clean_failure(&o, &["--in-channels 5: images have 1 to 4 channels here"]);
}
