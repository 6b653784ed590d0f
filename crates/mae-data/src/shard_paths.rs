//! The shard paths of a `wds:` spec: brace ranges (`{000000..000099}`, zero padding kept, as
//! WebDataset's `braceexpand` does) and `*` globs in the file name.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// The most shards one pattern may name: a typo like `{0..99999999999}` must be an error, not
/// an allocation of billions of paths.
pub const MAX_SHARDS: usize = 1_000_000;

/// One `{A..B}` range: its bounds and the width to zero-pad to (0: no padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    start: u64,
    end: u64,
    width: usize,
}

fn parse_range(body: &str) -> std::result::Result<Range, String> {
    let (a, b) = body.split_once("..").ok_or_else(|| format!("`{{{body}}}` is not a range `{{A..B}}`"))?;
    let number = |s: &str| -> std::result::Result<u64, String> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(format!("`{s}` in `{{{body}}}` is not a non-negative integer"));
        }
        s.parse::<u64>().map_err(|_| format!("`{s}` in `{{{body}}}` is too large"))
    };
    let (start, end) = (number(a)?, number(b)?);
    if start > end {
        return Err(format!("`{{{body}}}` counts down; write the smaller bound first"));
    }
    // braceexpand pads when a bound is written with a leading zero, to the longer bound's width.
    let padded = |s: &str| s.len() > 1 && s.starts_with('0');
    let width = if padded(a) || padded(b) { a.len().max(b.len()) } else { 0 };
    Ok(Range { start, end, width })
}

/// Literal text and ranges, in order.
enum Piece<'a> {
    Text(&'a str),
    Range(Range),
}

fn pieces(pattern: &str) -> std::result::Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        let close =
            rest[open..].find('}').ok_or_else(|| format!("`{{` at `{}` is never closed", &rest[open..]))?;
        out.push(Piece::Text(&rest[..open]));
        out.push(Piece::Range(parse_range(&rest[open + 1..open + close])?));
        rest = &rest[open + close + 1..];
    }
    if rest.contains('}') {
        return Err("`}` without a `{`".into());
    }
    out.push(Piece::Text(rest));
    Ok(out)
}

/// How many paths `pattern` names once its brace ranges are expanded, without expanding them
/// (spec parsing checks a pattern this way, allocating nothing per path). Errors (a malformed
/// range, more than [`MAX_SHARDS`] paths) are messages for a spec error.
pub fn brace_count(pattern: &str) -> std::result::Result<usize, String> {
    count(pattern, &pieces(pattern)?)
}

fn count(pattern: &str, pieces: &[Piece<'_>]) -> std::result::Result<usize, String> {
    let mut count: usize = 1;
    for piece in pieces {
        if let Piece::Range(r) = piece {
            let n = usize::try_from(r.end - r.start).ok().and_then(|n| n.checked_add(1));
            count = n
                .and_then(|n| count.checked_mul(n))
                .filter(|&c| c <= MAX_SHARDS)
                .ok_or_else(|| format!("the ranges of `{pattern}` name more than {MAX_SHARDS} shards"))?;
        }
    }
    Ok(count)
}

/// The paths `pattern` names once its brace ranges are expanded, in order (the last range
/// varying fastest); errors as [`brace_count`].
pub fn expand_braces(pattern: &str) -> std::result::Result<Vec<String>, String> {
    let pieces = pieces(pattern)?;
    count(pattern, &pieces)?;
    let mut out = vec![String::new()];
    for piece in &pieces {
        out = match piece {
            Piece::Text(t) => out.into_iter().map(|p| p + t).collect(),
            Piece::Range(r) => out
                .iter()
                .flat_map(|p| (r.start..=r.end).map(move |i| format!("{p}{i:0width$}", width = r.width)))
                .collect(),
        };
    }
    Ok(out)
}

/// Whether `name` matches `glob`, where `*` is any run of characters (none included).
fn glob_match(glob: &str, name: &str) -> bool {
    let parts: Vec<&str> = glob.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if parts.len() == 1 {
        return glob == name;
    }
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut middle = &name[first.len()..name.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match middle.find(part) {
            Some(at) => middle = &middle[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// The files matching `path`, whose file name may hold `*` (the folders may not), sorted.
fn glob_files(path: &str) -> Result<Vec<PathBuf>> {
    let path = Path::new(path);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if !name.contains('*') {
        return Ok(vec![path.to_path_buf()]);
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let read = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut found = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let matches = entry.file_name().to_str().is_some_and(|n| glob_match(name, n));
        if matches && entry.path().is_file() {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// The shard files of a `wds:` pattern: brace ranges expanded, then globs matched, in that
/// order, without duplicates. A path named without a glob must exist; a glob matching nothing
/// contributes nothing; no shard at all is an error.
pub fn resolve(pattern: &str) -> Result<Vec<PathBuf>> {
    let spec_error = |reason: String| DataError::Spec { input: format!("wds:{pattern}"), reason };
    let mut shards: Vec<PathBuf> = Vec::new();
    for path in expand_braces(pattern).map_err(spec_error)? {
        for file in glob_files(&path)? {
            if !file.exists() {
                return Err(DataError::NotFound { path: file, expected: "a WebDataset .tar shard".into() });
            }
            if !shards.contains(&file) {
                shards.push(file);
            }
        }
    }
    if shards.is_empty() {
        return Err(DataError::Empty { path: pattern.into(), expected: "WebDataset .tar shards".into() });
    }
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_keep_their_padding() {
        assert_eq!(
            expand_braces("a-{08..11}.tar").unwrap(),
            ["a-08.tar", "a-09.tar", "a-10.tar", "a-11.tar"]
        );
        assert_eq!(expand_braces("{8..10}").unwrap(), ["8", "9", "10"]);
        assert_eq!(expand_braces("{0..1}/{000..001}").unwrap(), ["0/000", "0/001", "1/000", "1/001"]);
        assert_eq!(expand_braces("plain.tar").unwrap(), ["plain.tar"]);
        assert_eq!(brace_count("{0..9}-{000..099}"), Ok(1000));
        for bad in ["{1..0}", "{a..b}", "{1..}", "{1", "x}", "{0..99999999999}", "{0..999}{0..9999}"] {
            assert!(expand_braces(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn globs_match_runs_of_characters() {
        assert!(glob_match("shard-*.tar", "shard-0001.tar"));
        assert!(glob_match("*", "x"));
        assert!(glob_match("a*b*c", "abc"));
        assert!(!glob_match("a*b*c", "acb"));
        assert!(!glob_match("shard-*.tar", "shard-1.tar.gz"));
        assert!(!glob_match("ab*ba", "aba"));
    }
}
