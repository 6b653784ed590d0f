//! Finding a dataset's parquet shards in a local Hugging Face hub cache, without network.
//!
//! The cache layout (`huggingface_hub`'s): `<cache>/datasets--OWNER--NAME/refs/main` holds a
//! commit hash, and `snapshots/<hash>/` holds the repository's files (symbolic links into
//! `blobs/`). Parquet shards are laid out by the repository, commonly
//! `CONFIG/SPLIT-00000-of-00001.parquet` (`ylecun/mnist`, `uoft-cs/cifar10`),
//! `data/SPLIT-*.parquet`, or `CONFIG/SPLIT/0000.parquet` (the hub's parquet conversion, in
//! `refs/convert/parquet`).

use std::path::{Path, PathBuf};

use walkdir::WalkDir;

use crate::error::{DataError, Result};

/// The hub cache directory from an environment lookup: `$HF_HUB_CACHE`, else `$HF_HOME/hub`,
/// else `$XDG_CACHE_HOME/huggingface/hub`, else `$HOME/.cache/huggingface/hub`, as
/// `huggingface_hub` resolves it.
pub fn hub_cache_dir_from(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    set("HF_HUB_CACHE")
        .or_else(|| set("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| set("XDG_CACHE_HOME").map(|c| c.join("huggingface").join("hub")))
        .or_else(|| set("HOME").map(|h| h.join(".cache").join("huggingface").join("hub")))
}

/// The hub cache directory of this process's environment (see [`hub_cache_dir_from`]).
pub fn hub_cache_dir() -> Option<PathBuf> {
    hub_cache_dir_from(|name| std::env::var(name).ok())
}

fn hub_error(repo: &str, message: impl Into<String>) -> DataError {
    DataError::Hub { repo: repo.into(), message: message.into() }
}

/// Snapshot directories to search, in order: the one `refs/main` names, then the parquet
/// conversion's.
fn snapshots(repo: &str, repo_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for reference in ["refs/main", "refs/convert/parquet"] {
        if let Ok(hash) = std::fs::read_to_string(repo_dir.join(reference)) {
            let dir = repo_dir.join("snapshots").join(hash.trim());
            if dir.is_dir() {
                found.push(dir);
            }
        }
    }
    if found.is_empty() {
        return Err(hub_error(
            repo,
            format!(
                "{} has no snapshot named by refs/main or refs/convert/parquet (an incomplete download?)",
                repo_dir.display()
            ),
        ));
    }
    Ok(found)
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

/// The sorted parquet shards of `repo`'s `split` (in `config`, when given) in `cache`.
pub(crate) fn resolve_shards(
    cache: &Path,
    repo: &str,
    config: Option<&str>,
    split: &str,
) -> Result<Vec<PathBuf>> {
    let repo_dir = cache.join(format!("datasets--{}", repo.replace('/', "--")));
    if !repo_dir.is_dir() {
        return Err(hub_error(
            repo,
            format!(
                "not in the hub cache {} (expected {}); download it first, e.g. \
                 `huggingface-cli download --repo-type dataset {repo}`, or set HF_HUB_CACHE",
                cache.display(),
                repo_dir.display()
            ),
        ));
    }
    let mut all = Vec::new();
    for snapshot in snapshots(repo, &repo_dir)? {
        let mut shards = Vec::new();
        for entry in WalkDir::new(&snapshot).follow_links(true).sort_by_file_name() {
            let entry = entry.map_err(|e| DataError::io(snapshot.clone(), e.into()))?;
            let path = entry.path();
            if !entry.file_type().is_file() || path.extension().is_none_or(|e| e != "parquet") {
                continue;
            }
            let relative = path.strip_prefix(&snapshot).unwrap_or(path).to_path_buf();
            all.push(relative.clone());
            if !is_split_file(&relative, split) {
                continue;
            }
            let in_config = match config {
                Some(c) => relative.iter().rev().skip(1).any(|d| d == c),
                None => true,
            };
            if in_config {
                shards.push((config_of(&relative, split), path.to_path_buf()));
            }
        }
        let mut configs: Vec<&String> = shards.iter().map(|(c, _)| c).collect();
        configs.sort();
        configs.dedup();
        if configs.len() > 1 {
            let names: Vec<&str> = configs.iter().map(|c| c.as_str()).collect();
            return Err(hub_error(
                repo,
                format!(
                    "several configs hold a `{split}` split ({}); pick one with hf:{repo}/CONFIG@{split}",
                    names.join(", ")
                ),
            ));
        }
        if !shards.is_empty() {
            return Ok(shards.into_iter().map(|(_, p)| p).collect());
        }
    }
    let listing: Vec<String> = all.iter().take(20).map(|p| p.display().to_string()).collect();
    Err(hub_error(
        repo,
        format!(
            "no parquet shard of split `{split}`{} in {}; parquet files present: [{}]",
            config.map(|c| format!(" in config `{c}`")).unwrap_or_default(),
            repo_dir.display(),
            listing.join(", ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_precedence() {
        fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        }
        let all = [("HF_HUB_CACHE", "/a"), ("HF_HOME", "/b"), ("HOME", "/h")];
        assert_eq!(hub_cache_dir_from(env(&all)), Some(PathBuf::from("/a")));
        assert_eq!(hub_cache_dir_from(env(&all[1..])), Some(PathBuf::from("/b/hub")));
        assert_eq!(hub_cache_dir_from(env(&all[2..])), Some(PathBuf::from("/h/.cache/huggingface/hub")));
        assert_eq!(hub_cache_dir_from(env(&[])), None);
    }

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
