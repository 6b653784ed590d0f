//! Datasets, transforms and the loader for MAE pre-training.
