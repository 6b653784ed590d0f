use std::path::PathBuf;

/// Everything that can go wrong building, loading or running a model, with the file, tensor or
/// value at fault.
#[derive(Debug, thiserror::Error)]
pub enum MaeError {
    // The OS error is part of the message, not a `source`: reporters that print the chain
    // (anyhow's `{:#}`) would print it twice.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path} is not a valid {what}: {message}")]
    Format { path: PathBuf, what: &'static str, message: String },
    #[error("unknown preset `{name}`; available presets: {}", available.join(", "))]
    UnknownPreset { name: String, available: Vec<String> },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{origin}: tensor `{name}` is missing")]
    MissingTensor { origin: String, name: String },
    #[error("{origin}: tensor `{name}` has shape {found:?}, but the configuration needs {expected:?}")]
    ShapeMismatch { origin: String, name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("{origin}: {message}")]
    Weights { origin: String, message: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = MaeError> = std::result::Result<T, E>;

impl MaeError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), error: source }
    }
}
