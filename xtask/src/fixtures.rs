//! `cargo xtask fixtures`: regenerate the numerical fixtures with Python.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::args::{Args, Parsed};
use crate::python::{self, Venv};
use crate::util::{self, fail, Log, Result};

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

const SCRIPT: &str = "xtask/fixtures/make_fixtures.py";
const VENV: Venv = Venv {
    dir: ".venv-fixtures",
    requirements: "xtask/fixtures/requirements.txt",
    purpose: "the Python packages the fixture script needs",
    hint: "",
};

pub fn main(argv: Vec<String>) -> Result<()> {
    let mut args = Args::new("fixtures", argv);
    let mut python: Option<String> = None;
    let mut setup = false;
    let parsed = args.parse_flags(HELP, |args, f| {
        match f {
            "--python" => python = Some(args.value(f)?),
            "--setup" => setup = true,
            _ => return Err(args.unknown(f)),
        }
        Ok(())
    })?;
    let Parsed::Done { rest } = parsed else { return Ok(()) };

    let root = util::workspace_root();
    if !root.join(SCRIPT).is_file() {
        return fail(format!(
            "{SCRIPT} does not exist yet: the fixture generator script is needed \
             (it writes the fixtures into fixtures/)"
        ));
    }
    let interpreter = interpreter(&root, python.as_deref(), setup)?;
    println!("\n==> generate fixtures");
    let mut cmd = Command::new(&interpreter);
    cmd.current_dir(&root).args([SCRIPT, "--out", "fixtures"]).args(rest.unwrap_or_default());
    util::run("make_fixtures", &mut cmd)?;
    println!("fixtures: regenerated fixtures/ (review with `git status fixtures`)");
    Ok(())
}

/// `--python` as is; with `--setup` (or when the venv does not exist yet) a
/// fresh `.venv-fixtures`; else the existing one.
fn interpreter(root: &Path, python: Option<&str>, setup: bool) -> Result<PathBuf> {
    match (python, setup) {
        (Some(py), false) => {
            python::check(py, "")?;
            Ok(PathBuf::from(py))
        }
        (base, true) => VENV.create(root, base.unwrap_or(python::default_python()), Log::Stdout),
        (None, false) => {
            let venv_python = VENV.python(root);
            if !root.join(VENV.dir).exists() {
                println!("fixtures: no --python given and {}/ does not exist: creating it", VENV.dir);
                return VENV.create(root, python::default_python(), Log::Stdout);
            }
            if !venv_python.exists() {
                return fail(format!(
                    "{}/ exists but has no {}; recreate it with `cargo xtask fixtures --setup`",
                    VENV.dir,
                    util::rel(root, &venv_python)
                ));
            }
            println!("fixtures: using {}", util::rel(root, &venv_python));
            Ok(venv_python)
        }
    }
}
