//! Weighted k-nearest-neighbour classification on L2-normalised features, as lightly's
//! benchmarks (and InstDisc) do it: the k most cosine-similar training features vote for their
//! class with weight `exp(similarity / temperature)`.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, D};
use mae::pretrain::EpochProbe;
use mae::{MaeError, Result};
use mae_data::{Dataset, EvalTransform, Loader, LoaderConfig, Transform};

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KnnResult {
    pub top1: f64,
    /// Present when there are at least 5 classes.
    pub top5: Option<f64>,
    pub k: usize,
    pub num_train: usize,
    pub num_test: usize,
}

fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = (x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()? + 1e-12)?;
    Ok(x.broadcast_div(&norm)?)
}

/// Classifies `test` features `[N, D]` by the `k` nearest of `train` features `[M, D]`.
pub fn knn_classify(
    train: &Tensor,
    train_labels: &[u32],
    test: &Tensor,
    test_labels: &[u32],
    num_classes: usize,
    k: usize,
    temperature: f64,
) -> Result<KnnResult> {
    let (m, n) = (train.dim(0)?, test.dim(0)?);
    if m != train_labels.len() || n != test_labels.len() || m == 0 || n == 0 {
        return Err(MaeError::Config(format!(
            "k-NN needs labeled features: {m} train features / {} labels, {n} test features / {} labels",
            train_labels.len(),
            test_labels.len()
        )));
    }
    if let Some(bad) = train_labels.iter().chain(test_labels).find(|&&l| l as usize >= num_classes) {
        return Err(MaeError::Config(format!("label {bad} is out of range for {num_classes} classes")));
    }
    let k = k.clamp(1, m);
    let train = l2_normalize(&train.to_dtype(DType::F32)?)?;
    let test = l2_normalize(&test.to_dtype(DType::F32)?)?;
    let (mut top1, mut top5) = (0usize, 0usize);
    // Chunks of test rows bound the [chunk, M] similarity matrix.
    let chunk = (4_000_000 / m).clamp(1, 1024);
    for start in (0..n).step_by(chunk) {
        let rows = chunk.min(n - start);
        let sim = test.narrow(0, start, rows)?.matmul(&train.t()?)?; // [rows, M]
        let sim = sim.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
        for (r, row) in sim.iter().enumerate() {
            let mut idx: Vec<usize> = (0..m).collect();
            idx.select_nth_unstable_by(k - 1, |&a, &b| row[b].total_cmp(&row[a]));
            let mut scores = vec![0f64; num_classes];
            for &j in &idx[..k] {
                scores[train_labels[j] as usize] += (row[j] as f64 / temperature).exp();
            }
            let mut classes: Vec<usize> = (0..num_classes).collect();
            classes.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
            let truth = test_labels[start + r] as usize;
            top1 += usize::from(classes[0] == truth);
            top5 += usize::from(classes.iter().take(5).any(|&c| c == truth));
        }
    }
    Ok(KnnResult {
        top1: top1 as f64 / n as f64,
        top5: (num_classes >= 5).then(|| top5 as f64 / n as f64),
        k,
        num_train: m,
        num_test: n,
    })
}

/// A held-out labeled split for the k-NN monitor.
pub struct KnnMonitor {
    pub train: Arc<dyn Dataset>,
    pub test: Arc<dyn Dataset>,
    pub every_epochs: usize,
    pub k: usize,
    pub temperature: f64,
    pub pool: mae_vit::Pool,
    /// The pixel statistics of the encoder's pre-training; `None`: the default of its channels.
    pub normalize: Option<mae_data::Normalize>,
}

impl EpochProbe for KnnMonitor {
    fn due(&self, epoch: usize) -> bool {
        self.every_epochs > 0 && (epoch + 1).is_multiple_of(self.every_epochs)
    }

    fn evaluate(&self, encoder: &mae_vit::VisionTransformer) -> Result<Vec<(String, f64)>> {
        Ok(vec![("knn_top1".to_string(), knn_accuracy(encoder, self)?.top1)])
    }
}

/// Pooled encoder features of every sample of `dataset` (eval transform with the default
/// statistics of the encoder's channels), with labels.
pub fn extract_features(
    encoder: &mae_vit::VisionTransformer,
    dataset: Arc<dyn Dataset>,
    pool: mae_vit::Pool,
    batch_size: usize,
    workers: usize,
) -> Result<(Tensor, Vec<u32>)> {
    let transform = crate::eval_transform(encoder.config(), None);
    extract_features_with(encoder, dataset, pool, (batch_size, workers), transform)
}

/// [`extract_features`] through `transform` (a run's own normalisation).
pub fn extract_features_with(
    encoder: &mae_vit::VisionTransformer,
    dataset: Arc<dyn Dataset>,
    pool: mae_vit::Pool,
    batch: (usize, usize),
    transform: EvalTransform,
) -> Result<(Tensor, Vec<u32>)> {
    let rows = extract_feature_rows(encoder, dataset, pool, batch, transform)?;
    Ok((rows.features, rows.labels))
}

/// Features with what each row is: unreadable samples are skipped, so row `r` is sample
/// `indices[r]`, not sample `r`.
pub struct FeatureRows {
    /// `[N, D]` on the CPU.
    pub features: Tensor,
    /// One per row for a labeled dataset, else empty.
    pub labels: Vec<u32>,
    /// The dataset index of each row.
    pub indices: Vec<usize>,
}

/// [`extract_features_with`], keeping each row's dataset index (for outputs that name rows).
pub fn extract_feature_rows(
    encoder: &mae_vit::VisionTransformer,
    dataset: Arc<dyn Dataset>,
    pool: mae_vit::Pool,
    (batch_size, workers): (usize, usize),
    transform: EvalTransform,
) -> Result<FeatureRows> {
    let device = encoder.pos_embed().device();
    let transform: Arc<dyn Transform> = Arc::new(transform);
    let loader = Loader::new(dataset, transform, LoaderConfig { workers, ..LoaderConfig::eval(batch_size) })
        .map_err(|e| MaeError::Config(e.to_string()))?;
    let (mut features, mut labels, mut indices) = (Vec::new(), Vec::new(), Vec::new());
    for batch in loader.iter_epoch(0).map_err(|e| MaeError::Config(e.to_string()))? {
        let batch = batch.map_err(|e| MaeError::Config(e.to_string()))?;
        if batch.is_empty() {
            continue;
        }
        let f = encoder.features(&batch.images.to_device(device)?, pool)?;
        // Detached: the output would otherwise keep the whole forward graph of the batch alive.
        features.push(f.detach().to_device(&Device::Cpu)?);
        labels.extend(batch.labels.unwrap_or_default());
        indices.extend(batch.indices);
    }
    if features.is_empty() {
        return Err(MaeError::Config("no image could be loaded for features".into()));
    }
    Ok(FeatureRows { features: Tensor::cat(&features, 0)?, labels, indices })
}

/// Every sample of `dataset` through the eval transform, flattened: `[N, 3*size*size]`, labels.
pub fn raw_pixels(dataset: Arc<dyn Dataset>, size: usize, workers: usize) -> Result<(Tensor, Vec<u32>)> {
    let loader = Loader::new(
        dataset,
        Arc::new(EvalTransform::new(size)),
        LoaderConfig { workers, ..LoaderConfig::eval(256) },
    )
    .map_err(|e| MaeError::Config(e.to_string()))?;
    let (mut rows, mut labels) = (Vec::new(), Vec::new());
    for batch in loader.iter_epoch(0).map_err(|e| MaeError::Config(e.to_string()))? {
        let batch = batch.map_err(|e| MaeError::Config(e.to_string()))?;
        if !batch.is_empty() {
            rows.push(batch.images.flatten_from(1)?);
            labels.extend(batch.labels.unwrap_or_default());
        }
    }
    if rows.is_empty() {
        return Err(MaeError::Config("no image could be loaded".into()));
    }
    Ok((Tensor::cat(&rows, 0)?, labels))
}

/// k-NN top-1 of an encoder's features on a monitor's splits.
pub fn knn_accuracy(encoder: &mae_vit::VisionTransformer, knn: &KnnMonitor) -> Result<KnnResult> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let transform = || crate::eval_transform(encoder.config(), knn.normalize.as_ref());
    let (train, train_labels) =
        extract_features_with(encoder, knn.train.clone(), knn.pool, (128, workers), transform())?;
    let (test, test_labels) =
        extract_features_with(encoder, knn.test.clone(), knn.pool, (128, workers), transform())?;
    let classes = knn.train.class_names().len().max(1);
    knn_classify(&train, &train_labels, &test, &test_labels, classes, knn.k, knn.temperature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separable_clusters_are_classified_and_noise_is_not() -> Result<()> {
        let dev = Device::Cpu;
        // Class c lives around the c-th axis.
        let make = |n: usize, jitter: f32| -> Result<(Tensor, Vec<u32>)> {
            let mut v = Vec::new();
            let mut labels = Vec::new();
            for i in 0..n {
                let c = i % 6;
                for d in 0..6 {
                    v.push(if d == c { 1.0 } else { jitter * (((i * 7 + d * 3) % 5) as f32 - 2.0) });
                }
                labels.push(c as u32);
            }
            Ok((Tensor::from_vec(v, (n, 6), &dev)?, labels))
        };
        let (train, tl) = make(60, 0.05)?;
        let (test, sl) = make(30, 0.05)?;
        let r = knn_classify(&train, &tl, &test, &sl, 6, 5, 0.07)?;
        assert_eq!(r.top1, 1.0);
        assert_eq!(r.top5, Some(1.0));
        // Shuffled training labels: no better than chance-ish.
        let wrong: Vec<u32> = tl.iter().map(|l| (l + 1 + (l % 2)) % 6).collect();
        let r = knn_classify(&train, &wrong, &test, &sl, 6, 5, 0.07)?;
        assert!(r.top1 < 0.2, "{r:?}");
        assert!(knn_classify(&train, &tl[..3], &test, &sl, 6, 5, 0.07).is_err());
        Ok(())
    }
}
