//! Every supported format decodes, in an ImageFolder layout with nested folders.

use std::sync::Arc;

use image::codecs::gif::GifEncoder;
use image::{DynamicImage, Frame, ImageFormat, Rgba, RgbaImage};
use mae_data::{Dataset, DecodeLimits, EvalTransform, ImageFolder, Loader, LoaderConfig, Transform};

use crate::common::{encode, test_card, write};

fn two_frame_gif() -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut out);
        let frames = [Rgba([255, 0, 0, 255]), Rgba([0, 0, 255, 255])]
            .map(|c| Frame::new(RgbaImage::from_pixel(6, 6, c)));
        encoder.encode_frames(frames).unwrap();
    }
    out
}

#[test]
fn all_formats_in_a_labeled_tree() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let card = test_card(24, 18);
    for (name, format) in [
        ("a/card.png", ImageFormat::Png),
        ("a/card.JPG", ImageFormat::Jpeg),
        ("a/nested/deeper/card.webp", ImageFormat::WebP),
        ("b/card.bmp", ImageFormat::Bmp),
        ("b/card.tiff", ImageFormat::Tiff),
    ] {
        write(&root.join(name), &encode(&card, format));
    }
    write(
        &root.join("b/gray16.png"),
        &encode(&DynamicImage::ImageLuma16(card.to_luma16()), ImageFormat::Png),
    );
    write(&root.join("b/rgba.png"), &encode(&DynamicImage::ImageRgba8(card.to_rgba8()), ImageFormat::Png));
    write(&root.join("c/anim.gif"), &two_frame_gif());
    write(&root.join("c/.hidden.png"), b"ignored");
    write(&root.join("loose.png"), &encode(&card, ImageFormat::Png));

    let ds = ImageFolder::open(root, DecodeLimits::default()).unwrap();
    assert_eq!(ds.class_names(), ["a", "b", "c"]);
    assert_eq!(ds.len(), 8, "loose.png (root) and .hidden.png are not samples");
    let labels: Vec<u32> = (0..ds.len()).map(|i| ds.get(i).unwrap().label.unwrap()).collect();
    assert_eq!(labels, vec![0, 0, 0, 1, 1, 1, 1, 2]);
    let gif = ds.get(7).unwrap().image.as_standard().unwrap().to_rgb8();
    assert_eq!(gif.get_pixel(3, 3).0, [255, 0, 0], "first frame of the GIF");
    for i in 0..7 {
        let image = ds.get(i).unwrap().image;
        assert_eq!((image.width(), image.height()), (24, 18), "{:?}", ds.path(i));
    }
    let t = EvalTransform::new(16);
    for i in 0..ds.len() {
        let x = t.apply(&ds.get(i).unwrap().image, &mut mae_data::sample_rng(0, 0, 0, 0)).unwrap();
        assert_eq!(x.dims(), &[3, 16, 16]);
    }
    let loader =
        Loader::new(Arc::new(ds), Arc::new(t), LoaderConfig { workers: 2, ..LoaderConfig::eval(8) }).unwrap();
    let batch = loader.iter_epoch(0).unwrap().next().unwrap().unwrap();
    assert_eq!((batch.len(), batch.labels.unwrap()), (8, labels));
}
