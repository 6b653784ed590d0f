use std::path::PathBuf;

/// What can stop training, with the file, step or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    // The OS error is part of the message, not a `source`: reporters that print the chain
    // (anyhow's `{:#}`) would print it twice.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error(
        "stopping: {count} steps in a row had a non-finite loss or gradient (last at step {step}); \
         lower the learning rate, enable gradient clipping, or check the data"
    )]
    NonFinite { count: usize, step: usize },
    #[error("invalid training configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Model(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

impl TrainError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), error: source }
    }

    pub fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Checkpoint { path: path.into(), message: message.into() }
    }
}
