//! Weight I/O below the model: files, folders and hub ids become named tensors (in our naming:
//! timm's encoder, the paper's decoder) and a config, and named tensors are written back in
//! every format people load. The model crate (`mae`) builds itself from a [`Checkpoint`]; this
//! crate knows no model, only names, shapes and configs.
//!
//! - [`formats`]: what a file or folder is (ours, Hugging Face ViTMAE / ViT, timm, the paper's
//!   `.pth`, sharded safetensors) and its config, read or inferred from shapes.
//! - [`naming`]: the pure renaming between Hugging Face names and ours (q/k/v split and joined).
//! - [`hub`]: a model repository's weight files, through `mae-hub`.
//! - [`io`]: our safetensors files, atomic writes; [`export`]: timm and Hugging Face folders.
//! - [`config`]: [`MaeConfig`] and the presets (the shape every format maps to).

pub mod channels;
pub mod config;
pub mod error;
pub mod export;
pub mod formats;
pub mod hub;
pub mod io;
pub mod naming;
mod torch_zip;

pub use config::{MaeConfig, StackShape, PRESETS};
pub use error::{MaeError, Result};
pub use export::ExportFormat;
pub use formats::{Checkpoint, Format};
pub use hub::{Hub, RepoId};
pub use io::{check_finite, config_from_hf_json, write_atomically, WeightsFile};
