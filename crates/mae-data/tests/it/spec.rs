//! Parsing data specs and opening them.

use std::path::PathBuf;

use mae_data::{open, DataError, DataSpec, OpenOptions, Split};

#[test]
fn every_form_parses_and_prints_back() {
    let cases = [
        ("folder:/data/imgs", DataSpec::Folder { path: "/data/imgs".into() }),
        ("cifar10:c10", DataSpec::Cifar10 { path: "c10".into(), split: Split::Train }),
        ("cifar10:c10@test", DataSpec::Cifar10 { path: "c10".into(), split: Split::Test }),
        ("mnist:m@train", DataSpec::Mnist { path: "m".into(), split: Split::Train }),
        ("mnist:/a@b", DataSpec::Mnist { path: "/a@b".into(), split: Split::Train }),
        (
            "hf:ylecun/mnist",
            DataSpec::Hf { repo: "ylecun/mnist".into(), config: None, split: "train".into() },
        ),
        (
            "hf:frgfm/imagenette/320px@validation",
            DataSpec::Hf {
                repo: "frgfm/imagenette".into(),
                config: Some("320px".into()),
                split: "validation".into(),
            },
        ),
        ("synthetic", DataSpec::Synthetic { count: 10_000, split: Split::Train }),
        ("synthetic:500", DataSpec::Synthetic { count: 500, split: Split::Train }),
        ("synthetic@test", DataSpec::Synthetic { count: 10_000, split: Split::Test }),
        ("synthetic:64@test", DataSpec::Synthetic { count: 64, split: Split::Test }),
        ("list:data/train.csv", DataSpec::List { path: "data/train.csv".into() }),
        (
            "wds:/s/train-{000000..000099}.tar",
            DataSpec::Wds { pattern: "/s/train-{000000..000099}.tar".into(), shuffle_buffer: None },
        ),
        ("dicom:/scans/ct", DataSpec::Dicom { path: "/scans/ct".into() }),
        ("dicom:one file.dcm", DataSpec::Dicom { path: "one file.dcm".into() }),
        ("wds:s/*.tar#shuffle=50", DataSpec::Wds { pattern: "s/*.tar".into(), shuffle_buffer: Some(50) }),
    ];
    for (text, expected) in cases {
        let parsed: DataSpec = text.parse().unwrap();
        assert_eq!(parsed, expected, "{text}");
        assert_eq!(DataSpec::parse(&parsed.to_string()).unwrap(), parsed, "{text} round-trips");
    }
}

#[test]
fn bad_specs_list_the_accepted_forms() {
    for text in [
        "",
        "imagenet:/x",
        "folder",
        "folder:",
        "mnist:@test",
        "synthetic:0",
        "synthetic:ten",
        "hf:mnist",
        "hf:a/b@",
        "list:",
        "wds",
        "wds:s-{9..1}.tar",
        "dicom",
        "dicom:",
        "wds:s.tar#shuffle=x",
    ] {
        let err = DataSpec::parse(text).unwrap_err();
        assert!(matches!(err, DataError::Spec { .. }), "{text}");
        let message = err.to_string();
        assert!(
            message.contains("accepted forms") && message.contains("cifar10:PATH[@train|test]"),
            "{message}"
        );
    }
}

#[test]
fn open_synthetic_uses_the_options() {
    let options = OpenOptions { synthetic_size: 20, synthetic_seed: 3, ..OpenOptions::default() };
    let ds = open(&"synthetic:17@test".parse().unwrap(), &options).unwrap();
    assert_eq!(ds.len(), 17);
    assert_eq!(ds.get(16).unwrap().image.as_standard().unwrap().width(), 20);
    assert_eq!(ds.class_names().len(), 8);
    assert!(ds.get(17).is_err());
}

#[cfg(not(feature = "hf"))]
#[test]
fn hf_without_the_feature_says_how_to_get_it() {
    let err = open(&"hf:ylecun/mnist".parse().unwrap(), &OpenOptions::default()).err().unwrap();
    assert!(err.to_string().contains("`hf` feature"), "{err}");
}

#[cfg(not(feature = "dicom"))]
#[test]
fn dicom_without_the_feature_says_how_to_get_it() {
    let spec: DataSpec = "dicom:/scans".parse().unwrap();
    let err = open(&spec, &OpenOptions::default()).err().unwrap();
    assert!(matches!(err, DataError::Config(_)), "{err}");
    assert!(err.to_string().contains("`dicom` feature"), "{err}");
}

#[test]
fn paths_keep_their_text() {
    let spec: DataSpec = "folder:dir with space/@odd".parse().unwrap();
    assert_eq!(spec, DataSpec::Folder { path: PathBuf::from("dir with space/@odd") });
}
