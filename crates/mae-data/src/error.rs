use std::path::PathBuf;

/// The accepted forms of a data spec, printed with every spec error so the user sees the fix.
pub const ACCEPTED_SPECS: &str =
    "  folder:PATH                  a directory tree of images (labels from first-level sub-folders)
  cifar10:PATH[@train|test]    CIFAR-10 binary batches (data_batch_1..5.bin, test_batch.bin)
  mnist:PATH[@train|test]      MNIST IDX files (train-*/t10k-*, plain or .gz)
  list:FILE                    images listed in FILE: .txt one path a line, .csv path,label rows
  dicom:PATH                   DICOM files under a folder (or one file), a sample per frame (feature `dicom`)
  wds:PATH[#shuffle=N]         WebDataset .tar shards; PATH may hold {000..099} ranges and * in the file name
  hf:OWNER/NAME[/CONFIG][@SPLIT]  a Hugging Face hub image dataset from the local hub cache (feature `hf`)
  synthetic[:N][@train|test]   N procedurally drawn shape images (default 10000)";

/// Everything that can go wrong opening a dataset, decoding a sample or running the loader, with
/// the file, sample or option at fault.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    // The OS error is part of the message, not a `source`: reporters that print the chain
    // (anyhow's `{:#}`) would print it twice.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path} does not exist (expected {expected})")]
    NotFound { path: PathBuf, expected: String },
    #[error("{path} is not a valid {what}: {message}")]
    Format { path: PathBuf, what: &'static str, message: String },
    #[error("{path}: no samples found (expected {expected})")]
    Empty { path: PathBuf, expected: String },
    /// A sample whose bytes are not a decodable image (corrupt, truncated, not an image).
    #[error("{origin}: cannot decode image: {message}")]
    Decode { origin: String, message: String },
    /// A sample whose header claims more pixels than `DecodeLimits::max_pixels` (a decompression
    /// bomb, or an image far larger than any training resolution).
    #[error(
        "{origin}: image is {width}x{height} = {} pixels, over the limit of {limit} \
         (DecodeLimits::max_pixels)",
        *width as u64 * *height as u64
    )]
    TooLarge { origin: String, width: u32, height: u32, limit: u64 },
    /// A library we call panicked on this sample; caught so that one bad file cannot take the
    /// training run down.
    #[error("{origin}: panicked while loading: {message}")]
    Panicked { origin: String, message: String },
    /// A transform could not process a sample (e.g. a degenerate image size).
    #[error("transform: {0}")]
    Transform(String),
    #[error("invalid data spec `{input}`: {reason}\naccepted forms:\n{ACCEPTED_SPECS}")]
    Spec { input: String, reason: String },
    #[error("sample index {index} is out of range for {dataset} ({len} samples)")]
    OutOfRange { index: usize, len: usize, dataset: String },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("Hugging Face dataset `{repo}`: {message}")]
    Hub { repo: String, message: String },
    #[error("data loader: {0}")]
    Loader(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), error: source }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, what: &'static str, message: impl Into<String>) -> Self {
        Self::Format { path: path.into(), what, message: message.into() }
    }

    pub(crate) fn decode(origin: impl Into<String>, message: impl ToString) -> Self {
        Self::Decode { origin: origin.into(), message: message.to_string() }
    }

    /// Whether this error is about one sample (skippable under the default policy) rather than
    /// the dataset, the configuration or the loader itself.
    pub fn is_sample_error(&self) -> bool {
        matches!(
            self,
            Self::Io { .. }
                | Self::Decode { .. }
                | Self::TooLarge { .. }
                | Self::Panicked { .. }
                | Self::Transform(_)
        )
    }
}
