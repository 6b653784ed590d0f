//! Textual data specs (`mnist:/data/mnist@test`) and `open`, the one entry point from a spec to
//! a dataset.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use crate::cifar::Cifar10;
use crate::dataset::{Dataset, DecodeLimits};
use crate::error::{DataError, Result};
use crate::folder::ImageFolder;
use crate::list::ImageList;
use crate::mnist::Mnist;
use crate::synthetic::SyntheticShapes;
use crate::wds::{WebDataset, DEFAULT_SHUFFLE_BUFFER};

/// Which half of a dataset that ships a train/test split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Split {
    #[default]
    Train,
    Test,
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Test => "test",
        })
    }
}

/// Default number of synthetic images when the spec gives none.
pub const SYNTHETIC_DEFAULT_COUNT: usize = 10_000;

/// A parsed data spec. `Display` writes it back in the textual form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSpec {
    /// `folder:PATH`
    Folder { path: PathBuf },
    /// `cifar10:PATH[@train|test]`
    Cifar10 { path: PathBuf, split: Split },
    /// `mnist:PATH[@train|test]`
    Mnist { path: PathBuf, split: Split },
    /// `hf:OWNER/NAME[/CONFIG][@SPLIT]`; the split is any name the repository uses (default
    /// `train`).
    Hf { repo: String, config: Option<String>, split: String },
    /// `synthetic[:N][@train|test]`
    Synthetic { count: usize, split: Split },
    /// `list:FILE`: a `.txt` of image paths or a `.csv` of `path,label` rows.
    List { path: PathBuf },
    /// `wds:PATTERN[#shuffle=N]`: WebDataset shards; `shuffle_buffer` overrides
    /// [`OpenOptions::shuffle_buffer`].
    Wds { pattern: String, shuffle_buffer: Option<usize> },
    /// `dicom:PATH`: the frames of the DICOM files under a folder (labels from first-level
    /// sub-folders, as `folder:`), or of one file; needs the `dicom` feature to open.
    Dicom { path: PathBuf },
}

fn spec_error(input: &str, reason: impl Into<String>) -> DataError {
    DataError::Spec { input: input.into(), reason: reason.into() }
}

/// Splits `rest` into (body, split) at a final `@train` or `@test`; any other `@` stays in the
/// body, so paths containing `@` still work.
fn split_suffix(rest: &str) -> (&str, Split) {
    if let Some(body) = rest.strip_suffix("@train") {
        (body, Split::Train)
    } else if let Some(body) = rest.strip_suffix("@test") {
        (body, Split::Test)
    } else {
        (rest, Split::Train)
    }
}

fn non_empty_path(input: &str, body: &str) -> Result<PathBuf> {
    if body.is_empty() {
        return Err(spec_error(input, "the path is empty"));
    }
    Ok(PathBuf::from(body))
}

impl DataSpec {
    pub fn parse(input: &str) -> Result<Self> {
        let text = input.trim();
        // `synthetic` needs no location, so it may go straight to `@`: `synthetic@test`.
        if let Some(rest) = text.strip_prefix("synthetic") {
            if rest.is_empty() || rest.starts_with('@') {
                return parse_synthetic(input, rest);
            }
        }
        let (kind, rest) = match text.split_once(':') {
            Some((kind, rest)) => (kind, Some(rest)),
            None => (text, None),
        };
        match (kind, rest) {
            ("folder", Some(path)) => Ok(DataSpec::Folder { path: non_empty_path(input, path)? }),
            ("cifar10", Some(rest)) => {
                let (path, split) = split_suffix(rest);
                Ok(DataSpec::Cifar10 { path: non_empty_path(input, path)?, split })
            }
            ("mnist", Some(rest)) => {
                let (path, split) = split_suffix(rest);
                Ok(DataSpec::Mnist { path: non_empty_path(input, path)?, split })
            }
            ("hf", Some(rest)) => parse_hf(input, rest),
            ("list", Some(path)) => Ok(DataSpec::List { path: non_empty_path(input, path)? }),
            ("wds", Some(rest)) => parse_wds(input, rest),
            ("dicom", Some(path)) => Ok(DataSpec::Dicom { path: non_empty_path(input, path)? }),
            ("synthetic", rest) => parse_synthetic(input, rest.unwrap_or("")),
            ("folder" | "cifar10" | "mnist" | "hf" | "list" | "wds" | "dicom", None) => {
                Err(spec_error(input, format!("`{kind}` needs a `:` and a location")))
            }
            _ => Err(spec_error(input, format!("unknown kind `{kind}`"))),
        }
    }
}

fn parse_hf(input: &str, rest: &str) -> Result<DataSpec> {
    let (repo_part, split) = match rest.rsplit_once('@') {
        Some((repo, split)) => (repo, split.to_string()),
        None => (rest, "train".to_string()),
    };
    let valid = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !valid(&split) {
        return Err(spec_error(input, format!("split `{split}` must be a non-empty name of [A-Za-z0-9-_.]")));
    }
    let parts: Vec<&str> = repo_part.split('/').collect();
    match parts.as_slice() {
        [owner, name] | [owner, name, _] if valid(owner) && valid(name) => {
            let config = parts.get(2).map(|c| c.to_string());
            if config.as_deref().is_some_and(|c| !valid(c)) {
                return Err(spec_error(input, "the config must be a name of [A-Za-z0-9-_.]"));
            }
            Ok(DataSpec::Hf { repo: format!("{owner}/{name}"), config, split })
        }
        _ => Err(spec_error(input, format!("`{repo_part}` is not OWNER/NAME or OWNER/NAME/CONFIG"))),
    }
}

/// `PATTERN[#shuffle=N]`; the pattern's brace ranges are checked here (not its files), so a
/// malformed range is a spec error before anything is opened.
fn parse_wds(input: &str, rest: &str) -> Result<DataSpec> {
    let (pattern, shuffle_buffer) = match rest.rsplit_once("#shuffle=") {
        Some((pattern, n)) => match n.parse::<usize>() {
            Ok(n) if n > 0 => (pattern, Some(n)),
            _ => {
                return Err(spec_error(
                    input,
                    format!("`#shuffle={n}`: the shuffle buffer is a positive number of samples"),
                ))
            }
        },
        None => (rest, None),
    };
    if pattern.is_empty() {
        return Err(spec_error(input, "the path is empty"));
    }
    crate::shard_paths::brace_count(pattern).map_err(|reason| spec_error(input, reason))?;
    Ok(DataSpec::Wds { pattern: pattern.into(), shuffle_buffer })
}

fn parse_synthetic(input: &str, rest: &str) -> Result<DataSpec> {
    let (count, split) = split_suffix(rest);
    // `synthetic@test` has no count: the part before `@` is then empty.
    let count = if count.is_empty() {
        SYNTHETIC_DEFAULT_COUNT
    } else {
        match count.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => return Err(spec_error(input, format!("`{count}` is not a positive number of images"))),
        }
    };
    Ok(DataSpec::Synthetic { count, split })
}

impl FromStr for DataSpec {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        DataSpec::parse(s)
    }
}

impl fmt::Display for DataSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSpec::Folder { path } => write!(f, "folder:{}", path.display()),
            DataSpec::Cifar10 { path, split } => write!(f, "cifar10:{}@{split}", path.display()),
            DataSpec::Mnist { path, split } => write!(f, "mnist:{}@{split}", path.display()),
            DataSpec::Hf { repo, config: Some(c), split } => write!(f, "hf:{repo}/{c}@{split}"),
            DataSpec::Hf { repo, config: None, split } => write!(f, "hf:{repo}@{split}"),
            DataSpec::Synthetic { count, split } => write!(f, "synthetic:{count}@{split}"),
            DataSpec::List { path } => write!(f, "list:{}", path.display()),
            DataSpec::Wds { pattern, shuffle_buffer: None } => write!(f, "wds:{pattern}"),
            DataSpec::Wds { pattern, shuffle_buffer: Some(n) } => write!(f, "wds:{pattern}#shuffle={n}"),
            DataSpec::Dicom { path } => write!(f, "dicom:{}", path.display()),
        }
    }
}

/// Options of [`open`] that are not part of a dataset's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenOptions {
    /// Decoder caps for file-backed images (folders, hub datasets).
    pub limits: DecodeLimits,
    /// Side of the synthetic images, in pixels (default 64; draw at the training size to skip a
    /// resize, or larger to let the crop zoom in on detail).
    pub synthetic_size: u32,
    /// Seed of the synthetic images; a different seed is a different dataset (default 0).
    pub synthetic_seed: u64,
    /// The Hugging Face hub cache to read from; `None` resolves `$HF_HUB_CACHE`, then
    /// `$HF_HOME/hub`, then `~/.cache/huggingface/hub`.
    pub hf_cache: Option<PathBuf>,
    /// Whether hub datasets may be downloaded; `None` follows `HF_HUB_OFFLINE`.
    pub hf_offline: Option<bool>,
    /// The hub's address; `None` follows `HF_ENDPOINT`, else huggingface.co.
    pub hf_endpoint: Option<String>,
    /// Samples in the shuffle buffer of WebDataset shards (`wds:`) when the spec gives none
    /// (default [`DEFAULT_SHUFFLE_BUFFER`]); see docs/data.md.
    pub shuffle_buffer: usize,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            limits: DecodeLimits::default(),
            synthetic_size: 64,
            synthetic_seed: 0,
            hf_cache: None,
            hf_offline: None,
            hf_endpoint: None,
            shuffle_buffer: DEFAULT_SHUFFLE_BUFFER,
        }
    }
}

#[cfg(feature = "hf")]
impl OpenOptions {
    /// The hub that hub datasets come from: the environment's (`mae_hub::Hub::from_env`), with
    /// these options' cache, offline and endpoint settings over it.
    pub fn hub(&self) -> mae_hub::Hub {
        let mut hub = mae_hub::Hub::from_env();
        if let Some(cache) = &self.hf_cache {
            hub = hub.with_cache_dir(cache.clone());
        }
        if let Some(offline) = self.hf_offline {
            hub = hub.with_offline(offline);
        }
        if let Some(endpoint) = &self.hf_endpoint {
            hub = hub.with_endpoint(endpoint.clone());
        }
        hub
    }
}

/// Opens the dataset `spec` names. Structural problems (missing path, wrong format, no samples)
/// are errors here; a bad individual image only shows when it is read.
pub fn open(spec: &DataSpec, options: &OpenOptions) -> Result<Arc<dyn Dataset>> {
    let dataset: Arc<dyn Dataset> = match spec {
        DataSpec::Folder { path } => Arc::new(ImageFolder::open(path, options.limits)?),
        DataSpec::Cifar10 { path, split } => Arc::new(Cifar10::open(path, *split)?),
        DataSpec::Mnist { path, split } => Arc::new(Mnist::open(path, *split)?),
        DataSpec::List { path } => Arc::new(ImageList::open(path, options.limits)?),
        DataSpec::Wds { pattern, shuffle_buffer } => {
            Arc::new(WebDataset::open(pattern, shuffle_buffer.unwrap_or(options.shuffle_buffer), options.limits)?)
        }
        DataSpec::Synthetic { count, split } => {
            Arc::new(SyntheticShapes::new(*count, options.synthetic_size, options.synthetic_seed, *split)?)
        }
        #[cfg(feature = "dicom")]
        DataSpec::Dicom { path } => Arc::new(crate::dicom::DicomDataset::open(path, options.limits)?),
        #[cfg(not(feature = "dicom"))]
        DataSpec::Dicom { .. } => {
            return Err(DataError::Config(
                "`dicom:` specs need the `dicom` feature of mae-data, which this build lacks; rebuild with \
                 it (the `mae` binary: `cargo build --release -p mae-cli --features dicom`; library users \
                 enable `mae-data/dicom`)"
                    .into(),
            ))
        }
        #[cfg(feature = "hf")]
        DataSpec::Hf { repo, config, split } => {
            Arc::new(crate::hf::HfDataset::open(repo, config.as_deref(), split, options)?)
        }
        #[cfg(not(feature = "hf"))]
        DataSpec::Hf { repo, .. } => return Err(DataError::Hub {
            repo: repo.clone(),
            message:
                "this build has no Hugging Face dataset support; rebuild with the `hf` feature of mae-data \
                          (the `mae` binary has it: `cargo build --release -p mae-cli`; library users enable `mae-data/hf`), or download the dataset \
                          elsewhere and point a folder:, mnist: or cifar10: spec at it"
                    .into(),
        }),
    };
    Ok(dataset)
}
