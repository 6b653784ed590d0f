//! The checks `mae` makes of what a user types before it reads any data or weights, callable
//! without running a command: a whole command line, or a config file. The fuzzer
//! (`crates/mae-fuzz`, targets `cli` and `toml-config`) feeds them arbitrary input; every
//! answer must be `Ok` or an error, never a panic.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Parser;

use crate::classify::settings::{Settings as ClassifySettings, FINETUNE, PROBE};
use crate::settings::{Pretrain, PretrainArgs};
use crate::{Cli, Command};

/// Parses `argv` (with the program name first) as `mae` does, then resolves the settings of the
/// command it names as the command would before it starts: flags merged with `--config`,
/// defaults filled in, values validated, resumed runs' configs read. Nothing is trained,
/// written or downloaded; a new run's folder is neither made nor looked at.
pub fn command_line<I, T>(argv: I) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::try_parse_from(argv)?;
    match cli.command {
        Command::Pretrain(args) => pretrain(&args),
        Command::LinearProbe(args) => classify(PROBE, &args.classify, None),
        Command::Finetune(args) => classify(FINETUNE, &args.classify, Some(&args)),
        Command::Knn(args) => args.check(),
        Command::Bench(args) => args.check(),
        Command::Stats(args) => args.check(),
        Command::Reconstruct(_) | Command::Embed(_) | Command::Info(_) | Command::Export(_) => Ok(()),
    }
}

fn pretrain(args: &PretrainArgs) -> Result<()> {
    match &args.resume {
        Some(dir) => {
            let mut cfg = Pretrain::from_run_dir(dir)?;
            cfg.resume_with(args)
        }
        None => args.resolve_new_run(|| PathBuf::from("runs/check")).map(drop),
    }
}

fn classify(
    command: &str,
    args: &crate::classify::ClassifyArgs,
    finetune: Option<&crate::classify::FinetuneArgs>,
) -> Result<()> {
    match &args.resume {
        Some(dir) => {
            crate::classify::settings::refuse_recipe_flags(args, finetune)?;
            ClassifySettings::from_run_dir(dir, command).map(drop)
        }
        None => ClassifySettings::resolve(command, args, finetune).map(drop),
    }
}

/// The `config.toml` a new run of the command line `argv` would write into its folder
/// (`pretrain`, `linear-probe` and `finetune`; other commands have no run folder).
pub fn resolved_config<I, T>(argv: I) -> Result<String>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::try_parse_from(argv)?;
    let classify = |command, args, finetune| -> Result<String> {
        let settings = ClassifySettings::resolve(command, args, finetune)?;
        Ok(toml::to_string_pretty(&settings)?)
    };
    match cli.command {
        Command::Pretrain(args) => args.resolve_new_run(|| PathBuf::from("runs/check"))?.0.to_toml(),
        Command::LinearProbe(args) => classify(PROBE, &args.classify, None),
        Command::Finetune(args) => classify(FINETUNE, &args.classify, Some(&args)),
        _ => anyhow::bail!("only pretrain, linear-probe and finetune runs have a config.toml"),
    }
}

/// Reads `path` as `mae pretrain --config PATH` does and resolves a new run from it alone.
pub fn pretrain_config_file(path: &Path) -> Result<()> {
    let args = PretrainArgs { config: Some(path.to_path_buf()), ..PretrainArgs::default() };
    pretrain(&args)
}

/// Reads the `config.toml` of the run folder `dir` as `--resume DIR` of each command does
/// (`mae pretrain`, `mae linear-probe`, `mae finetune`): `Ok` when any of them accepts it.
pub fn run_config(dir: &Path) -> Result<()> {
    let pretrain = Pretrain::from_run_dir(dir).map(drop);
    let probe = ClassifySettings::from_run_dir(dir, PROBE).map(drop);
    let finetune = ClassifySettings::from_run_dir(dir, FINETUNE).map(drop);
    pretrain.or(probe).or(finetune)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_resolve_or_fail_with_the_flag_named() {
        command_line(["mae", "pretrain", "--steps", "3"]).unwrap();
        command_line(["mae", "knn", "--preset", "mae-vit-micro-patch4-32", "--train", "x", "--test", "y"])
            .unwrap();
        let err = command_line(["mae", "knn", "--k", "0", "--preset", "p", "--train", "x", "--test", "y"]);
        assert!(format!("{:#}", err.unwrap_err()).contains("--k 0"));
        let err = command_line(["mae", "pretrain", "--preset", "no-such-preset"]).unwrap_err();
        assert!(format!("{err:#}").contains("no-such-preset"), "{err:#}");
        let err = command_line(["mae", "bench", "--steps", "0"]).unwrap_err();
        assert!(format!("{err:#}").contains("--steps"), "{err:#}");
        assert!(command_line(["mae", "no-such-command"]).is_err());
        // Found by mae-fuzz: the channel count sized the default statistics before it was checked.
        let err = command_line(["mae", "pretrain", "--in-channels", "18446744073709551615"]).unwrap_err();
        assert!(format!("{err:#}").contains("1 to 256 channels"), "{err:#}");
    }

    #[test]
    fn config_files_are_read_as_pretrain_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "batch_size = 8\nsteps = 3\n").unwrap();
        pretrain_config_file(&path).unwrap();
        std::fs::write(&path, "batch_sise = 8\n").unwrap();
        let err = pretrain_config_file(&path).unwrap_err();
        assert!(format!("{err:#}").contains("unknown setting `batch_sise`"), "{err:#}");
        assert!(run_config(dir.path()).is_err(), "a folder without config.toml is no run");
        for argv in [
            &["mae", "pretrain", "--steps", "3"][..],
            &["mae", "finetune", "--preset", "mae-vit-micro-patch4-32", "--train", "x", "--test", "y"],
        ] {
            std::fs::write(dir.path().join("config.toml"), resolved_config(argv).unwrap()).unwrap();
            run_config(dir.path()).unwrap();
        }
    }
}
