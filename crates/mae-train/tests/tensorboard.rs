//! Our TensorBoard event encoder against records written by the `tensorboard` package itself
//! (`fixtures/tensorboard_events.bin`, `xtask/fixtures/tensorboard_fixture.py`; no Python here):
//! the same events must give the same bytes, framing and CRCs included.

use mae_train::tensorboard::{file_version_event, image_event, record, scalar_event};

fn fixture(name: &str) -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/").to_string() + name;
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn events_are_byte_identical_to_tensorboards_own_writer() {
    let png = fixture("tensorboard_image.png");
    // The events of tensorboard_fixture.py, in its order.
    let events = [
        file_version_event(1700000000.25),
        scalar_event(1700000001.5, 1, "train/loss", 2.5),
        scalar_event(1700000002.0, 0, "train/lr", 0.0),
        scalar_event(1700000003.25, 123456789012, "eval/knn_top1", -1.25e-3),
        scalar_event(1700000004.0, 7, "train/grad_norm", f32::INFINITY),
        image_event(1700000005.5, 10, "reconstruction", 3, 5, 3, &png),
    ];
    let ours: Vec<u8> = events.iter().flat_map(|e| record(e)).collect();
    let theirs = fixture("tensorboard_events.bin");
    // Record by record first, for a readable failure.
    let mut at = 0;
    for (i, e) in events.iter().enumerate() {
        let len = e.len() + 16;
        assert_eq!(&ours[at..at + len], &theirs[at..(at + len).min(theirs.len())], "record {i}");
        at += len;
    }
    assert_eq!(ours, theirs);
}
