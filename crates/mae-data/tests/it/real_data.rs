//! Against the repository's real files in `data/`: MNIST IDX (gzipped), the MNIST PNG folder, the
//! photos.

use std::io::Write;

use mae_data::{
    open, open_image, DataSpec, Dataset, DecodeLimits, EvalTransform, ImageFolder, MaeTrainTransform, Mnist,
    OpenOptions, Split, Transform,
};

use crate::common::{mnist_idx_bytes, repo_data, values};

#[test]
fn mnist_idx_counts_and_label_range() {
    let root = repo_data().join("mnist");
    for (split, count) in [("train", 5000), ("test", 1000)] {
        let spec: DataSpec = format!("mnist:{}@{split}", root.display()).parse().unwrap();
        let ds = open(&spec, &OpenOptions::default()).unwrap();
        assert_eq!(ds.len(), count, "{split}");
        assert_eq!(ds.class_names(), (0..10).map(|c| c.to_string()).collect::<Vec<_>>());
        let mut seen = [0usize; 10];
        for i in 0..ds.len() {
            let sample = ds.get(i).unwrap();
            let label = sample.label.unwrap() as usize;
            assert!(label < 10);
            seen[label] += 1;
            if i < 3 {
                assert_eq!((sample.image.as_standard().unwrap().width(), sample.image.height()), (28, 28));
                assert!(sample.image.as_standard().unwrap().as_luma8().is_some());
            }
        }
        assert!(seen.iter().all(|&n| n > count / 20), "every digit is present: {seen:?}");
    }
}

#[test]
fn mnist_reads_plain_and_gzip_alike() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] {
        let mut file = std::fs::File::create(dir.path().join(name)).unwrap();
        file.write_all(&mnist_idx_bytes(name)).unwrap();
    }
    let plain = Mnist::open(dir.path(), Split::Test).unwrap();
    let gz = Mnist::open(repo_data().join("mnist"), Split::Test).unwrap();
    assert_eq!(gz.len(), 1000);
    for i in [0, 517, 999] {
        let (a, b) = (gz.get(i).unwrap(), plain.get(i).unwrap());
        assert_eq!(a.label, b.label);
        assert_eq!(a.image.as_standard().unwrap().as_bytes(), b.image.as_standard().unwrap().as_bytes());
    }
}

#[test]
fn png_folder_labels_come_from_folders_and_match_idx() {
    let folder = ImageFolder::open(repo_data().join("mnist-png/train"), DecodeLimits::default()).unwrap();
    let idx = Mnist::open(repo_data().join("mnist"), Split::Train).unwrap();
    assert_eq!(folder.len(), 200);
    assert_eq!(folder.class_names(), (0..10).map(|c| c.to_string()).collect::<Vec<_>>());
    // Files are `<label>/<n>.png` with n the index in the IDX file.
    for i in (0..folder.len()).step_by(7) {
        let path = folder.path(i).unwrap();
        let n: usize = path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        let (from_png, from_idx) = (folder.get(i).unwrap(), idx.get(n).unwrap());
        let class_dir = path.parent().unwrap().file_name().unwrap().to_str().unwrap();
        assert_eq!(from_png.label, Some(class_dir.parse().unwrap()), "{}", path.display());
        assert_eq!(from_png.label, from_idx.label, "{}", path.display());
        assert_eq!(
            from_png.image.as_standard().unwrap().to_luma8().as_raw(),
            from_idx.image.as_standard().unwrap().to_luma8().as_raw()
        );
    }
    // Stable, sorted order: labels never decrease.
    let labels: Vec<u32> = (0..folder.len()).map(|i| folder.get(i).unwrap().label.unwrap()).collect();
    assert!(labels.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn each_photo_decodes_and_transforms_to_224() {
    let photos = ["chelsea.png", "coffee.png", "rocket.jpg"];
    let train = MaeTrainTransform::new(224);
    let eval = EvalTransform::new(224);
    for (i, name) in photos.iter().enumerate() {
        let image = open_image(&repo_data().join("photos").join(name), &DecodeLimits::default()).unwrap();
        assert!(image.width() >= 300 && image.height() >= 300, "{name}");
        for t in [&train as &dyn Transform, &eval] {
            let x = t.apply(&image, &mut mae_data::sample_rng(0, 0, i as u64, 0)).unwrap();
            assert_eq!(x.dims(), &[3, 224, 224], "{name}");
            let v = values(&x);
            assert!(v.iter().all(|x| x.is_finite() && (-2.2..=2.7).contains(x)), "{name}");
            assert!(v.iter().any(|&x| x < -0.5) && v.iter().any(|&x| x > 0.5), "{name} has contrast");
        }
    }
    let folder =
        open(&DataSpec::Folder { path: repo_data().join("photos") }, &OpenOptions::default()).unwrap();
    assert_eq!(folder.len(), 3);
    assert!(!folder.is_labeled(), "no sub-folders: unlabeled");
}
