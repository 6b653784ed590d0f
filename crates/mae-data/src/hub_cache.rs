//! Finding a dataset's parquet shards: in the local Hugging Face hub cache, else downloaded into
//! it through [`mae_hub::Hub`] (the same cache, `HF_HUB_OFFLINE`, `HF_ENDPOINT` and `HF_TOKEN`
//! rules as weights).
//!
//! The cache layout (`huggingface_hub`'s): `<cache>/datasets--OWNER--NAME/refs/main` holds a
//! commit hash, and `snapshots/<hash>/` holds the repository's files (symbolic links into
//! `blobs/`). Parquet shards are laid out by the repository, commonly
//! `CONFIG/SPLIT-00000-of-00001.parquet` (`ylecun/mnist`, `uoft-cs/cifar10`),
//! `data/SPLIT-*.parquet`, or `CONFIG/SPLIT/0000.parquet` (the hub's parquet conversion, in
//! `refs/convert/parquet`, read when it is cached).

use std::path::{Path, PathBuf};

use mae_hub::{Hub, RepoId, RepoKind};

use crate::error::{DataError, Result};

/// The hub cache directory from an environment lookup, as `huggingface_hub` resolves it.
pub use mae_hub::cache_dir_from as hub_cache_dir_from;

/// The hub cache directory of this process's environment (see [`hub_cache_dir_from`]).
pub fn hub_cache_dir() -> Option<PathBuf> {
    mae_hub::cache_dir()
}

fn hub_error(repo: &str, message: impl Into<String>) -> DataError {
    DataError::Hub { repo: repo.into(), message: message.into() }
}

impl From<mae_hub::HubError> for DataError {
    fn from(e: mae_hub::HubError) -> Self {
        DataError::Hub { repo: e.repo, message: e.message }
    }
}

/// Whether `relative` (a path inside a snapshot) is a shard of `split`: a directory named after
/// the split, or a file name `SPLIT-*`, `SPLIT_*` or `SPLIT.parquet`.
fn is_split_file(relative: &Path, split: &str) -> bool {
    let mut parts: Vec<&str> = relative.iter().filter_map(|p| p.to_str()).collect();
    let Some(file) = parts.pop() else { return false };
    let stem = file.strip_suffix(".parquet").unwrap_or(file);
    parts.contains(&split)
        || stem == split
        || stem.strip_prefix(split).is_some_and(|rest| rest.starts_with('-') || rest.starts_with('_'))
}

/// The config a shard belongs to: its directories, less the split's and a generic `data/`.
fn config_of(relative: &Path, split: &str) -> String {
    let parts: Vec<&str> = relative.iter().filter_map(|p| p.to_str()).collect();
    let dirs = &parts[..parts.len().saturating_sub(1)];
    dirs.iter().filter(|d| **d != split && **d != "data").copied().collect::<Vec<_>>().join("/")
}

/// The shards of `split` (in `config`, when given) among `files` (paths inside a snapshot, `/`
/// separated): `Ok(None)` when there are none, an error when several configs hold the split.
fn select_shards(
    repo: &str,
    files: &[String],
    config: Option<&str>,
    split: &str,
) -> Result<Option<Vec<String>>> {
    let mut shards: Vec<(String, &String)> = Vec::new();
    for file in files.iter().filter(|f| f.ends_with(".parquet")) {
        let relative = Path::new(file);
        if !is_split_file(relative, split) {
            continue;
        }
        let in_config = match config {
            Some(c) => relative.iter().rev().skip(1).any(|d| d == c),
            None => true,
        };
        if in_config {
            shards.push((config_of(relative, split), file));
        }
    }
    let mut configs: Vec<&str> = shards.iter().map(|(c, _)| c.as_str()).collect();
    configs.sort();
    configs.dedup();
    if configs.len() > 1 {
        return Err(hub_error(
            repo,
            format!(
                "several configs hold a `{split}` split ({}); pick one with hf:{repo}/CONFIG@{split}",
                configs.join(", ")
            ),
        ));
    }
    let mut shards: Vec<String> = shards.into_iter().map(|(_, f)| f.clone()).collect();
    shards.sort();
    Ok((!shards.is_empty()).then_some(shards))
}

fn listing(files: &[String]) -> String {
    let parquet: Vec<&str> =
        files.iter().filter(|f| f.ends_with(".parquet")).take(20).map(String::as_str).collect();
    format!("[{}]", parquet.join(", "))
}

fn no_split(repo: &str, config: Option<&str>, split: &str, where_: &str, files: &[String]) -> DataError {
    hub_error(
        repo,
        format!(
            "no parquet shard of split `{split}`{} in {where_}; parquet files present: {}",
            config.map(|c| format!(" in config `{c}`")).unwrap_or_default(),
            listing(files)
        ),
    )
}

/// The parquet shards of `repo`'s `split` (in `config`, when given): from the cached snapshot of
/// `refs/main` (then of the hub's parquet conversion) when it holds them, else downloaded into
/// the cache (unless `hub` is offline).
pub(crate) fn resolve_shards(
    hub: &Hub,
    repo: &str,
    config: Option<&str>,
    split: &str,
) -> Result<Vec<PathBuf>> {
    let cache = hub
        .cache_dir()
        .ok_or_else(|| hub_error(repo, "no hub cache: set HF_HUB_CACHE or HF_HOME (or HOME)"))?;
    let repo_dir = cache.join(format!("datasets--{}", repo.replace('/', "--")));
    let main = RepoId { name: repo.to_string(), revision: None };
    let converted = RepoId { name: repo.to_string(), revision: Some("convert/parquet".into()) };
    let mut cached_files = Vec::new();
    for id in [&main, &converted] {
        let (Some(files), Some(snapshot)) =
            (hub.cached_files(RepoKind::Dataset, id), hub.snapshot_dir(RepoKind::Dataset, id))
        else {
            continue;
        };
        if let Some(shards) = select_shards(repo, &files, config, split)? {
            return Ok(shards.iter().map(|f| snapshot.join(f)).collect());
        }
        cached_files.extend(files);
    }
    if hub.is_offline() {
        if repo_dir.is_dir() {
            return Err(no_split(repo, config, split, &repo_dir.display().to_string(), &cached_files));
        }
        return Err(hub_error(
            repo,
            format!(
                "not in the hub cache {} (expected {}), and HF_HUB_OFFLINE is set; download it first where there is \
                 network (`huggingface-cli download --repo-type dataset {repo}`, or run once without \
                 HF_HUB_OFFLINE), or set HF_HUB_CACHE",
                cache.display(),
                repo_dir.display()
            ),
        ));
    }
    let files = hub.list_files(RepoKind::Dataset, &main)?;
    let shards = select_shards(repo, &files, config, split)?
        .ok_or_else(|| no_split(repo, config, split, &format!("the hub's {repo}"), &files))?;
    let mut paths = Vec::new();
    for (i, shard) in shards.iter().enumerate() {
        tracing::info!("hf:{repo}: shard {}/{} {shard}", i + 1, shards.len());
        let path = hub.file(RepoKind::Dataset, &main, shard)?.ok_or_else(|| {
            hub_error(repo, format!("`{shard}` was listed by the hub but is not there (HTTP 404)"))
        })?;
        paths.push(path);
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_config_matching() {
        assert!(is_split_file(Path::new("mnist/train-00000-of-00001.parquet"), "train"));
        assert!(is_split_file(Path::new("default/test/0000.parquet"), "test"));
        assert!(is_split_file(Path::new("data/validation.parquet"), "validation"));
        assert!(!is_split_file(Path::new("mnist/train-00000-of-00001.parquet"), "test"));
        assert!(!is_split_file(Path::new("trainer/x.parquet"), "train"));
        assert_eq!(config_of(Path::new("320px/train-0.parquet"), "train"), "320px");
        assert_eq!(config_of(Path::new("data/train-0.parquet"), "train"), "");
        assert_eq!(config_of(Path::new("default/train/0000.parquet"), "train"), "default");
    }
}
