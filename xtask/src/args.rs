//! A tiny hand-written argument parser (no dependencies, so xtask stays cheap
//! to compile).
//!
//! Supports `--flag`, `--opt VALUE`, `--opt=VALUE`, `-h`, and `--` followed by
//! arguments that are passed through untouched.

use crate::util::Error;

/// One item produced by [`Args::next`].
pub enum Arg {
    /// A flag or option name such as `--release` or `--python` (for
    /// `--python=x` the value is kept and handed out by [`Args::value`]).
    Flag(String),
    /// Everything after a bare `--`.
    Rest(Vec<String>),
}

pub struct Args {
    cmd: &'static str,
    items: std::vec::IntoIter<String>,
    /// Name and inline value of the last `--name=value` item, until taken.
    pending: Option<(String, String)>,
}

impl Args {
    pub fn new(cmd: &'static str, items: Vec<String>) -> Self {
        Args { cmd, items: items.into_iter(), pending: None }
    }

    /// The next flag, or `None` when the arguments are exhausted.
    pub fn next(&mut self) -> Result<Option<Arg>, Error> {
        if let Some((name, _)) = self.pending.take() {
            return Err(self.usage(format!("`{name}` does not take a value")));
        }
        let Some(item) = self.items.next() else {
            return Ok(None);
        };
        if item == "--" {
            return Ok(Some(Arg::Rest(self.items.by_ref().collect())));
        }
        if let Some(stripped) = item.strip_prefix("--") {
            if let Some((name, value)) = stripped.split_once('=') {
                let name = format!("--{name}");
                self.pending = Some((name.clone(), value.to_string()));
                return Ok(Some(Arg::Flag(name)));
            }
            return Ok(Some(Arg::Flag(item)));
        }
        if item.starts_with('-') && item.len() > 1 {
            return Ok(Some(Arg::Flag(item)));
        }
        Err(self.usage(format!("unexpected argument `{item}`")))
    }

    /// The value of option `name`, either inline (`--name=v`) or the next item.
    pub fn value(&mut self, name: &str) -> Result<String, Error> {
        if let Some((_, value)) = self.pending.take() {
            return Ok(value);
        }
        match self.items.next() {
            Some(v) if !v.starts_with("--") => Ok(v),
            _ => Err(self.usage(format!("`{name}` needs a value"))),
        }
    }

    /// The error for a flag this subcommand does not know.
    pub fn unknown(&self, flag: &str) -> Error {
        self.usage(format!("unknown flag `{flag}` for `cargo xtask {}`", self.cmd))
    }

    pub fn usage(&self, msg: String) -> Error {
        Error::Usage { cmd: self.cmd, msg }
    }

    /// Read every argument: `-h`/`--help` prints `help` and stops; any other
    /// flag goes to `on_flag`, which takes its value from the `Args` it gets
    /// (`args.value(flag)`) and answers [`Args::unknown`] for a flag it does
    /// not know; a bare `--` ends the flags (what follows is in `rest`).
    pub fn parse_flags(
        &mut self,
        help: &str,
        mut on_flag: impl FnMut(&mut Args, &str) -> Result<(), Error>,
    ) -> Result<Parsed, Error> {
        while let Some(arg) = self.next()? {
            match arg {
                Arg::Flag(f) if f == "-h" || f == "--help" => {
                    print!("{help}");
                    return Ok(Parsed::Help);
                }
                Arg::Flag(f) => on_flag(self, &f)?,
                Arg::Rest(rest) => return Ok(Parsed::Done { rest: Some(rest) }),
            }
        }
        Ok(Parsed::Done { rest: None })
    }
}

/// How [`Args::parse_flags`] ended.
pub enum Parsed {
    /// `-h`/`--help`: the help is printed and the subcommand has nothing to do.
    Help,
    /// Every flag was handled; `rest` is what followed a bare `--`, if one was given.
    Done { rest: Option<Vec<String>> },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Args {
        Args::new("t", v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn flags_values_and_rest() {
        let mut a = args(&["--release", "--python", "py", "--cap=90", "--", "x", "--y"]);
        assert!(matches!(a.next().unwrap(), Some(Arg::Flag(f)) if f == "--release"));
        assert!(matches!(a.next().unwrap(), Some(Arg::Flag(f)) if f == "--python"));
        assert_eq!(a.value("--python").unwrap(), "py");
        assert!(matches!(a.next().unwrap(), Some(Arg::Flag(f)) if f == "--cap"));
        assert_eq!(a.value("--cap").unwrap(), "90");
        match a.next().unwrap() {
            Some(Arg::Rest(r)) => assert_eq!(r, vec!["x", "--y"]),
            _ => panic!("expected rest"),
        }
        assert!(a.next().unwrap().is_none());
    }

    #[test]
    fn errors() {
        let mut a = args(&["--python"]);
        a.next().unwrap();
        assert!(a.value("--python").is_err());

        let mut a = args(&["--release=yes"]);
        a.next().unwrap(); // the subcommand does not call value()
        assert!(a.next().is_err());

        let mut a = args(&["positional"]);
        assert!(a.next().is_err());
    }

    #[test]
    fn parse_flags_handles_help_values_and_rest() {
        let mut seen = Vec::new();
        let mut a = args(&["--x", "--n=3", "--", "a"]);
        let parsed = a
            .parse_flags("help", |a, f| {
                match f {
                    "--x" => seen.push("x".to_string()),
                    "--n" => seen.push(a.value(f)?),
                    _ => return Err(a.unknown(f)),
                }
                Ok(())
            })
            .unwrap();
        assert!(matches!(parsed, Parsed::Done { rest: Some(r) } if r == ["a"]));
        assert_eq!(seen, ["x", "3"]);
        let mut a = args(&["-h", "--bogus"]);
        assert!(matches!(a.parse_flags("", |a, f| Err(a.unknown(f))), Ok(Parsed::Help)));
        let mut a = args(&["--bogus", "-h"]);
        assert!(a.parse_flags("", |a, f| Err(a.unknown(f))).is_err());
    }
}
