//! `cargo xtask fixtures`: regenerate the numerical fixtures with Python.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::args::{Arg, Args};
use crate::util::{self, fail, Result};

pub const HELP: &str = "\
cargo xtask fixtures: regenerate the numerical fixtures in fixtures/

USAGE:
    cargo xtask fixtures [--python PATH] [--setup] [-- <extra script args>]

Runs, in the workspace root:
    <python> xtask/fixtures/make_fixtures.py --out fixtures [<extra script args>]

Which Python:
    --python PATH   use that interpreter as is (its packages must already
                    satisfy xtask/fixtures/requirements.txt)
    (default)       .venv-fixtures/bin/python; when .venv-fixtures/ does not
                    exist yet it is created first, as with --setup
    --setup         (re)create .venv-fixtures with `python3 -m venv` and
                    `pip install -r xtask/fixtures/requirements.txt`, then use
                    it. With --python PATH too, PATH is the interpreter the
                    virtual environment is made from instead of python3.

OPTIONS:
    -h, --help      Print this help

EXAMPLES:
    cargo xtask fixtures
    cargo xtask fixtures --setup
    cargo xtask fixtures --python /usr/bin/python3.11
";

const VENV: &str = ".venv-fixtures";
const SCRIPT: &str = "xtask/fixtures/make_fixtures.py";
const REQUIREMENTS: &str = "xtask/fixtures/requirements.txt";

pub fn main(argv: Vec<String>) -> Result<()> {
    let mut args = Args::new("fixtures", argv);
    let mut python: Option<String> = None;
    let mut setup = false;
    let mut extra = Vec::new();
    while let Some(arg) = args.next()? {
        match arg {
            Arg::Flag(f) => match f.as_str() {
                "-h" | "--help" => {
                    print!("{HELP}");
                    return Ok(());
                }
                "--python" => python = Some(args.value("--python")?),
                "--setup" => setup = true,
                _ => return Err(args.unknown(&f)),
            },
            Arg::Rest(rest) => extra = rest,
        }
    }

    let root = util::workspace_root();
    if !root.join(SCRIPT).is_file() {
        return fail(format!(
            "{SCRIPT} does not exist yet: the fixture generator script is needed \
             (it writes the fixtures into fixtures/)"
        ));
    }

    let interpreter: PathBuf = match (&python, setup) {
        (Some(py), false) => {
            check_python(py)?;
            PathBuf::from(py)
        }
        (base, true) => setup_venv(&root, base.as_deref().unwrap_or(default_python()))?,
        (None, false) => {
            let venv_python = venv_python(&root);
            if root.join(VENV).exists() {
                if !venv_python.exists() {
                    return fail(format!(
                        "{VENV}/ exists but has no {}; recreate it with \
                         `cargo xtask fixtures --setup`",
                        util::rel(&root, &venv_python)
                    ));
                }
                println!("fixtures: using {}", util::rel(&root, &venv_python));
                venv_python
            } else {
                println!("fixtures: no --python given and {VENV}/ does not exist: creating it");
                setup_venv(&root, default_python())?
            }
        }
    };

    println!("\n==> generate fixtures");
    let mut cmd = Command::new(&interpreter);
    cmd.current_dir(&root).args([SCRIPT, "--out", "fixtures"]).args(&extra);
    util::run("make_fixtures", &mut cmd)?;
    println!("fixtures: regenerated fixtures/ (review with `git status fixtures`)");
    Ok(())
}

fn default_python() -> &'static str {
    if cfg!(windows) {
        "python"
    } else {
        "python3"
    }
}

fn venv_python(root: &Path) -> PathBuf {
    if cfg!(windows) {
        root.join(VENV).join("Scripts").join("python.exe")
    } else {
        root.join(VENV).join("bin").join("python")
    }
}

/// Fail clearly when `py` cannot be run.
fn check_python(py: &str) -> Result<()> {
    match Command::new(py).arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => fail(format!(
            "`{py} --version` failed ({}): is it a Python interpreter?",
            util::describe(out.status)
        )),
        Err(e) => fail(format!("cannot run Python interpreter `{py}`: {e}")),
    }
}

/// Create (or refresh) `.venv-fixtures` from `base` and install the
/// requirements into it; returns the venv's interpreter.
fn setup_venv(root: &Path, base: &str) -> Result<PathBuf> {
    check_python(base)?;
    let requirements = root.join(REQUIREMENTS);
    if !requirements.is_file() {
        return fail(format!(
            "{REQUIREMENTS} does not exist: it lists the Python packages the \
             fixture script needs"
        ));
    }
    println!("\n==> create {VENV} (from {base})");
    let mut venv = Command::new(base);
    venv.current_dir(root).args(["-m", "venv", VENV]);
    util::run("venv", &mut venv)?;

    let py = venv_python(root);
    println!("\n==> install {REQUIREMENTS}");
    let mut pip = Command::new(&py);
    pip.current_dir(root).args(["-m", "pip", "install", "-r", REQUIREMENTS]);
    util::run("pip install", &mut pip)?;
    Ok(py)
}
