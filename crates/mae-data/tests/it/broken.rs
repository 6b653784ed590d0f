//! Bad input never panics: broken files are skipped (or errors with `strict`), structural
//! problems are errors naming the path.

use std::path::Path;
use std::sync::Arc;

use image::ImageFormat;
use mae_data::{
    decode_image, open, Cifar10, DataError, DataSpec, Dataset, DecodeLimits, EvalTransform, ImageFolder,
    Loader, LoaderConfig, Mnist, OpenOptions, Sample, Split,
};

use crate::common::{encode, idx, mnist_idx_bytes, png_claiming, test_card, write};

const BROKEN: [&str; 5] = ["huge.png", "text.png", "trunc.jpg", "trunc.png", "zero.png"];

/// A folder with one good image and the five kinds of broken file.
fn corpus(dir: &Path) {
    let card = test_card(40, 30);
    let png = encode(&card, ImageFormat::Png);
    let jpg = encode(&card, ImageFormat::Jpeg);
    write(&dir.join("good.png"), &png);
    write(&dir.join("zero.png"), &[]);
    write(&dir.join("trunc.png"), &png[..png.len() / 2]);
    write(&dir.join("trunc.jpg"), &jpg[..jpg.len() * 2 / 3]);
    write(&dir.join("text.png"), b"this is not an image\n");
    write(&dir.join("huge.png"), &png_claiming(50_000, 50_000));
    write(&dir.join("notes.txt"), b"ignored: not an image extension");
}

#[test]
fn each_broken_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path());
    let limits = DecodeLimits::default();
    for name in BROKEN {
        let bytes = std::fs::read(dir.path().join(name)).unwrap();
        let err = decode_image(&bytes, name, &limits).unwrap_err();
        assert!(err.is_sample_error(), "{name}: {err}");
        assert!(err.to_string().contains(name), "{name}: {err}");
        if name == "huge.png" {
            assert!(matches!(err, DataError::TooLarge { width: 50_000, height: 50_000, .. }), "{err}");
        }
    }
    // The cap is configurable.
    let good = std::fs::read(dir.path().join("good.png")).unwrap();
    assert!(decode_image(&good, "good.png", &limits).is_ok());
    let tight = DecodeLimits { max_pixels: 100, ..limits };
    assert!(matches!(decode_image(&good, "good.png", &tight), Err(DataError::TooLarge { .. })));
}

#[test]
fn loader_skips_broken_files_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path());
    let ds = Arc::new(ImageFolder::open(dir.path(), DecodeLimits::default()).unwrap());
    assert_eq!(ds.len(), 6, "notes.txt is not a sample");
    let config = LoaderConfig { workers: 2, ..LoaderConfig::eval(4) };
    let loader = Loader::new(ds.clone(), Arc::new(EvalTransform::new(16)), config.clone()).unwrap();
    for epoch in 0..2 {
        let mut it = loader.iter_epoch(epoch).unwrap();
        let batches: Vec<_> = (&mut it).map(|b| b.unwrap()).collect();
        assert_eq!(batches.len(), 2);
        // good.png sorts first; each batch is smaller by the samples it skipped.
        assert_eq!(batches[0].len(), 1);
        assert_eq!(batches[0].images.dims(), &[1, 3, 16, 16]);
        assert_eq!(batches[1].len(), 0);
        assert_eq!(batches[1].images.dims(), &[0, 3, 16, 16]);
        assert_eq!(it.stats().skipped, 5);
        assert_eq!(it.stats().skipped_indices, vec![1, 2, 3, 4, 5]);
        assert_eq!(it.stats().samples, 1);
    }
    // strict: the first broken sample is an error that names its file, and ends the epoch.
    let strict =
        Loader::new(ds, Arc::new(EvalTransform::new(16)), LoaderConfig { strict: true, ..config }).unwrap();
    let mut it = strict.iter_epoch(0).unwrap();
    let err = it.next().unwrap().unwrap_err();
    assert!(err.to_string().contains("huge.png"), "{err}");
    assert!(it.next().is_none());
}

#[test]
fn empty_and_missing_locations_are_errors_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = ImageFolder::open(&empty, DecodeLimits::default()).unwrap_err();
    assert!(matches!(err, DataError::Empty { .. }) && err.to_string().contains("empty"), "{err}");
    // Only non-images, and empty class folders: still empty.
    write(&empty.join("a/readme.txt"), b"x");
    std::fs::create_dir(empty.join("b")).unwrap();
    assert!(matches!(ImageFolder::open(&empty, DecodeLimits::default()), Err(DataError::Empty { .. })));

    let missing = dir.path().join("nope");
    for spec in [
        DataSpec::Folder { path: missing.clone() },
        DataSpec::Mnist { path: missing.clone(), split: Split::Train },
        DataSpec::Cifar10 { path: missing.clone(), split: Split::Test },
    ] {
        let err = open(&spec, &OpenOptions::default()).err().unwrap();
        assert!(matches!(err, DataError::NotFound { .. }), "{spec}: {err}");
        assert!(err.to_string().contains("nope"), "{err}");
    }
    // A directory without the expected files names what it expected.
    let err = Mnist::open(&empty, Split::Train).unwrap_err();
    assert!(err.to_string().contains("train-images-idx3-ubyte"), "{err}");
    let err = Cifar10::open(&empty, Split::Train).unwrap_err();
    assert!(err.to_string().contains("data_batch_1.bin"), "{err}");
}

fn mnist_dir(images: &[u8], labels: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("train-images-idx3-ubyte"), images);
    write(&dir.path().join("train-labels-idx1-ubyte"), labels);
    dir
}

#[test]
fn idx_validation() {
    let good_images = idx([0, 0, 8, 3], &[2, 2, 2], &[1, 2, 3, 4, 5, 6, 7, 8]);
    let good_labels = idx([0, 0, 8, 1], &[2], &[3, 9]);
    let ds = Mnist::open(mnist_dir(&good_images, &good_labels).path(), Split::Train).unwrap();
    assert_eq!((ds.len(), ds.get(1).unwrap().label), (2, Some(9)));

    let cases: [(&str, Vec<u8>, Vec<u8>, &str); 7] = [
        ("bad magic", idx([0, 0, 8, 1], &[2, 2, 2], &[0; 8]), good_labels.clone(), "magic"),
        ("short body", idx([0, 0, 8, 3], &[2, 2, 2], &[0; 7]), good_labels.clone(), "has 7"),
        ("trailing bytes", idx([0, 0, 8, 3], &[2, 2, 2], &[0; 9]), good_labels.clone(), "has more"),
        ("short header", vec![0, 0, 8, 3, 0], good_labels.clone(), "dimension"),
        ("zero-byte file", vec![], good_labels.clone(), "magic"),
        ("label count", good_images.clone(), idx([0, 0, 8, 1], &[3], &[1, 2, 3]), "3 labels for 2 images"),
        ("label range", good_images.clone(), idx([0, 0, 8, 1], &[2], &[1, 10]), "label 10"),
    ];
    for (what, images, labels, needle) in cases {
        let dir = mnist_dir(&images, &labels);
        let err = Mnist::open(dir.path(), Split::Train).unwrap_err();
        assert!(matches!(err, DataError::Format { .. }), "{what}: {err}");
        assert!(err.to_string().contains(needle), "{what}: {err}");
        assert!(err.to_string().contains("-ubyte"), "{what} names the file: {err}");
    }
    // A header that claims 4 billion images does not allocate them.
    let liar = idx([0, 0, 8, 3], &[u32::MAX, 28, 28], &[0; 100]);
    assert!(Mnist::open(mnist_dir(&liar, &good_labels).path(), Split::Train).is_err());
    // A gzip file cut short.
    let dir = tempfile::tempdir().unwrap();
    let labels = mnist_idx_bytes("t10k-labels-idx1-ubyte");
    write(&dir.path().join("t10k-images-idx3-ubyte.gz"), &[0x1f, 0x8b, 8, 0, 0, 0]);
    write(&dir.path().join("t10k-labels-idx1-ubyte"), &labels);
    assert!(matches!(Mnist::open(dir.path(), Split::Test), Err(DataError::Format { .. })));
}

#[test]
fn cifar_validation_and_layout() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("cifar-10-batches-bin");
    let record = |label: u8, r: u8, g: u8, b: u8| {
        let mut v = vec![label];
        v.extend([[r; 1024], [g; 1024], [b; 1024]].concat());
        v
    };
    for i in 1..=5 {
        write(
            &nested.join(format!("data_batch_{i}.bin")),
            &[record(i, 10, 20, 30), record(9, 1, 2, 3)].concat(),
        );
    }
    write(&nested.join("test_batch.bin"), &record(0, 0, 0, 0)[..3000]);
    let train = Cifar10::open(dir.path(), Split::Train).unwrap();
    assert_eq!(train.len(), 10);
    let s = train.get(2).unwrap();
    assert_eq!(s.label, Some(2));
    assert_eq!(s.image.as_standard().unwrap().to_rgb8().get_pixel(5, 7).0, [10, 20, 30]);
    assert_eq!(train.class_names()[9], "truck");
    let err = Cifar10::open(dir.path(), Split::Test).unwrap_err();
    assert!(err.to_string().contains("test_batch.bin") && err.to_string().contains("3073"), "{err}");
    write(&nested.join("test_batch.bin"), &record(11, 0, 0, 0));
    let err = Cifar10::open(dir.path(), Split::Test).unwrap_err();
    assert!(err.to_string().contains("label 11"), "{err}");
}

/// A dataset whose sample 3 panics inside `get`, as a buggy decoder might.
struct Panicky;

impl Dataset for Panicky {
    fn len(&self) -> usize {
        6
    }
    fn get(&self, index: usize) -> mae_data::Result<Sample> {
        assert_ne!(index, 3, "decoder bug");
        Ok(Sample { image: test_card(8, 8).into(), label: None })
    }
    fn class_names(&self) -> &[String] {
        &[]
    }
    fn describe(&self) -> String {
        "panicky".into()
    }
}

#[test]
fn a_panicking_sample_is_skipped_not_fatal() {
    let config = LoaderConfig { workers: 2, ..LoaderConfig::eval(3) };
    let loader = Loader::new(Arc::new(Panicky), Arc::new(EvalTransform::new(8)), config).unwrap();
    let mut it = loader.iter_epoch(0).unwrap();
    let sizes: Vec<usize> = (&mut it).map(|b| b.unwrap().len()).collect();
    assert_eq!(sizes, vec![3, 2]);
    assert_eq!(it.stats().skipped_indices, vec![3]);
}
