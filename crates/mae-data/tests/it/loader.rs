//! Determinism (workers, resume, ranks), shuffling, drop-last and configuration errors.

use std::sync::Arc;

use mae_data::{Batch, Dataset, Loader, LoaderConfig, MaeTrainTransform, Split, SyntheticShapes};

use crate::common::values;

fn dataset(count: usize) -> Arc<dyn Dataset> {
    Arc::new(SyntheticShapes::new(count, 24, 1, Split::Train).unwrap())
}

fn loader(count: usize, config: LoaderConfig) -> Loader {
    Loader::new(dataset(count), Arc::new(MaeTrainTransform::new(16)), config).unwrap()
}

fn epoch(loader: &Loader, epoch: u64, start: usize) -> Vec<Batch> {
    loader.iter_from(epoch, start).unwrap().map(|b| b.unwrap()).collect()
}

fn same(a: &[Batch], b: &[Batch]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(
            (x.epoch, x.batch_index, &x.indices, &x.labels),
            (y.epoch, y.batch_index, &y.indices, &y.labels)
        );
        let (vx, vy) = (values(&x.images), values(&y.images));
        assert!(vx.iter().zip(&vy).all(|(p, q)| p.to_bits() == q.to_bits()), "batch {}", x.batch_index);
    }
}

#[test]
fn worker_count_does_not_change_a_single_bit() {
    let base = LoaderConfig { seed: 9, ..LoaderConfig::train(8) };
    let runs: Vec<Vec<Batch>> = [0, 1, 3]
        .into_iter()
        .map(|workers| epoch(&loader(60, LoaderConfig { workers, ..base.clone() }), 2, 0))
        .collect();
    assert_eq!(runs[0].len(), 7, "60 / 8 with drop_last");
    same(&runs[0], &runs[1]);
    same(&runs[1], &runs[2]);
    let b = &runs[0][0];
    assert_eq!(b.images.dims(), &[8, 3, 16, 16]);
    let labels = b.labels.as_ref().unwrap();
    assert!(b.indices.iter().zip(labels).all(|(i, l)| *l as usize == i % 8), "synthetic label = index % 8");
}

#[test]
fn resuming_at_a_batch_gives_the_uninterrupted_batches() {
    let l = loader(50, LoaderConfig { workers: 2, seed: 4, ..LoaderConfig::train(6) });
    let full = epoch(&l, 3, 0);
    let resumed = epoch(&l, 3, 5);
    assert_eq!(resumed[0].batch_index, 5);
    same(&full[5..], &resumed);
    assert!(epoch(&l, 3, full.len()).is_empty(), "resuming at the end yields nothing");
    assert!(l.iter_from(3, full.len() + 1).is_err());
}

#[test]
fn epochs_and_seeds_change_order_and_augmentation() {
    let config = LoaderConfig { workers: 2, ..LoaderConfig::train(10) };
    let l = loader(40, config.clone());
    let (e0, e0_again, e1) = (epoch(&l, 0, 0), epoch(&l, 0, 0), epoch(&l, 1, 0));
    same(&e0, &e0_again);
    assert_ne!(e0[0].indices, e1[0].indices);
    let other_seed = epoch(&loader(40, LoaderConfig { seed: 1, ..config.clone() }), 0, 0);
    assert_ne!(e0[0].indices, other_seed[0].indices);
    // Same sample, other epoch: another crop.
    let plain = loader(40, LoaderConfig { shuffle: false, ..config });
    let (a, b) = (epoch(&plain, 0, 0), epoch(&plain, 1, 0));
    assert_eq!(a[0].indices, b[0].indices);
    assert_ne!(values(&a[0].images), values(&b[0].images));
    // Every sample exactly once per epoch.
    let mut seen: Vec<usize> = e0.iter().flat_map(|b| b.indices.clone()).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..40).collect::<Vec<_>>());
}

#[test]
fn ranks_together_see_what_one_process_with_the_global_batch_sees() {
    let one = loader(70, LoaderConfig { workers: 1, seed: 2, ..LoaderConfig::train(12) });
    let ranks: Vec<Loader> = (0..3)
        .map(|rank| {
            loader(70, LoaderConfig { workers: 1, seed: 2, rank, world_size: 3, ..LoaderConfig::train(4) })
        })
        .collect();
    let single = epoch(&one, 1, 0);
    let per_rank: Vec<Vec<Batch>> = ranks.iter().map(|l| epoch(l, 1, 0)).collect();
    assert_eq!(single.len(), 5);
    for (k, global) in single.iter().enumerate() {
        let mut indices = Vec::new();
        let mut pixels = Vec::new();
        for batches in &per_rank {
            assert_eq!(batches.len(), single.len(), "equal steps on every rank");
            indices.extend(batches[k].indices.clone());
            pixels.extend(values(&batches[k].images));
        }
        assert_eq!(indices, global.indices, "step {k}");
        assert_eq!(pixels, values(&global.images), "augmentations are keyed by sample, not by rank");
    }
}

#[test]
fn eval_order_keeps_every_sample_with_a_short_last_batch() {
    let l = loader(23, LoaderConfig { workers: 2, ..LoaderConfig::eval(10) });
    let batches = epoch(&l, 0, 0);
    let sizes: Vec<usize> = batches.iter().map(|b| b.len()).collect();
    assert_eq!(sizes, vec![10, 10, 3]);
    assert_eq!(
        batches.iter().flat_map(|b| b.indices.clone()).collect::<Vec<_>>(),
        (0..23).collect::<Vec<_>>()
    );
    assert_eq!(l.epoch_plan(0)[2], vec![20, 21, 22]);
    assert_eq!(batches[2].labels_tensor().unwrap().unwrap().to_vec1::<u32>().unwrap(), vec![4, 5, 6]);
}

#[test]
fn dropping_an_epoch_midway_stops_the_workers() {
    let l = loader(400, LoaderConfig { workers: 3, prefetch: Some(4), ..LoaderConfig::train(8) });
    let mut it = l.iter_epoch(0).unwrap();
    assert!(it.next().unwrap().is_ok());
    assert_eq!(it.next_batch_index(), 1);
    drop(it); // joins the workers; the test would hang here if they did not stop
}

#[test]
fn bad_configurations_are_errors() {
    let t = || Arc::new(MaeTrainTransform::new(16));
    let bad = [
        LoaderConfig::train(0),
        LoaderConfig { rank: 2, world_size: 2, ..LoaderConfig::train(4) },
        LoaderConfig { world_size: 0, ..LoaderConfig::train(4) },
        LoaderConfig::train(11),
        LoaderConfig { prefetch: Some(0), ..LoaderConfig::train(4) },
    ];
    for config in bad {
        let err = Loader::new(dataset(10), t(), config.clone()).err();
        assert!(err.is_some(), "{config:?}");
    }
    let bad_transform = MaeTrainTransform { scale: (0.5, 0.2), ..MaeTrainTransform::new(16) };
    assert!(Loader::new(dataset(10), Arc::new(bad_transform), LoaderConfig::train(2)).is_err());
}
