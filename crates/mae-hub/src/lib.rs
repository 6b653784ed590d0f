//! The Hugging Face hub, for weights and datasets alike: files come from the standard local hub
//! cache (`huggingface_hub`'s layout, shared with Python) and are downloaded into it with
//! `hf-hub`'s blocking client only when they are not there.
//!
//! The cache: `<cache>/{models,datasets}--OWNER--NAME/refs/<revision>` holds a commit hash, and
//! `snapshots/<hash>/<file>` the file (a symbolic link into `blobs/`). The cache directory is
//! `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
//! `~/.cache/huggingface/hub`. `HF_HUB_OFFLINE=1` forbids any network access: a file that is not
//! cached is then an error saying how to get it. `HF_ENDPOINT` and `HF_TOKEN` are honoured.
//!
//! This crate knows nothing of models or images: it turns a repository id and a file name into
//! a local path. With the `test-server` feature, [`testing::HubServer`] is a local server that
//! speaks the hub's API, for tests.

use std::path::{Path, PathBuf};

#[cfg(feature = "test-server")]
pub mod testing;

/// What went wrong with a hub repository, in words that say what to do.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind} {repo}: {message}")]
pub struct HubError {
    pub kind: RepoKind,
    /// `OWNER/NAME[@REVISION]`.
    pub repo: String,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, HubError>;

/// The kind of a hub repository: it decides the cache folder's prefix and the URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    Model,
    Dataset,
}

impl RepoKind {
    fn plural(self) -> &'static str {
        match self {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        }
    }
}

impl std::fmt::Display for RepoKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RepoKind::Model => "hub model",
            RepoKind::Dataset => "hub dataset",
        })
    }
}

/// Retries of a broken download, each resuming where the last stopped after a backoff of
/// 0.3 s, 0.6 s, ... (hf-hub's loop makes it this many plus two tries in all).
const DOWNLOAD_RETRIES: usize = 3;

/// A repository on the hub, with an optional revision (branch, tag or commit).
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
        let weights_like =
            [".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".json"].iter().any(|e| repo.ends_with(e));
        (name_part_ok(owner) && name_part_ok(repo) && !weights_like)
            .then(|| Self { name: name.to_string(), revision })
    }

    /// The revision asked for (`main` by default).
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }

    /// The repository's folder in the cache for a model: `models--OWNER--NAME`.
    pub fn cache_folder(&self) -> String {
        self.cache_folder_of(RepoKind::Model)
    }

    /// The repository's folder in the cache: `models--OWNER--NAME` or `datasets--OWNER--NAME`.
    pub fn cache_folder_of(&self, kind: RepoKind) -> String {
        format!("{}--{}", kind.plural(), self.name.replace('/', "--"))
    }
}

/// One part of `OWNER/NAME` as the hub allows it.
pub fn name_part_ok(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 96
        && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !p.starts_with(['.', '-'])
        && !p.ends_with('.')
        && !p.contains("--")
        && !p.contains("..")
}

impl std::fmt::Display for RepoId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.revision {
            Some(r) => write!(f, "{}@{r}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// The hub cache directory as `huggingface_hub` resolves it: `$HF_HUB_CACHE`, else
/// `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else `$HOME/.cache/huggingface/hub`.
pub fn cache_dir_from(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    set("HF_HUB_CACHE")
        .or_else(|| set("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| set("XDG_CACHE_HOME").map(|c| c.join("huggingface").join("hub")))
        .or_else(|| set("HOME").map(|h| h.join(".cache").join("huggingface").join("hub")))
}

/// The hub cache directory of this process's environment (see [`cache_dir_from`]).
pub fn cache_dir() -> Option<PathBuf> {
    cache_dir_from(|name| std::env::var(name).ok())
}

/// `huggingface_hub`'s reading of a boolean variable: 1, ON, YES or TRUE (any case).
fn is_true(value: Option<String>) -> bool {
    value.is_some_and(|v| ["1", "ON", "YES", "TRUE"].contains(&v.trim().to_ascii_uppercase().as_str()))
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

    /// The same hub over another cache directory.
    pub fn with_cache_dir(mut self, cache_dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(cache_dir.into());
        self
    }

    /// The same hub, offline (cache only) or online.
    pub fn with_offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    /// The same hub, downloading from `endpoint` (e.g. a mirror, or a test server).
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// The same hub, sending `token` (as `HF_TOKEN` does).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache_dir.as_deref()
    }

    pub fn is_offline(&self) -> bool {
        self.offline
    }

    fn error(kind: RepoKind, repo: &RepoId, message: impl Into<String>) -> HubError {
        HubError { kind, repo: repo.to_string(), message: message.into() }
    }

    fn cache(&self, kind: RepoKind, repo: &RepoId) -> Result<&Path> {
        self.cache_dir.as_deref().ok_or_else(|| {
            Self::error(
                kind,
                repo,
                "no hub cache directory: set HF_HUB_CACHE or HF_HOME (HOME is not set either)",
            )
        })
    }

    /// The snapshot folder of `repo`'s revision in the cache, if the cache knows that revision.
    pub fn snapshot_dir(&self, kind: RepoKind, repo: &RepoId) -> Option<PathBuf> {
        let repo_dir = self.cache_dir.as_ref()?.join(repo.cache_folder_of(kind));
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
    pub fn cached_file(&self, kind: RepoKind, repo: &RepoId, file: &str) -> Option<PathBuf> {
        let path = self.snapshot_dir(kind, repo)?.join(file);
        path.is_file().then_some(path)
    }

    /// Whether the cache records that `repo` has no `file` (`.no_exist/<hash>/<file>`, written by
    /// `huggingface_hub` after a 404).
    pub fn known_missing(&self, kind: RepoKind, repo: &RepoId, file: &str) -> bool {
        let Some(snapshot) = self.snapshot_dir(kind, repo) else { return false };
        let (Some(hash), Some(repo_dir)) = (snapshot.file_name(), snapshot.parent().and_then(Path::parent))
        else {
            return false;
        };
        repo_dir.join(".no_exist").join(hash).join(file).exists()
    }

    /// The error for files that are not cached while offline: which id, which file, how to get
    /// them (`download` lists the files to fetch; empty means the whole repository).
    pub fn offline_missing(&self, kind: RepoKind, repo: &RepoId, what: &str, download: &[&str]) -> HubError {
        let cache = self.cache_dir.as_ref().map_or("(none)".into(), |c| c.display().to_string());
        let nothing = if self.snapshot_dir(kind, repo).is_some() {
            ""
        } else {
            " (nothing of this repository is cached)"
        };
        let revision = repo.revision.as_ref().map(|r| format!(" --revision {r}")).unwrap_or_default();
        let repo_type = if kind == RepoKind::Dataset { " --repo-type dataset" } else { "" };
        let files = if download.is_empty() { String::new() } else { format!(" {}", download.join(" ")) };
        Self::error(
            kind,
            repo,
            format!(
                "{what} is not in the Hugging Face cache {cache}{nothing}, and HF_HUB_OFFLINE is set, so nothing is \
                 downloaded. Download it once where there is network: `huggingface-cli download{repo_type} {}{revision}{files}` \
                 (into this cache, or point HF_HUB_CACHE at the one it went to), or unset HF_HUB_OFFLINE",
                repo.name,
            ),
        )
    }

    fn api(&self, kind: RepoKind, repo: &RepoId) -> Result<hf_hub::api::sync::ApiRepo> {
        use hf_hub::api::sync::ApiBuilder;
        let cache = self.cache(kind, repo)?;
        // A progress bar on a terminal only: in logs and tests it would be noise.
        let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let mut builder = ApiBuilder::from_cache(hf_hub::Cache::new(cache.to_path_buf()))
            .with_progress(progress)
            .with_retries(DOWNLOAD_RETRIES);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
        }
        if let Some(token) = &self.token {
            builder = builder.with_token(Some(token.clone()));
        }
        let api = builder
            .build()
            .map_err(|e| Self::error(kind, repo, format!("cannot start the hub client: {e}")))?;
        let repo_type = match kind {
            RepoKind::Model => hf_hub::RepoType::Model,
            RepoKind::Dataset => hf_hub::RepoType::Dataset,
        };
        Ok(api.repo(hf_hub::Repo::with_revision(repo.name.clone(), repo_type, repo.revision().to_string())))
    }

    /// The error for a failed request about `what` (a file, or the file list).
    fn request_error(
        &self,
        kind: RepoKind,
        repo: &RepoId,
        what: &str,
        e: hf_hub::api::sync::ApiError,
    ) -> HubError {
        use hf_hub::api::sync::ApiError;
        let repo_type = if kind == RepoKind::Dataset { " --repo-type dataset" } else { "" };
        let message = match e {
            ApiError::RequestError(e) => match *e {
                ureq::Error::Status(code @ (401 | 403), _) => format!(
                    "the hub refused {what} (HTTP {code}): the repository does not exist, or it is private or \
                     gated; check the id, or log in (`huggingface-cli login`, or set HF_TOKEN)"
                ),
                ureq::Error::Status(404, _) => format!("the hub has no {what} (HTTP 404): check the id and the revision"),
                other => format!(
                    "downloading {what} failed: {other}. Without network, download it elsewhere \
                     (`huggingface-cli download{repo_type} {}`) into the cache and set HF_HUB_OFFLINE=1",
                    repo.name
                ),
            },
            ApiError::TooManyRetries(e) => format!(
                "downloading {what} failed {} times in a row ({e}); the part that arrived stays in the \
                 cache, so running the command again resumes it",
                DOWNLOAD_RETRIES + 2
            ),
            e => format!("downloading {what} failed: {e}"),
        };
        Self::error(kind, repo, message)
    }

    /// Downloads `file` of `repo` into the cache; `Ok(None)` when the repository has no such
    /// file (HTTP 404).
    pub fn download(&self, kind: RepoKind, repo: &RepoId, file: &str) -> Result<Option<PathBuf>> {
        use hf_hub::api::sync::ApiError;
        let handle = self.api(kind, repo)?;
        tracing::info!("downloading {file} of {repo} into {}", self.cache(kind, repo)?.display());
        match handle.download(file) {
            Ok(path) => Ok(Some(path)),
            Err(ApiError::RequestError(e)) if matches!(*e, ureq::Error::Status(404, _)) => Ok(None),
            Err(e) => Err(self.request_error(kind, repo, &format!("`{file}`"), e)),
        }
    }

    /// `file` of `repo`: from the cache, else downloaded (unless offline). `Ok(None)` when the
    /// repository has no such file.
    pub fn file(&self, kind: RepoKind, repo: &RepoId, file: &str) -> Result<Option<PathBuf>> {
        if let Some(path) = self.cached_file(kind, repo, file) {
            return Ok(Some(path));
        }
        if self.known_missing(kind, repo, file) {
            return Ok(None);
        }
        if self.offline {
            return Err(self.offline_missing(kind, repo, &format!("`{file}`"), &[file]));
        }
        self.download(kind, repo, file)
    }

    /// The files of `repo`'s revision as the hub lists them (paths inside the repository); a
    /// request to the hub, so online only.
    pub fn list_files(&self, kind: RepoKind, repo: &RepoId) -> Result<Vec<String>> {
        if self.offline {
            return Err(self.offline_missing(kind, repo, "the file list", &[]));
        }
        let info =
            self.api(kind, repo)?.info().map_err(|e| self.request_error(kind, repo, "the file list", e))?;
        Ok(info.siblings.into_iter().map(|s| s.rfilename).collect())
    }

    /// The files of the cached snapshot of `repo` (paths inside the repository, sorted), or
    /// `None` when the cache has no snapshot of its revision.
    pub fn cached_files(&self, kind: RepoKind, repo: &RepoId) -> Option<Vec<String>> {
        let root = self.snapshot_dir(kind, repo)?;
        let mut found = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                // `is_dir` / `is_file` follow the snapshot's symbolic links into blobs/.
                if path.is_dir() {
                    stack.push(path);
                } else if path.is_file() {
                    if let Ok(relative) = path.strip_prefix(&root) {
                        let parts: Vec<String> =
                            relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
                        found.push(parts.join("/"));
                    }
                }
            }
        }
        found.sort();
        Some(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_and_paths() {
        let id = RepoId::parse("facebook/vit-mae-base").unwrap();
        assert_eq!((id.name.as_str(), id.revision()), ("facebook/vit-mae-base", "main"));
        assert_eq!(id.cache_folder(), "models--facebook--vit-mae-base");
        assert_eq!(id.cache_folder_of(RepoKind::Dataset), "datasets--facebook--vit-mae-base");
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

    #[test]
    fn cache_dir_precedence() {
        fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        }
        let all = [("HF_HUB_CACHE", "/a"), ("HF_HOME", "/b"), ("XDG_CACHE_HOME", "/x"), ("HOME", "/h")];
        assert_eq!(cache_dir_from(env(&all)), Some(PathBuf::from("/a")));
        assert_eq!(cache_dir_from(env(&all[1..])), Some(PathBuf::from("/b/hub")));
        assert_eq!(cache_dir_from(env(&all[2..])), Some(PathBuf::from("/x/huggingface/hub")));
        assert_eq!(cache_dir_from(env(&all[3..])), Some(PathBuf::from("/h/.cache/huggingface/hub")));
        assert_eq!(cache_dir_from(env(&[])), None);
    }

    #[test]
    fn offline_list_is_an_error_naming_the_download() {
        let dir = tempfile::tempdir().unwrap();
        let hub = Hub::new(dir.path()).with_offline(true);
        let repo = RepoId::parse("ylecun/mnist").unwrap();
        let e = hub.list_files(RepoKind::Dataset, &repo).unwrap_err().to_string();
        assert!(e.contains("huggingface-cli download --repo-type dataset ylecun/mnist"), "{e}");
        assert_eq!(hub.cached_files(RepoKind::Dataset, &repo), None);
    }
}
