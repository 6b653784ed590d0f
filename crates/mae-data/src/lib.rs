//! Datasets, transforms and the loader for MAE pre-training.
//!
//! ```no_run
//! use std::sync::Arc;
//! use mae_data::{open, DataSpec, Loader, LoaderConfig, MaeTrainTransform, OpenOptions};
//!
//! let dataset = open(&"mnist:data/mnist@train".parse::<DataSpec>()?, &OpenOptions::default())?;
//! let loader = Loader::new(dataset, Arc::new(MaeTrainTransform::new(32)), LoaderConfig::train(64))?;
//! for epoch in 0..2 {
//!     let mut batches = loader.iter_epoch(epoch)?;
//!     for batch in &mut batches {
//!         let batch = batch?; // batch.images: [B, 3, 32, 32]
//!     }
//!     println!("epoch {epoch}: {:?}", batches.stats());
//! }
//! # Ok::<(), mae_data::DataError>(())
//! ```
//!
//! See docs/data.md for the spec forms, the transforms, determinism, the distributed split and
//! the bad-input policy.

mod bands;
mod cifar;
mod dataset;
#[cfg(feature = "dicom")]
mod dicom;
mod epoch;
mod error;
mod folder;
#[cfg(feature = "hf")]
mod hf;
#[cfg(feature = "hf")]
mod hub_cache;
mod list;
mod loader;
mod mnist;
mod pixels;
mod rng;
mod sampler;
mod shard_order;
mod shard_paths;
mod spec;
mod stats;
mod synthetic;
mod tensor_images;
mod tiff_bands;
mod transform;
mod wds;

pub use bands::{BandImage, Image};
pub use cifar::{Cifar10, CIFAR10_CLASSES};
pub use dataset::{decode_image, open_image, out_of_range, Dataset, DecodeLimits, Sample};
#[cfg(feature = "dicom")]
pub use dicom::{decode_dicom_frame, is_dicom_file, DicomDataset};
pub use epoch::EpochIter;
pub use error::{DataError, Result, ACCEPTED_SPECS};
pub use folder::{ImageFolder, IMAGE_EXTENSIONS};
#[cfg(feature = "hf")]
pub use hf::{hub_cache_dir, HfDataset};
#[cfg(feature = "hf")]
pub use hub_cache::hub_cache_dir_from;
pub use list::ImageList;
pub use loader::{Batch, EpochStats, Loader, LoaderConfig};
pub use mnist::Mnist;
pub use rng::{permutation, sample_rng, sample_seed, stream};
pub use sampler::SamplerConfig;
pub use shard_order::ShardLayout;
pub use shard_paths::{brace_count, expand_braces, MAX_SHARDS};
pub use spec::{open, DataSpec, OpenOptions, Split, SYNTHETIC_DEFAULT_COUNT};
pub use stats::{pixel_stats, PixelStats, StatsOptions};
pub use synthetic::{draw_shape, SyntheticShapes, SHAPES};
pub use tensor_images::TensorImages;
pub use transform::{
    random_resized_crop_params, CropBox, EvalTransform, MaeTrainTransform, Normalize, Transform, MAX_CHANNELS,
};
pub use wds::{WebDataset, DEFAULT_SHUFFLE_BUFFER};

/// The image crate this one decodes with, for `Image::Standard` (`DynamicImage`).
pub use image;
