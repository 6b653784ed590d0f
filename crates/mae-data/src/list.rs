//! A list of image files (`list:FILE`): `.txt` with one path a line, or `.csv` with `path,label`.
//!
//! Everything but where the files come from is the image folder's: the same lazy decoding (a bad
//! file is skipped when read), the same transforms, [`Dataset::origin`] naming the file. Paths
//! are relative to the list file's folder unless absolute, so a list travels with its images.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::dataset::{open_image, out_of_range, Dataset, DecodeLimits, Sample};
use crate::error::{DataError, Result};

/// Images named by a list file.
#[derive(Debug, Clone)]
pub struct ImageList {
    list: PathBuf,
    /// Each image: the path as the list gives it, the path to open, the label.
    files: Vec<(String, PathBuf, Option<u32>)>,
    classes: Vec<String>,
    limits: DecodeLimits,
}

/// A line of the list: its number (from 1), the path text and the label text (csv only).
struct Row<'a> {
    line: usize,
    path: &'a str,
    label: Option<&'a str>,
}

/// A csv field without the double quotes around it (`"a,b.png"` writes a path with a comma).
fn unquote(field: &str) -> &str {
    let f = field.trim();
    f.strip_prefix('"').and_then(|f| f.strip_suffix('"')).unwrap_or(f)
}

/// Splits a csv line into (path, label) at its LAST comma outside quotes: a path may hold
/// commas (quoted or not), a label may not.
fn split_csv(line: &str) -> Option<(&str, &str)> {
    let (path, label) = line.rsplit_once(',')?;
    Some((unquote(path), unquote(label)))
}

/// Whether the first csv row is a header: its columns are named, not a file and a class.
fn is_header(path: &str, label: &str) -> bool {
    let names = ["path", "file", "filename", "file_name", "image", "img"];
    names.iter().any(|n| path.eq_ignore_ascii_case(n))
        && ["label", "labels", "class", "cls", "target"].iter().any(|n| label.eq_ignore_ascii_case(n))
}

fn rows<'a>(list: &Path, text: &'a str, csv: bool) -> Result<Vec<Row<'a>>> {
    let mut rows = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !csv {
            rows.push(Row { line: i + 1, path: line, label: None });
            continue;
        }
        let Some((path, label)) = split_csv(line) else {
            return Err(bad_line(list, i + 1, "expected `path,label`"));
        };
        if rows.is_empty() && is_header(path, label) {
            continue;
        }
        if path.is_empty() || label.is_empty() {
            return Err(bad_line(list, i + 1, "expected `path,label` with neither empty"));
        }
        rows.push(Row { line: i + 1, path, label: Some(label) });
    }
    Ok(rows)
}

fn bad_line(list: &Path, line: usize, message: impl std::fmt::Display) -> DataError {
    DataError::format(list, "image list", format!("line {line}: {message}"))
}

/// Labels of the rows: integers are class indices themselves (classes `0..=max`); otherwise the
/// names, sorted, are the classes and a label is its name's position, as class folders are.
fn labels(rows: &[Row<'_>]) -> (Vec<Option<u32>>, Vec<String>) {
    let texts: Vec<&str> = rows.iter().filter_map(|r| r.label).collect();
    if texts.is_empty() {
        return (vec![None; rows.len()], Vec::new());
    }
    let numbers: Option<Vec<u32>> = texts.iter().map(|t| t.parse::<u32>().ok()).collect();
    // A cap like the hub datasets': each class gets a name, so a stray huge number would make
    // billions of them; such lists are taken as names instead.
    if let Some(numbers) = numbers.filter(|n| n.iter().all(|&v| (v as usize) < crate::wds::MAX_CLASSES)) {
        let max = numbers.iter().copied().max().unwrap_or(0);
        return (numbers.into_iter().map(Some).collect(), (0..=max).map(|c| c.to_string()).collect());
    }
    let classes: Vec<String> =
        texts.iter().map(|t| t.to_string()).collect::<BTreeSet<_>>().into_iter().collect();
    let label = |t: &str| classes.binary_search_by(|c| c.as_str().cmp(t)).ok().map(|i| i as u32);
    (texts.iter().map(|t| label(t)).collect(), classes)
}

impl ImageList {
    /// Reads the list `list` (`.csv`: `path,label` rows with an optional header; anything else:
    /// one path a line). Blank lines and `#` comments are skipped. A listed file that does not
    /// exist is an error naming the list and the line.
    pub fn open(list: impl AsRef<Path>, limits: DecodeLimits) -> Result<Self> {
        let list = list.as_ref();
        let expected = "a .txt list of image paths or a .csv of path,label rows";
        if !list.is_file() {
            return Err(DataError::NotFound { path: list.into(), expected: expected.into() });
        }
        let bytes = std::fs::read(list).map_err(|e| DataError::io(list, e))?;
        let text = String::from_utf8(bytes)
            .map_err(|e| DataError::format(list, "image list", format!("not UTF-8 text: {e}")))?;
        let csv = list.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        let rows = rows(list, &text, csv)?;
        if rows.is_empty() {
            return Err(DataError::Empty { path: list.into(), expected: expected.into() });
        }
        let base = list.parent().unwrap_or(Path::new(""));
        let (labels, classes) = labels(&rows);
        let mut files = Vec::with_capacity(rows.len());
        for (row, label) in rows.iter().zip(labels) {
            let path = base.join(row.path);
            if !path.is_file() {
                return Err(bad_line(list, row.line, format!("{} does not exist", path.display())));
            }
            files.push((row.path.to_string(), path, label));
        }
        Ok(Self { list: list.into(), files, classes, limits })
    }

    /// The file of sample `index`.
    pub fn path(&self, index: usize) -> Option<&Path> {
        self.files.get(index).map(|(_, p, _)| p.as_path())
    }
}

impl Dataset for ImageList {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let (_, path, label) = self.files.get(index).ok_or_else(|| out_of_range(index, self))?;
        Ok(Sample { image: open_image(path, &self.limits)?, label: *label })
    }

    fn class_names(&self) -> &[String] {
        &self.classes
    }

    fn origin(&self, index: usize) -> String {
        match self.files.get(index) {
            Some((_, path, _)) => path.display().to_string(),
            None => format!("sample {index} of {}", self.describe()),
        }
    }

    fn sample_name(&self, index: usize) -> Option<String> {
        self.files.get(index).map(|(name, _, _)| name.clone())
    }

    fn describe(&self) -> String {
        let labels = if self.classes.is_empty() {
            "unlabeled".into()
        } else {
            format!("{} classes", self.classes.len())
        };
        format!("image list {} ({} images, {labels})", self.list.display(), self.files.len())
    }
}
