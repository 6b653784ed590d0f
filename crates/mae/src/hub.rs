//! Hugging Face hub ids (`facebook/vit-mae-base`, `timm/vit_base_patch16_224.mae@main`): files
//! come from the standard local hub cache (`huggingface_hub`'s layout, shared with Python), and
//! are downloaded into it with `hf-hub`'s blocking client only when they are not there.
//!
//! The cache: `<cache>/models--OWNER--NAME/refs/<revision>` holds a commit hash, and
//! `snapshots/<hash>/<file>` the file (a symbolic link into `blobs/`). The cache directory is
//! `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`. `HF_HUB_OFFLINE=1`
//! forbids any network access: a file that is not cached is then an error saying how to get it.

use std::path::{Path, PathBuf};

use crate::error::{MaeError, Result};

/// Weight files tried for a hub model, in order: safetensors, sharded safetensors, PyTorch.
pub const WEIGHT_FILES: [&str; 3] =
    ["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"];

/// A model repository on the hub, with an optional revision (branch, tag or commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoId {
    /// `OWNER/NAME`.
    pub name: String,
    /// `None` means `main`.
    pub revision: Option<String>,
}

impl RepoId {
    /// Parses `OWNER/NAME` or `OWNER/NAME@REVISION`; `None` when `s` does not look like a hub id
    /// (an absolute or relative path with more parts, a file name with a weights extension, ...).
    pub fn parse(s: &str) -> Option<Self> {
        let (name, revision) = match s.split_once('@') {
            Some((n, r)) if !r.is_empty() && !r.chars().any(char::is_whitespace) => (n, Some(r.to_string())),
            Some(_) => return None,
            None => (s, None),
        };
        let (owner, repo) = name.split_once('/')?;
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 96
                && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !p.starts_with(['.', '-'])
                && !p.ends_with('.')
                && !p.contains("--")
                && !p.contains("..")
        };
        let weights_like =
            [".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".json"].iter().any(|e| repo.ends_with(e));
        (part_ok(owner) && part_ok(repo) && !weights_like).then(|| Self { name: name.to_string(), revision })
    }

    /// The revision asked for (`main` by default).
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }

    /// The repository's folder in the cache: `models--OWNER--NAME`.
    pub fn cache_folder(&self) -> String {
        format!("models--{}", self.name.replace('/', "--"))
    }
}

impl std::fmt::Display for RepoId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.revision {
            Some(r) => write!(f, "{}@{r}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Where hub files come from: the cache directory, whether downloading is allowed, and the
/// endpoint and token used when it is.
#[derive(Debug, Clone)]
pub struct Hub {
    cache_dir: Option<PathBuf>,
    offline: bool,
    endpoint: Option<String>,
    token: Option<String>,
}

/// The hub cache directory as `huggingface_hub` resolves it: `$HF_HUB_CACHE`, else
/// `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else `$HOME/.cache/huggingface/hub`.
/// (mae-data has the same behind its `hf` feature.)
pub fn cache_dir_from(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    set("HF_HUB_CACHE")
        .or_else(|| set("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| set("XDG_CACHE_HOME").map(|c| c.join("huggingface").join("hub")))
        .or_else(|| set("HOME").map(|h| h.join(".cache").join("huggingface").join("hub")))
}

/// `huggingface_hub`'s reading of a boolean variable: 1, ON, YES or TRUE (any case).
fn is_true(value: Option<String>) -> bool {
    value.is_some_and(|v| ["1", "ON", "YES", "TRUE"].contains(&v.trim().to_ascii_uppercase().as_str()))
}

impl Hub {
    /// The hub as this process's environment describes it: the cache of `HF_HUB_CACHE` /
    /// `HF_HOME` / `XDG_CACHE_HOME` / `HOME`, `HF_HUB_OFFLINE`, `HF_ENDPOINT` and `HF_TOKEN`.
    pub fn from_env() -> Self {
        Self::from_env_with(|name| std::env::var(name).ok())
    }

    /// [`Hub::from_env`] over any variable lookup (for tests and embedding applications).
    pub fn from_env_with(env: impl Fn(&str) -> Option<String>) -> Self {
        let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        Self {
            cache_dir: cache_dir_from(&env),
            offline: is_true(env("HF_HUB_OFFLINE")),
            endpoint: set("HF_ENDPOINT"),
            token: set("HF_TOKEN"),
        }
    }

    /// A hub over the cache directory `cache_dir`, online (downloads allowed), default endpoint.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self { cache_dir: Some(cache_dir.into()), offline: false, endpoint: None, token: None }
    }

    /// The same hub, offline (cache only) or online.
    pub fn with_offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache_dir.as_deref()
    }

    pub fn is_offline(&self) -> bool {
        self.offline
    }

    fn error(repo: &RepoId, message: impl Into<String>) -> MaeError {
        MaeError::Weights { origin: format!("hub model {repo}"), message: message.into() }
    }

    fn cache(&self, repo: &RepoId) -> Result<&Path> {
        self.cache_dir.as_deref().ok_or_else(|| {
            Self::error(repo, "no hub cache directory: set HF_HUB_CACHE or HF_HOME (HOME is not set either)")
        })
    }

    /// The snapshot folder of `repo`'s revision in the cache, if the cache knows that revision.
    pub fn snapshot_dir(&self, repo: &RepoId) -> Option<PathBuf> {
        let repo_dir = self.cache_dir.as_ref()?.join(repo.cache_folder());
        let rev = repo.revision();
        let hash = if rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit()) {
            rev.to_string()
        } else {
            std::fs::read_to_string(repo_dir.join("refs").join(rev)).ok()?.trim().to_string()
        };
        let dir = repo_dir.join("snapshots").join(hash);
        dir.is_dir().then_some(dir)
    }

    /// `file` of `repo` when it is in the cache (no network).
    pub fn cached_file(&self, repo: &RepoId, file: &str) -> Option<PathBuf> {
        let path = self.snapshot_dir(repo)?.join(file);
        path.is_file().then_some(path)
    }

    /// Whether the cache records that `repo` has no `file` (`.no_exist/<hash>/<file>`, written by
    /// `huggingface_hub` after a 404).
    fn known_missing(&self, repo: &RepoId, file: &str) -> bool {
        let Some(snapshot) = self.snapshot_dir(repo) else { return false };
        let (Some(hash), Some(repo_dir)) = (snapshot.file_name(), snapshot.parent().and_then(Path::parent))
        else {
            return false;
        };
        repo_dir.join(".no_exist").join(hash).join(file).exists()
    }

    /// The error for files that are not cached while offline: which id, which file, how to get
    /// them (`download` lists the files to fetch).
    fn offline_missing(&self, repo: &RepoId, what: &str, download: &[&str]) -> MaeError {
        let cache = self.cache_dir.as_ref().map_or("(none)".into(), |c| c.display().to_string());
        let nothing =
            if self.snapshot_dir(repo).is_some() { "" } else { " (nothing of this repository is cached)" };
        let revision = repo.revision.as_ref().map(|r| format!(" --revision {r}")).unwrap_or_default();
        Self::error(
            repo,
            format!(
                "{what} is not in the Hugging Face cache {cache}{nothing}, and HF_HUB_OFFLINE is set, so nothing is \
                 downloaded. Download it once where there is network: `huggingface-cli download {}{revision} {}` \
                 (into this cache, or point HF_HUB_CACHE at the one it went to), or unset HF_HUB_OFFLINE",
                repo.name,
                download.join(" "),
            ),
        )
    }

    /// Downloads `file` of `repo` into the cache; `Ok(None)` when the repository has no such
    /// file (HTTP 404).
    fn download(&self, repo: &RepoId, file: &str) -> Result<Option<PathBuf>> {
        use hf_hub::api::sync::{ApiBuilder, ApiError};
        let cache = self.cache(repo)?;
        let mut builder = ApiBuilder::from_cache(hf_hub::Cache::new(cache.to_path_buf())).with_progress(true);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        if let Some(token) = &self.token {
            builder = builder.with_token(Some(token.clone()));
        }
        let api =
            builder.build().map_err(|e| Self::error(repo, format!("cannot start the hub client: {e}")))?;
        let handle = api.repo(hf_hub::Repo::with_revision(
            repo.name.clone(),
            hf_hub::RepoType::Model,
            repo.revision().to_string(),
        ));
        tracing::info!("downloading {file} of {repo} into {}", cache.display());
        match handle.download(file) {
            Ok(path) => Ok(Some(path)),
            Err(ApiError::RequestError(e)) => match *e {
                ureq::Error::Status(404, _) => Ok(None),
                ureq::Error::Status(code @ (401 | 403), _) => Err(Self::error(
                    repo,
                    format!(
                        "the hub refused `{file}` (HTTP {code}): the repository does not exist, or it is private or \
                         gated; check the id, or log in (`huggingface-cli login`, or set HF_TOKEN)"
                    ),
                )),
                other => Err(Self::error(
                    repo,
                    format!(
                        "downloading `{file}` failed: {other}. Without network, download it elsewhere \
                         (`huggingface-cli download {} {file}`) into the cache and set HF_HUB_OFFLINE=1",
                        repo.name
                    ),
                )),
            },
            Err(e) => Err(Self::error(repo, format!("downloading `{file}` failed: {e}"))),
        }
    }

    /// `file` of `repo`: from the cache, else downloaded (unless offline). `Ok(None)` when the
    /// repository has no such file.
    pub fn file(&self, repo: &RepoId, file: &str) -> Result<Option<PathBuf>> {
        if let Some(path) = self.cached_file(repo, file) {
            return Ok(Some(path));
        }
        if self.known_missing(repo, file) {
            return Ok(None);
        }
        if self.offline {
            return Err(self.offline_missing(repo, &format!("`{file}`"), &[file]));
        }
        self.download(repo, file)
    }

    /// The files of a model repository: `config.json` (when the repository has one) and the
    /// weights, the first of [`WEIGHT_FILES`] that is cached, else the first that downloads
    /// (a sharded index comes with all its shards).
    pub fn model_files(&self, repo: &RepoId) -> Result<ModelFiles> {
        let config = match self.cached_file(repo, "config.json") {
            Some(path) => Some(path),
            None if self.known_missing(repo, "config.json") => None,
            None if self.offline => {
                return Err(self.offline_missing(
                    repo,
                    "`config.json`",
                    &["config.json", "model.safetensors"],
                ))
            }
            None => self.download(repo, "config.json")?,
        };
        let mut weights = WEIGHT_FILES.iter().find_map(|f| self.cached_file(repo, f));
        if weights.is_none() {
            if self.offline {
                let what = "`model.safetensors` (or `pytorch_model.bin`)";
                return Err(self.offline_missing(repo, what, &["model.safetensors"]));
            }
            for file in WEIGHT_FILES {
                if let Some(path) = self.download(repo, file)? {
                    weights = Some(path);
                    break;
                }
            }
        }
        let weights = weights.ok_or_else(|| {
            Self::error(repo, format!("the repository has none of {}", WEIGHT_FILES.join(", ")))
        })?;
        let weights = if weights.to_string_lossy().ends_with(".index.json") {
            let mut shards = Vec::new();
            for shard in crate::formats::shard_names(&weights)? {
                let path = self.file(repo, &shard)?.ok_or_else(|| {
                    Self::error(
                        repo,
                        format!("`{shard}`, named by the shard index, is not in the repository"),
                    )
                })?;
                shards.push(path);
            }
            shards
        } else {
            vec![weights]
        };
        Ok(ModelFiles { config, weights })
    }
}

/// The local files of a hub model.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub config: Option<PathBuf>,
    /// One file, or the shards of a sharded checkpoint.
    pub weights: Vec<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_and_paths() {
        let id = RepoId::parse("facebook/vit-mae-base").unwrap();
        assert_eq!((id.name.as_str(), id.revision()), ("facebook/vit-mae-base", "main"));
        assert_eq!(id.cache_folder(), "models--facebook--vit-mae-base");
        let id = RepoId::parse("timm/vit_base_patch16_224.mae@v1.0").unwrap();
        assert_eq!((id.name.as_str(), id.revision()), ("timm/vit_base_patch16_224.mae", "v1.0"));
        assert_eq!(id.to_string(), "timm/vit_base_patch16_224.mae@v1.0");
        for path in
            ["/abs/path", "a/b/c", "./x", "model.safetensors", "runs/model.safetensors", "a/.b", "x/", "/x"]
        {
            assert_eq!(RepoId::parse(path), None, "{path}");
        }
    }

    #[test]
    fn offline_values() {
        for (v, offline) in [("1", true), ("true", true), ("YES", true), ("0", false), ("", false)] {
            let hub = Hub::from_env_with(|k| (k == "HF_HUB_OFFLINE").then(|| v.to_string()));
            assert_eq!(hub.is_offline(), offline, "{v}");
        }
    }
}
