//! Images held in candle tensors (`TensorImages`): the same samples as our own readers, and,
//! with the `candle-datasets` feature, candle-datasets' MNIST loader through our loader.

use candle_core::{DType, Device, Tensor};
use image::{DynamicImage, GenericImageView};
use mae_data::{Dataset, Mnist, Split, TensorImages};

use crate::common::repo_data;

/// The first `n` digits of a split of the repository's MNIST as candle-datasets holds them:
/// `[n, 784]` f32 in [0, 1] (bytes / 255) and u8 labels.
fn mnist_as_candle_holds_it(split: Split, n: usize) -> (Mnist, Tensor, Tensor) {
    let mnist = Mnist::open(repo_data().join("mnist"), split).unwrap();
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for i in 0..n {
        let s = mnist.get(i).unwrap();
        pixels.extend(
            s.image.as_standard().unwrap().to_luma8().into_raw().into_iter().map(|b| b as f32 / 255.0),
        );
        labels.push(s.label.unwrap() as u8);
    }
    let images = Tensor::from_vec(pixels, (n, 784), &Device::Cpu).unwrap();
    let labels = Tensor::from_vec(labels, n, &Device::Cpu).unwrap();
    (mnist, images, labels)
}

fn assert_same_samples(ours: &dyn Dataset, theirs: &dyn Dataset, n: usize) {
    for i in 0..n {
        let (a, b) = (ours.get(i).unwrap(), theirs.get(i).unwrap());
        assert_eq!(a.label, b.label, "label of {i}");
        assert_eq!(
            a.image.as_standard().unwrap().color(),
            b.image.as_standard().unwrap().color(),
            "pixel type of {i}"
        );
        assert_eq!(
            a.image.as_standard().unwrap().as_bytes(),
            b.image.as_standard().unwrap().as_bytes(),
            "pixels of {i}"
        );
    }
}

#[test]
fn mnist_from_tensors_is_the_same_as_from_the_idx_files() {
    let (mnist, images, labels) = mnist_as_candle_holds_it(Split::Train, 300);
    let tensors = TensorImages::new("mnist tensors", &images, Some(&labels), 10).unwrap();
    assert_eq!(tensors.len(), 300);
    assert_eq!(tensors.class_names().len(), 10);
    assert_same_samples(&mnist, &tensors, 300);
    assert!(tensors.describe().contains("300 images of 1x28x28, 10 classes"), "{}", tensors.describe());
}

#[test]
fn channels_first_tensors_become_images_of_their_channels_and_depth() {
    // [2, 3, 4, 5]: channel c of image n at (x, y) holds (n*60 + c*20 + y*5 + x) / 255.
    let values: Vec<f32> = (0..2 * 3 * 4 * 5)
        .map(|i| {
            let (n, c, y, x) = (i / 60, i / 20 % 3, i / 5 % 4, i % 5);
            (n * 60 + c * 20 + y * 5 + x) as f32 / 255.0
        })
        .collect();
    let t = Tensor::from_vec(values.clone(), (2, 3, 4, 5), &Device::Cpu).unwrap();
    let d = TensorImages::new("rgb", &t, None, 0).unwrap();
    assert!(!d.is_labeled());
    let img = d.get(1).unwrap().image.into_standard().unwrap();
    assert!(matches!(img, DynamicImage::ImageRgb8(_)));
    assert_eq!((img.width(), img.height()), (5, 4));
    assert_eq!(img.get_pixel(3, 2).0[..3], [60 + 13, 60 + 20 + 13, 60 + 40 + 13]);

    // Values between the 255ths keep 16 bits; u8 tensors are taken as they are.
    let fine = Tensor::from_vec(
        values.iter().map(|v| v * 0.5 + 1e-4).collect::<Vec<_>>(),
        (2, 3, 4, 5),
        &Device::Cpu,
    );
    let img = TensorImages::new("fine", &fine.unwrap(), None, 0)
        .unwrap()
        .get(0)
        .unwrap()
        .image
        .into_standard()
        .unwrap();
    assert!(matches!(img, DynamicImage::ImageRgb16(_)), "{:?}", img.color());
    let bytes = Tensor::from_vec((0..24u8).collect::<Vec<_>>(), (2, 1, 3, 4), &Device::Cpu).unwrap();
    let img =
        TensorImages::new("u8", &bytes, None, 0).unwrap().get(1).unwrap().image.into_standard().unwrap();
    assert_eq!(img.to_luma8().into_raw(), (12..24u8).collect::<Vec<_>>());
    // [N, H, W] is one channel.
    let gray = Tensor::zeros((3, 6, 7), DType::F32, &Device::Cpu).unwrap();
    let img =
        TensorImages::new("gray", &gray, None, 0).unwrap().get(2).unwrap().image.into_standard().unwrap();
    assert_eq!((img.width(), img.height(), img.color().channel_count()), (7, 6, 1));
}

#[test]
fn bad_tensors_are_errors_that_say_what_is_wrong() {
    let dev = Device::Cpu;
    let err = |images: Tensor, labels: Option<Tensor>, classes| {
        TensorImages::new("mine", &images, labels.as_ref(), classes).err().expect("an error").to_string()
    };
    let e = err(Tensor::full(1.5f32, (2, 1, 2, 2), &dev).unwrap(), None, 0);
    assert!(e.contains("mine") && e.contains("outside [0, 1]"), "{e}");
    let e = err(Tensor::zeros((2, 10), DType::F32, &dev).unwrap(), None, 0);
    assert!(e.contains("not square"), "{e}");
    let e = err(Tensor::zeros((2, 5, 2, 2), DType::F32, &dev).unwrap(), None, 0);
    assert!(e.contains("[N, C, H, W]"), "{e}");
    let e = err(Tensor::zeros((0, 1, 2, 2), DType::F32, &dev).unwrap(), None, 0);
    assert!(e.contains("no images"), "{e}");
    let labels = Tensor::from_vec(vec![0u8, 10], 2, &dev).unwrap();
    let e = err(Tensor::zeros((2, 4), DType::F32, &dev).unwrap(), Some(labels), 10);
    assert!(e.contains("label 10 of image 1"), "{e}");
    let labels = Tensor::from_vec(vec![0u8, 1, 2], 3, &dev).unwrap();
    let e = err(Tensor::zeros((2, 4), DType::F32, &dev).unwrap(), Some(labels), 10);
    assert!(e.contains("labels of shape [3] for 2 images"), "{e}");
    let nan = Tensor::from_vec(vec![0f32, f32::NAN, 0.0, 0.0], (1, 4), &dev).unwrap();
    assert!(err(nan, None, 0).contains("outside [0, 1]"));
}

/// candle-datasets' own MNIST reader (`vision::mnist::load_dir`, plain IDX files) and ours give
/// the same samples.
#[cfg(feature = "candle-datasets")]
#[test]
fn candle_datasets_mnist_through_our_dataset_is_our_mnist() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ] {
        std::fs::write(dir.path().join(name), crate::common::mnist_idx_bytes(name)).unwrap();
    }
    let candle = candle_datasets::vision::mnist::load_dir(dir.path()).unwrap();
    let (train, test) = (TensorImages::train(&candle).unwrap(), TensorImages::test(&candle).unwrap());
    let ours_train = Mnist::open(repo_data().join("mnist"), Split::Train).unwrap();
    let ours_test = Mnist::open(repo_data().join("mnist"), Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (ours_train.len(), ours_test.len()));
    assert_same_samples(&ours_train, &train, ours_train.len());
    assert_same_samples(&ours_test, &test, ours_test.len());
}
