//! Hub models: which files of a model repository hold its weights, fetched through [`Hub`]
//! (`mae-hub`: the standard local cache first, downloads only when allowed).

use std::path::PathBuf;

pub use mae_hub::{Hub, HubError, RepoId, RepoKind};

use crate::error::{MaeError, Result};

/// Weight files tried for a hub model, in order: safetensors, sharded safetensors, PyTorch.
pub const WEIGHT_FILES: [&str; 3] =
    ["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"];

impl From<HubError> for MaeError {
    fn from(e: HubError) -> Self {
        MaeError::Weights { origin: format!("{} {}", e.kind, e.repo), message: e.message }
    }
}

fn error(repo: &RepoId, message: impl Into<String>) -> MaeError {
    MaeError::Weights { origin: format!("hub model {repo}"), message: message.into() }
}

/// The local files of a hub model.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub config: Option<PathBuf>,
    /// One file, or the shards of a sharded checkpoint.
    pub weights: Vec<PathBuf>,
}

/// The files of a model repository: `config.json` (when the repository has one) and the
/// weights, the first of [`WEIGHT_FILES`] that is cached, else the first that downloads (a
/// sharded index comes with all its shards).
pub fn model_files(hub: &Hub, repo: &RepoId) -> Result<ModelFiles> {
    const MODEL: RepoKind = RepoKind::Model;
    let config = match hub.cached_file(MODEL, repo, "config.json") {
        Some(path) => Some(path),
        None if hub.known_missing(MODEL, repo, "config.json") => None,
        None if hub.is_offline() => {
            return Err(hub
                .offline_missing(MODEL, repo, "`config.json`", &["config.json", "model.safetensors"])
                .into())
        }
        None => hub.download(MODEL, repo, "config.json")?,
    };
    let mut weights = WEIGHT_FILES.iter().find_map(|f| hub.cached_file(MODEL, repo, f));
    if weights.is_none() {
        if hub.is_offline() {
            let what = "`model.safetensors` (or `pytorch_model.bin`)";
            return Err(hub.offline_missing(MODEL, repo, what, &["model.safetensors"]).into());
        }
        for file in WEIGHT_FILES {
            if let Some(path) = hub.download(MODEL, repo, file)? {
                weights = Some(path);
                break;
            }
        }
    }
    let weights = weights
        .ok_or_else(|| error(repo, format!("the repository has none of {}", WEIGHT_FILES.join(", "))))?;
    let weights = if weights.to_string_lossy().ends_with(".index.json") {
        let mut shards = Vec::new();
        for shard in crate::formats::shard_names(&weights)? {
            let path = hub.file(MODEL, repo, &shard)?.ok_or_else(|| {
                error(repo, format!("`{shard}`, named by the shard index, is not in the repository"))
            })?;
            shards.push(path);
        }
        shards
    } else {
        vec![weights]
    };
    Ok(ModelFiles { config, weights })
}
