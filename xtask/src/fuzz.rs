//! `cargo xtask fuzz`: the long fuzz runs of `crates/mae-fuzz` (docs/robustness.md).

use crate::args::{Args, Parsed};
use crate::util::{self, Result};

pub const HELP: &str = "\
cargo xtask fuzz: fuzz the readers of untrusted input for a while (crates/mae-fuzz)

USAGE:
    cargo xtask fuzz [--target T] [--seconds N] [--seed S]

Runs, in the workspace root:
    cargo run --release -p mae-fuzz -- --target T --seconds N --seed S

A failing input is saved under crates/mae-fuzz/regressions/<target>/ and the
exit status is 1; `cargo test -p mae-fuzz` replays every saved input.

OPTIONS:
    --target T      a target (safetensors, torch, config-json, idx, cifar, image,
                    data-spec) or all [default: all]
    --seconds N     seconds per target [default: 120]
    --seed S        the run's seed [default: 1]
    -h, --help      Print this help

EXAMPLES:
    cargo xtask fuzz --target torch --seconds 600
    cargo xtask fuzz --seconds 30
";

pub fn main(argv: Vec<String>) -> Result<()> {
    let mut args = Args::new("fuzz", argv);
    let (mut target, mut seconds, mut seed) = ("all".to_string(), "120".to_string(), "1".to_string());
    let parsed = args.parse_flags(HELP, |args, f| {
        match f {
            "--target" => target = args.value(f)?,
            "--seconds" => seconds = args.value(f)?,
            "--seed" => seed = args.value(f)?,
            _ => return Err(args.unknown(f)),
        }
        Ok(())
    })?;
    let Parsed::Done { .. } = parsed else { return Ok(()) };
    let root = util::workspace_root();
    let mut cmd = util::cargo_cmd(&root);
    cmd.args(["run", "--release", "-p", "mae-fuzz", "--"]);
    cmd.args(["--target", &target, "--seconds", &seconds, "--seed", &seed]);
    println!("\n==> fuzz {target}, {seconds} s per target, seed {seed}");
    util::run("fuzz", &mut cmd)
}
