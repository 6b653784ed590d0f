//! What every command that trains (pretrain, linear-probe, finetune) resolves alike: how long a run
//! is (one rule for `--epochs` and `--steps`), how many steps that makes, and the checks the
//! recipe's numbers pass, for a new run's flags and a resumed run's `config.toml` alike.

use anyhow::{bail, Result};

/// How long a run trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunLength {
    /// Passes over the training data.
    Epochs(usize),
    /// Optimizer steps.
    Steps(usize),
}

/// `epochs` and `steps` as one source of settings (the command line, a config file) gives them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GivenLength {
    pub epochs: Option<usize>,
    pub steps: Option<usize>,
}

/// The one rule for how long a run trains, for every command:
/// 1. `--epochs` and `--steps` both on the command line: an error naming both;
/// 2. one of them on the command line: that one (it replaces whatever the config file says);
/// 3. else the config file's `epochs` or `steps` (both there: an error naming the file);
/// 4. else the command's `default`.
///
/// A length of 0 is an error wherever it comes from.
pub fn run_length(
    command_line: GivenLength,
    config_file: Option<(&str, GivenLength)>,
    default: RunLength,
) -> Result<RunLength> {
    if let (Some(epochs), Some(steps)) = (command_line.epochs, command_line.steps) {
        bail!(
            "--epochs {epochs} and --steps {steps}: give one or the other (a run's length is counted in epochs \
             or in steps)"
        );
    }
    let length = match (command_line.length(), config_file) {
        (Some(given), _) => given,
        (None, Some((file, GivenLength { epochs: Some(e), steps: Some(s) }))) => bail!(
            "{file} sets both epochs = {e} and steps = {s}: keep one (or give --epochs or --steps, which \
             replaces both)"
        ),
        (None, Some((_, given))) => given.length().unwrap_or(default),
        (None, None) => default,
    };
    if let RunLength::Epochs(0) = length {
        bail!("--epochs: must be at least 1");
    }
    if let RunLength::Steps(0) = length {
        bail!("--steps: must be at least 1");
    }
    Ok(length)
}

impl GivenLength {
    /// The length this source gives, when it gives exactly one (see [`run_length`] for two).
    fn length(self) -> Option<RunLength> {
        match (self.epochs, self.steps) {
            (Some(e), None) => Some(RunLength::Epochs(e)),
            (None, Some(s)) => Some(RunLength::Steps(s)),
            _ => None,
        }
    }
}

impl RunLength {
    /// The length a resolved run config (`config.toml` of a run folder) holds: exactly one of
    /// `epochs` and `steps`, as every run writes it.
    pub fn resolved(epochs: Option<usize>, steps: Option<usize>) -> Result<Self> {
        let length = match (epochs, steps) {
            (Some(e), None) => RunLength::Epochs(e),
            (None, Some(s)) => RunLength::Steps(s),
            (e, s) => {
                bail!("a run's settings need exactly one of epochs and steps (epochs = {e:?}, steps = {s:?})")
            }
        };
        run_length(GivenLength::default(), None, length)
    }

    /// What a resolved config stores: `(epochs, steps)`, one of them set.
    pub fn to_fields(self) -> (Option<usize>, Option<usize>) {
        match self {
            RunLength::Epochs(e) => (Some(e), None),
            RunLength::Steps(s) => (None, Some(s)),
        }
    }

    /// The run's optimizer steps with `steps_per_epoch`.
    pub fn total_steps(self, steps_per_epoch: usize) -> Result<usize> {
        match self {
            RunLength::Steps(s) => Ok(s),
            RunLength::Epochs(e) => match e.checked_mul(steps_per_epoch) {
                Some(total) => Ok(total),
                None => {
                    bail!("--epochs {e}: {e} x {steps_per_epoch} steps per epoch is too many steps to count")
                }
            },
        }
    }
}

/// Warm-up steps for `warmup_epochs`: a fraction when the epochs are (as in the paper's
/// schedule, which works in fractional epochs).
pub fn warmup_steps(warmup_epochs: f64, steps_per_epoch: usize) -> f64 {
    warmup_epochs * steps_per_epoch as f64
}

/// The numbers of a resolved recipe, checked alike for every command; an error names the flag.
pub struct RecipeNumbers {
    pub batch_size: usize,
    /// Linear probe and fine-tuning normalise over the batch: they need 2.
    pub min_batch_size: usize,
    pub accum: usize,
    pub base_lr: f64,
    pub min_lr: f64,
    pub weight_decay: f64,
    pub warmup_epochs: Option<f64>,
    pub clip_grad: Option<f64>,
}

impl RecipeNumbers {
    pub fn check(&self) -> Result<()> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        let at_least_0 = |v: f64| v.is_finite() && v >= 0.0;
        let checks = [
            (
                "--batch-size",
                self.batch_size >= self.min_batch_size,
                format!("must be at least {}", self.min_batch_size),
            ),
            ("--accum", self.accum >= 1, "must be at least 1".to_string()),
            ("--base-lr", positive(self.base_lr), format!("{} must be a positive number", self.base_lr)),
            ("--min-lr", at_least_0(self.min_lr), format!("{} must be >= 0", self.min_lr)),
            ("--weight-decay", at_least_0(self.weight_decay), format!("{} must be >= 0", self.weight_decay)),
            (
                "--warmup-epochs",
                self.warmup_epochs.is_none_or(at_least_0),
                format!("{} must be >= 0", self.warmup_epochs.unwrap_or_default()),
            ),
            (
                "--clip-grad",
                self.clip_grad.is_none_or(positive),
                format!("{} must be a positive number", self.clip_grad.unwrap_or_default()),
            ),
        ];
        match checks.into_iter().find(|(_, ok, _)| !ok) {
            Some((flag, _, why)) => bail!("{flag}: {why}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: RunLength = RunLength::Steps(600);

    fn given(epochs: Option<usize>, steps: Option<usize>) -> GivenLength {
        GivenLength { epochs, steps }
    }

    #[test]
    fn the_command_line_beats_the_config_file_which_beats_the_default() {
        let none = GivenLength::default();
        assert_eq!(run_length(none, None, DEFAULT).unwrap(), DEFAULT);
        assert_eq!(run_length(none, Some(("f.toml", none)), DEFAULT).unwrap(), DEFAULT);
        let file_epochs = Some(("f.toml", given(Some(3), None)));
        assert_eq!(run_length(none, file_epochs, DEFAULT).unwrap(), RunLength::Epochs(3));
        // Steps on the command line replace the file's epochs, and the other way round.
        assert_eq!(run_length(given(None, Some(7)), file_epochs, DEFAULT).unwrap(), RunLength::Steps(7));
        let file_steps = Some(("f.toml", given(None, Some(9))));
        assert_eq!(run_length(given(Some(2), None), file_steps, DEFAULT).unwrap(), RunLength::Epochs(2));
    }

    #[test]
    fn both_in_one_place_or_a_zero_is_an_error_naming_where() {
        let err = run_length(given(Some(2), Some(7)), None, DEFAULT).unwrap_err().to_string();
        assert!(err.contains("--epochs 2") && err.contains("--steps 7"), "{err}");
        let both = Some(("f.toml", given(Some(2), Some(7))));
        let err = run_length(GivenLength::default(), both, DEFAULT).unwrap_err().to_string();
        assert!(err.contains("f.toml") && err.contains("epochs") && err.contains("steps"), "{err}");
        assert_eq!(run_length(given(Some(2), None), both, DEFAULT).unwrap(), RunLength::Epochs(2));
        let err = run_length(given(None, Some(0)), None, DEFAULT).unwrap_err().to_string();
        assert!(err.contains("--steps: must be at least 1"), "{err}");
        assert!(RunLength::resolved(Some(1), Some(1)).is_err() && RunLength::resolved(None, None).is_err());
    }

    #[test]
    fn epochs_count_steps_without_overflowing() {
        assert_eq!(RunLength::Epochs(3).total_steps(10).unwrap(), 30);
        assert_eq!(RunLength::Steps(7).total_steps(10).unwrap(), 7);
        let err = RunLength::Epochs(usize::MAX / 2).total_steps(3).unwrap_err().to_string();
        assert!(err.contains("--epochs"), "{err}");
    }
}
