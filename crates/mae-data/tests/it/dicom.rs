//! `dicom:` (feature `dicom`) against the values pydicom reads from the same files
//! (fixtures/dicom, written by xtask/fixtures/dicom_fixtures.py).

use std::path::PathBuf;
use std::sync::Arc;

use mae_data::{
    decode_dicom_frame, open, DataError, DataSpec, Dataset, DecodeLimits, DicomDataset, EvalTransform,
    Loader, LoaderConfig, Normalize, OpenOptions,
};

use crate::common::write;

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/dicom"))
}

/// What pydicom reads from one file: its size, bands and each frame's interleaved values.
struct Expected {
    width: u32,
    height: u32,
    bands: usize,
    frames: Vec<Vec<f32>>,
}

fn expected(name: &str) -> Expected {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    let all: serde_json::Value = serde_json::from_str(&text).unwrap();
    let e = &all[name];
    let frames = e["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect())
        .collect();
    Expected {
        width: e["width"].as_u64().unwrap() as u32,
        height: e["height"].as_u64().unwrap() as u32,
        bands: e["bands"].as_u64().unwrap() as usize,
        frames,
    }
}

/// Opens one fixture file as a dataset and checks every frame against pydicom's values.
fn check_file(name: &str) -> DicomDataset {
    check_file_within(name, 1e-4)
}

/// [`check_file`] with a tolerance: JPEG decoders may round differently.
fn check_file_within(name: &str, tolerance: f32) -> DicomDataset {
    let want = expected(name);
    let ds = DicomDataset::open(fixtures().join(name), DecodeLimits::default()).unwrap();
    assert_eq!(ds.len(), want.frames.len(), "{name}: one sample per frame");
    assert!(!ds.is_labeled(), "{name}: a single file is unlabeled");
    for (frame, values) in want.frames.iter().enumerate() {
        let sample = ds.get(frame).unwrap();
        let bands = sample.image.as_bands().unwrap_or_else(|| panic!("{name}: not bands"));
        assert_eq!((bands.width, bands.height, bands.bands), (want.width, want.height, want.bands), "{name}");
        assert_eq!(bands.data.len(), values.len(), "{name}");
        let (i, diff) = bands
            .data
            .iter()
            .zip(values)
            .map(|(got, want)| (got - want).abs())
            .enumerate()
            .fold((0, 0f32), |max, (i, d)| if d > max.1 { (i, d) } else { max });
        assert!(
            diff <= tolerance,
            "{name} frame {frame} value {i}: {} != pydicom's {} (tolerance {tolerance})",
            bands.data[i],
            values[i]
        );
    }
    ds
}

#[test]
fn ct_values_are_hounsfield_units_as_pydicom_reads_them() {
    check_file("ct/ct_int16.dcm");
    let want = expected("ct/ct_int16.dcm");
    // Stored -32768, 32767, 0, 1024 with intercept -1024: signed, rescaled, not scaled to [0, 1].
    assert_eq!(want.frames[0][..4], [-33792.0, 31743.0, -1024.0, 0.0]);
}

#[test]
fn rle_lossless_is_decoded_and_rescaled() {
    check_file("ct/rle_uint16.dcm");
}

#[test]
fn monochrome1_is_inverted_within_its_rescaled_range() {
    check_file("xray/mono1_uint16.dcm");
    // 12 bits stored, slope 2: the range is [0, 8190]; stored 0 (white in MONOCHROME1) becomes
    // 8190 (bright), stored 4095 becomes 0.
    let want = expected("xray/mono1_uint16.dcm");
    assert_eq!(want.frames[0][..2], [8190.0, 0.0]);
}

#[test]
fn a_multi_frame_file_gives_one_sample_per_frame_in_order() {
    let ds = check_file("xray/multi_uint8.dcm");
    assert_eq!(ds.len(), 3);
    for frame in 0..3 {
        assert!(
            ds.origin(frame).ends_with(&format!("multi_uint8.dcm (frame {frame})")),
            "{}",
            ds.origin(frame)
        );
        assert_eq!(ds.sample_name(frame).unwrap(), format!("multi_uint8.dcm#{frame}"));
        // Frame f holds values in [80 f, 80 f + 80), kept as stored (no rescale, no [0, 1]).
        let bands = ds.get(frame).unwrap().image.as_bands().unwrap().clone();
        assert!(bands.data.iter().all(|&v| v >= 80.0 * frame as f32 && v < 80.0 * (frame + 1) as f32));
    }
    assert!(ds.get(3).is_err());
}

#[test]
fn colour_files_give_three_bands() {
    for name in ["color/rgb_uint8.dcm", "color/rgb_planar.dcm", "color/ybr_full.dcm"] {
        check_file(name);
    }
    // Both planar configurations hold the same pixels.
    assert_eq!(expected("color/rgb_uint8.dcm").frames, expected("color/rgb_planar.dcm").frames);
}

#[test]
fn jpeg_baseline_is_decoded_in_pure_rust() {
    // pydicom decodes with pillow (libjpeg-turbo), we with jpeg-decoder: their inverse DCTs and
    // colour conversions round differently, by a level in gray here and up to two in colour
    // (near saturation); on average far less.
    check_file_within("jpeg/gray.dcm", 1.0);
    let ds = check_file_within("jpeg/color.dcm", 2.0);
    let got = ds.get(0).unwrap().image.as_bands().unwrap().data.clone();
    let want = &expected("jpeg/color.dcm").frames[0];
    let mean = got.iter().zip(want).map(|(g, w)| (g - w).abs()).sum::<f32>() / got.len() as f32;
    assert!(mean < 0.5, "mean difference {mean}");
}

#[test]
fn a_truncated_file_is_a_sample_error_naming_file_and_frame() {
    let path = fixtures().join("broken/truncated.dcm");
    // The header is whole, so opening indexes it; reading its pixel data fails.
    let ds = DicomDataset::open(&path, DecodeLimits::default()).unwrap();
    assert_eq!(ds.len(), 1);
    let err = ds.get(0).unwrap_err();
    assert!(err.is_sample_error(), "{err}");
    assert!(matches!(err, DataError::Decode { .. }), "{err}");
    assert!(err.to_string().contains("truncated.dcm (frame 0)"), "{err}");
}

#[test]
fn the_fixture_tree_is_labeled_by_folder_and_the_loader_skips_the_broken_file() {
    let ds =
        open(&format!("dicom:{}", fixtures().display()).parse().unwrap(), &OpenOptions::default()).unwrap();
    assert_eq!(ds.class_names(), ["broken", "color", "ct", "jpeg", "xray"]);
    // broken: 1, color: 3, ct: 2, jpeg: 2, xray: 1 + 3 frames; expected.json is not DICOM.
    assert_eq!(ds.len(), 12, "{}", ds.describe());
    let labels: Vec<u32> = (0..ds.len()).map(|i| ds.get(i).map(|s| s.label.unwrap()).unwrap_or(99)).collect();
    assert_eq!(labels, [99, 1, 1, 1, 2, 2, 3, 3, 4, 4, 4, 4]);
    assert!(ds.describe().contains("12 frames in 10 files, 5 classes"), "{}", ds.describe());

    // Gray bands are replicated to the run's 3 channels, colour ones taken as they are; the
    // truncated file (sample 0) is skipped by name and counted.
    let config = LoaderConfig { workers: 2, ..LoaderConfig::eval(4) };
    let transform = Arc::new(EvalTransform::new(8).with_normalize(Normalize::identity(3)));
    let loader = Loader::new(ds, transform, config).unwrap();
    let mut it = loader.iter_epoch(0).unwrap();
    let batches: Vec<_> = (&mut it).map(|b| b.unwrap()).collect();
    assert_eq!(batches.iter().map(|b| b.len()).sum::<usize>(), 11);
    assert_eq!(batches[0].images.dims(), &[3, 3, 8, 8]);
    assert_eq!(it.stats().skipped_indices, vec![0]);
}

#[test]
fn spec_round_trips_and_missing_or_empty_paths_are_errors() {
    let spec: DataSpec = "dicom:/scans/ct".parse().unwrap();
    assert_eq!(spec, DataSpec::Dicom { path: "/scans/ct".into() });
    assert_eq!(spec.to_string(), "dicom:/scans/ct");
    let missing = open(&"dicom:/no/such/scans".parse().unwrap(), &OpenOptions::default()).err().unwrap();
    assert!(matches!(missing, DataError::NotFound { .. }), "{missing}");
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("notes.txt"), b"not DICOM");
    write(&dir.path().join("fake.dcm"), b"too short for a DICOM preamble");
    let empty = DicomDataset::open(dir.path(), DecodeLimits::default()).err().unwrap();
    assert!(matches!(empty, DataError::Empty { .. }), "{empty}");
    let one = DicomDataset::open(dir.path().join("notes.txt"), DecodeLimits::default()).err().unwrap();
    assert!(one.to_string().contains("DICM"), "{one}");
}

#[test]
fn the_pixel_cap_holds_before_decoding_and_bad_bytes_are_decode_errors() {
    let bytes = std::fs::read(fixtures().join("ct/ct_int16.dcm")).unwrap();
    let tight = DecodeLimits { max_pixels: 100, ..DecodeLimits::default() };
    let err = decode_dicom_frame(&bytes, 0, "ct.dcm (frame 0)", &tight).unwrap_err();
    assert!(matches!(err, DataError::TooLarge { width: 16, height: 12, limit: 100, .. }), "{err}");
    let err = decode_dicom_frame(&bytes, 1, "ct.dcm (frame 1)", &DecodeLimits::default()).unwrap_err();
    assert!(err.to_string().contains("ct.dcm (frame 1)") && err.is_sample_error(), "{err}");
    let mut garbage = bytes.clone();
    garbage[MAGIC_END..].iter_mut().enumerate().for_each(|(i, b)| *b = (i * 37 % 251) as u8);
    let err = decode_dicom_frame(&garbage, 0, "garbage.dcm (frame 0)", &DecodeLimits::default()).unwrap_err();
    assert!(err.is_sample_error() && err.to_string().contains("garbage.dcm"), "{err}");
    let err = decode_dicom_frame(b"short", 0, "short.dcm (frame 0)", &DecodeLimits::default()).unwrap_err();
    assert!(err.to_string().contains("DICM"), "{err}");
}

/// Byte after the `DICM` magic: the start of the file meta group.
const MAGIC_END: usize = 132;

#[test]
fn a_file_with_an_unreadable_header_is_indexed_and_skipped_when_read() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixtures().join("xray/multi_uint8.dcm")).unwrap();
    let mut bad = good[..MAGIC_END].to_vec();
    bad.extend_from_slice(&[0xFF; 40]);
    write(&dir.path().join("a.dcm"), &bad);
    write(&dir.path().join("b"), &good); // any extension, or none
    let ds = DicomDataset::open(dir.path(), DecodeLimits::default()).unwrap();
    assert_eq!(ds.len(), 4, "a.dcm as one sample, b's 3 frames");
    let err = ds.get(0).unwrap_err();
    assert!(err.is_sample_error() && err.to_string().contains("a.dcm (frame 0)"), "{err}");
    assert!(ds.get(3).is_ok());
    assert_eq!(ds.frame(3).map(|(p, f)| (p.file_name().unwrap().to_owned(), f)), Some(("b".into(), 2)));
}

/// `bytes` with the 4-byte length of the first element whose header starts with `header`
/// (tag and VR, explicit VR little endian, a long VR: 2 reserved bytes, then the length) set
/// to `len`.
fn with_length(bytes: &[u8], header: &[u8; 6], len: u32) -> Vec<u8> {
    let at = bytes.windows(6).position(|w| w == header).unwrap();
    let mut out = bytes.to_vec();
    out[at + 8..at + 12].copy_from_slice(&len.to_le_bytes());
    out
}

#[test]
fn a_length_past_the_end_of_the_file_is_refused_before_the_parser_allocates_it() {
    // The DICOM parser reserves and zero-fills a declared length before reading: 4 GiB here.
    let ct = std::fs::read(fixtures().join("ct/ct_int16.dcm")).unwrap();
    let pixel_data = with_length(&ct, b"\xE0\x7F\x10\x00OW", 0xFFFF_FFF0);
    let err = decode_dicom_frame(&pixel_data, 0, "big.dcm (frame 0)", &DecodeLimits::default()).unwrap_err();
    assert!(err.is_sample_error(), "{err}");
    assert!(err.to_string().contains("(7FE0,0010)") && err.to_string().contains("past the end"), "{err}");
    // In the meta group (FileMetaInformationVersion, OB): refused at open too, where only the
    // header is read; the file is then one sample that fails when read.
    let meta = with_length(&ct, b"\x02\x00\x01\x00OB", 0xFFFF_FF00);
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("meta.dcm"), &meta);
    let ds = DicomDataset::open(dir.path(), DecodeLimits::default()).unwrap();
    assert_eq!(ds.len(), 1);
    let err = ds.get(0).unwrap_err();
    assert!(
        err.to_string().contains("(0002,0001)") && err.to_string().contains("meta.dcm (frame 0)"),
        "{err}"
    );
}
