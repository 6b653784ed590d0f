//! Dataset files and specs: MNIST IDX, CIFAR-10 binary batches, encoded images through the
//! transforms, and the textual data specs.

use std::path::Path;

use mae_data::image::{imageops::FilterType, DynamicImage, ImageFormat};
use mae_data::{
    decode_image, Cifar10, DataSpec, Dataset, DecodeLimits, EvalTransform, MaeTrainTransform, Mnist,
    Normalize, OpenOptions, Split, Transform,
};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{put, remove, Target};
use crate::seeds::{self, Seed};

/// MNIST: the input holds both files (see [`split_idx`]). Raw bodies are read up to their
/// declared size (at most the file, plus one byte), the dataset keeps them, and a sample copies
/// one image; gzip bodies expand (MNIST's about 5:1, mutated streams up to ~50:1 in 2-minute
/// runs; deflate's limit is 1032:1, which a reader of real data must allow). 64x plus 1 MiB.
pub const IDX: Target = Target {
    name: "idx",
    about: "Mnist::open on t10k-images/-labels IDX files (raw or .gz), then samples",
    seeds: idx_seeds,
    dict: &[
        b"\x00\x00\x08\x03",
        b"\x00\x00\x08\x01",
        b"\x1f\x8b\x08\x00",
        b"\x00\x00\x00\x1c",
        b"\xff\xff\xff\xff",
    ],
    alloc_base: 1 << 20,
    alloc_factor: 64,
    run: run_idx,
};

/// CIFAR-10: the file is read (1x), its records copied into the dataset (1x), samples are
/// 3 KiB each. 4x plus 1 MiB.
pub const CIFAR: Target = Target {
    name: "cifar",
    about: "Cifar10::open on a test_batch.bin, then samples",
    seeds: cifar_seeds,
    dict: &[b"\x09", b"\x0a", b"\xff"],
    alloc_base: 1 << 20,
    alloc_factor: 4,
    run: run_cifar,
};

/// Decode limits of the image target: 1 Mpx, 32 MiB per decoder allocation.
const LIMITS: DecodeLimits = DecodeLimits { max_pixels: 1 << 20, max_alloc: 32 << 20 };

/// Images: a small file may legitimately decode to many pixels (PNG's deflate, a JPEG of one
/// colour), so the limit rests on the pixel cap: at most 1 Mpx, i.e. 8 MiB as RGBA16, 12 MiB as
/// the f32 plane the transforms make, a crop of it, and the decoders' own buffers; 64 MiB in
/// all, plus 16x the input for the decoders' copies of the file.
pub const IMAGE: Target = Target {
    name: "image",
    about: "decode_image (1 Mpx cap) then MaeTrainTransform(32), EvalTransform(32), and EvalTransform(16) for 1, 2, 4 and 5 channels",
    seeds: image_seeds,
    dict: &[
        b"IHDR",
        b"IDAT",
        b"IEND",
        b"PLTE",
        b"tRNS",
        b"\xff\xd8",
        b"\xff\xd9",
        b"\xff\xc0",
        b"\xff\xda",
        b"BM",
        b"GIF89a",
        b"II*\x00",
        b"RIFF",
        b"WEBPVP8L",
    ],
    alloc_base: 64 << 20,
    alloc_factor: 16,
    run: run_image,
};

/// Specs: short strings; the parser copies them a few times. 16x plus 64 KiB.
pub const DATA_SPEC: Target = Target {
    name: "data-spec",
    about: "DataSpec::parse, Display round trip, open() of synthetic specs",
    seeds: spec_seeds,
    dict: &[
        b"mnist:",
        b"cifar10:",
        b"folder:",
        b"hf:",
        b"synthetic",
        b"@train",
        b"@test",
        b"@",
        b":",
        b"/",
        b"18446744073709551615",
        b"0",
        b" ",
        b"\xc2\x85",
    ],
    alloc_base: 64 << 10,
    alloc_factor: 16,
    run: run_spec,
};

/// `flags | images length (u32 LE) | images file | labels file`; flags bit 0 names the images
/// file `.gz`, bit 1 the labels file. A length past the end takes everything.
fn split_idx(input: &[u8]) -> (u8, &[u8], &[u8]) {
    let flags = input.first().copied().unwrap_or(0);
    let rest = input.get(5..).unwrap_or(&[]);
    let len = input.get(1..5).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let (images, labels) = rest.split_at(len.min(rest.len()));
    (flags, images, labels)
}

fn join_idx(flags: u8, images: &[u8], labels: &[u8]) -> Vec<u8> {
    let mut out = vec![flags];
    out.extend_from_slice(&(images.len() as u32).to_le_bytes());
    out.extend_from_slice(images);
    out.extend_from_slice(labels);
    out
}

fn idx_seeds() -> Vec<Seed> {
    let read = |p: &str| seeds::file(p).map(|s| s.bytes).unwrap_or_default();
    let (images_gz, labels_gz) =
        (read("data/mnist/t10k-images-idx3-ubyte.gz"), read("data/mnist/t10k-labels-idx1-ubyte.gz"));
    let images = seeds::gunzip("data/mnist/t10k-images-idx3-ubyte.gz").unwrap_or_default();
    let labels = seeds::gunzip("data/mnist/t10k-labels-idx1-ubyte.gz").unwrap_or_default();
    let small = |n: usize| {
        let body = images.get(16..16 + n * 784).unwrap_or(&[]);
        let lab = labels.get(8..8 + n).unwrap_or(&[]);
        (seeds::idx(&[n as u32, 28, 28], body), seeds::idx(&[n as u32], lab))
    };
    let (img16, lab16) = small(16);
    let (img1, lab1) = small(1);
    vec![
        Seed::new("data/mnist/t10k-*.gz", join_idx(3, &images_gz, &labels_gz)),
        Seed::new("t10k, first 16 digits, decompressed", join_idx(0, &img16, &lab16)),
        Seed::new("t10k, first digit, decompressed", join_idx(0, &img1, &lab1)),
        Seed::new("16 raw digits + data/mnist/t10k-labels.gz", join_idx(2, &img16, &labels_gz)),
        Seed::new("data/mnist/train-labels.gz as both", {
            let train = read("data/mnist/train-labels-idx1-ubyte.gz");
            join_idx(3, &train, &train)
        }),
    ]
}

fn run_idx(dir: &Path, input: &[u8]) -> Result<(), String> {
    let (flags, images, labels) = split_idx(input);
    for name in [
        "t10k-images-idx3-ubyte",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte",
        "t10k-labels-idx1-ubyte.gz",
    ] {
        remove(dir, name);
    }
    let gz = |bit: u8| if flags & bit != 0 { ".gz" } else { "" };
    put(dir, &format!("t10k-images-idx3-ubyte{}", gz(1)), images)?;
    put(dir, &format!("t10k-labels-idx1-ubyte{}", gz(2)), labels)?;
    if let Ok(mnist) = Mnist::open(dir, Split::Test) {
        let _ = mnist.image_size();
        read_samples(&mnist);
    }
    Ok(())
}

/// Reads the first and last few samples, as a loader would.
pub(super) fn read_samples(dataset: &dyn Dataset) {
    let n = dataset.len();
    for i in (0..n.min(4)).chain(n.saturating_sub(2)..n) {
        let _ = dataset.get(i);
    }
    let _ = dataset.get(n);
    let _ = (dataset.describe(), dataset.class_names(), dataset.is_labeled());
}

/// CIFAR-10 records (label, then the red, green and blue 32x32 planes) from the photos.
fn cifar_seeds() -> Vec<Seed> {
    let mut records = Vec::new();
    for (label, path) in
        ["data/photos/chelsea.png", "data/photos/coffee.png", "data/photos/rocket.jpg"].iter().enumerate()
    {
        let Some(photo) = seeds::photo(path) else { continue };
        let rgb = photo.resize_exact(32, 32, FilterType::Triangle).to_rgb8();
        records.push(label as u8 * 3);
        for channel in 0..3 {
            records.extend(rgb.pixels().map(|p| p.0[channel]));
        }
    }
    let one = records.get(..3073).unwrap_or(&[]).to_vec();
    vec![Seed::new("3 records from data/photos", records), Seed::new("1 record from data/photos", one)]
}

fn run_cifar(dir: &Path, input: &[u8]) -> Result<(), String> {
    put(dir, "test_batch.bin", input)?;
    if let Ok(cifar) = Cifar10::open(dir, Split::Test) {
        read_samples(&cifar);
    }
    Ok(())
}

fn image_seeds() -> Vec<Seed> {
    let mut seeds = seeds::files(&[
        "data/mnist-png/train/0/00021.png",
        "data/mnist-png/train/7/00017.png",
        "data/mnist-png/test/3/00018.png",
        "data/photos/rocket.jpg",
    ]);
    for path in ["data/photos/chelsea.png", "data/photos/coffee.png"] {
        let Some(photo) = seeds::photo(path) else { continue };
        let small = photo.resize(48, 48, FilterType::Triangle);
        let variants = [
            (ImageFormat::Png, small.clone()),
            (ImageFormat::Jpeg, small.clone()),
            (ImageFormat::Bmp, small.clone()),
            (ImageFormat::Gif, small.clone()),
            (ImageFormat::Tiff, small.clone()),
            (ImageFormat::WebP, DynamicImage::ImageRgba8(small.to_rgba8())),
            (ImageFormat::Png, DynamicImage::ImageRgba16(small.to_rgba16())),
            (ImageFormat::Png, DynamicImage::ImageLumaA8(small.to_luma_alpha8())),
            (
                ImageFormat::Png,
                DynamicImage::ImageLuma8(small.resize_exact(256, 1, FilterType::Nearest).to_luma8()),
            ),
        ];
        for (format, image) in variants {
            if let Some(bytes) = seeds::encode(&image, format) {
                let name =
                    format!("{path}, {}x{} {:?} as {format:?}", image.width(), image.height(), image.color());
                seeds.push(Seed::new(name, bytes));
            }
        }
    }
    seeds.extend(band_tiff_seeds());
    seeds
}

/// TIFFs for mae-data's own band reader (`tiff_bands`): float and signed gray, unsigned 32-bit
/// RGB, and a stack of five 16-bit pages with a half-size overview.
fn band_tiff_seeds() -> Vec<Seed> {
    use tiff::encoder::{colortype, TiffEncoder};
    let ramp = |n: usize| (0..n).map(|i| (i * 37 % 1000) as u16).collect::<Vec<_>>();
    type Encoder<'a> = TiffEncoder<&'a mut std::io::Cursor<Vec<u8>>>;
    let write = |f: &dyn Fn(&mut Encoder<'_>) -> tiff::TiffResult<()>| {
        let mut out = std::io::Cursor::new(Vec::new());
        let mut encoder = TiffEncoder::new(&mut out).ok()?;
        f(&mut encoder).ok()?;
        Some(out.into_inner())
    };
    let floats: Vec<f32> = ramp(24 * 20).iter().map(|&v| v as f32 * 0.5 - 120.0).collect();
    let signed: Vec<i16> = ramp(24 * 20).iter().map(|&v| v as i16 - 500).collect();
    let rgb32: Vec<u32> = ramp(16 * 16 * 3).iter().map(|&v| u32::from(v) << 20).collect();
    let page = ramp(20 * 20);
    let candidates = [
        ("float gray 24x20", write(&|e| e.write_image::<colortype::Gray32Float>(24, 20, &floats))),
        ("int16 gray 24x20", write(&|e| e.write_image::<colortype::GrayI16>(24, 20, &signed))),
        ("uint32 RGB 16x16", write(&|e| e.write_image::<colortype::RGB32>(16, 16, &rgb32))),
        (
            "five 16-bit pages 20x20 and a 10x10 overview",
            write(&|e| {
                for _ in 0..5 {
                    e.write_image::<colortype::Gray16>(20, 20, &page)?;
                }
                e.write_image::<colortype::Gray16>(10, 10, &page[..100])
            }),
        ),
    ];
    candidates
        .into_iter()
        .filter_map(|(name, bytes)| Some(Seed::new(format!("TIFF {name}"), bytes?)))
        .collect()
}

fn run_image(_dir: &Path, input: &[u8]) -> Result<(), String> {
    let Ok(image) = decode_image(input, "fuzz input", &LIMITS) else { return Ok(()) };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let _ = MaeTrainTransform::new(32).apply(&image, &mut rng);
    let _ = EvalTransform::new(32).apply(&image, &mut rng);
    // The other channel counts (`--in-channels`): gray, gray + alpha, RGBA, and the band stacks'
    // 5; most images refuse some of them, which must be an error, never a panic.
    for channels in [1, 2, 4, 5] {
        let _ = EvalTransform::new(16).with_normalize(Normalize::identity(channels)).apply(&image, &mut rng);
    }
    Ok(())
}

fn spec_seeds() -> Vec<Seed> {
    let specs = [
        "mnist:data/mnist@train",
        "mnist:data/mnist@test",
        "cifar10:/data/cifar-10-batches-bin@test",
        "folder:data/mnist-png/train",
        "folder:/data/a@b@train",
        "hf:ylecun/mnist",
        "hf:uoft-cs/cifar10/plain_text@test",
        "synthetic",
        "synthetic:100@test",
        "synthetic@test",
        "  synthetic:7  ",
        "list:data/train.txt",
        "list:/data/labels.csv",
        "wds:shards/train-{000000..000099}.tar",
        "wds:/data/s-{0..3}-{00..09}.tar#shuffle=500",
        "wds:shards/*.tar",
    ];
    specs.iter().map(|s| Seed::new(*s, s.as_bytes().to_vec())).collect()
}

fn run_spec(_dir: &Path, input: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(input);
    let Ok(spec) = DataSpec::parse(&text) else { return Ok(()) };
    // `Display` writes a spec back in the textual form: it must parse to the same spec.
    let written = spec.to_string();
    match DataSpec::parse(&written) {
        Ok(again) if again == spec => {}
        other => {
            return Err(format!(
                "{text:?} parses to {spec:?}, written {written:?}, which reads back as {other:?}"
            ))
        }
    }
    if let DataSpec::Synthetic { .. } = spec {
        let options = OpenOptions { synthetic_size: 8, ..OpenOptions::default() };
        if let Ok(dataset) = mae_data::open(&spec, &options) {
            read_samples(dataset.as_ref());
        }
    }
    Ok(())
}
