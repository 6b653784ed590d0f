//! A directory tree of images, labeled by torchvision's `ImageFolder` convention.

use std::path::{Path, PathBuf};

use walkdir::WalkDir;

use crate::dataset::{open_image, out_of_range, Dataset, DecodeLimits, Sample};
use crate::error::{DataError, Result};

/// File extensions taken as images (compared case-insensitively). Anything else in the tree
/// (READMEs, CSVs, `.DS_Store`) is ignored, not counted as a bad sample.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif"];

/// Images under a root directory.
///
/// - Labeled when the root has sub-directories: each first-level sub-directory is a class
///   (sorted by name, label = position), and its images are found recursively; images lying
///   directly in the root are then ignored (with a warning), as torchvision does.
/// - Unlabeled when the root has no sub-directories: its image files are the samples.
///
/// Order is stable: classes sorted, then files sorted by path within each class. Files are
/// decoded lazily in [`Dataset::get`], so a corrupt file only fails (and is skipped) when read.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    root: PathBuf,
    files: Vec<(PathBuf, Option<u32>)>,
    classes: Vec<String>,
    limits: DecodeLimits,
}

/// Hidden entries (`.git`, `.ipynb_checkpoints`, macOS `._x.jpg`) are never samples or classes.
fn is_hidden(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Files under `dir` that `is_sample` accepts, recursively (following symbolic links; walkdir
/// detects loops), sorted by path.
fn files_under(dir: &Path, is_sample: &dyn Fn(&Path) -> bool) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let walk = WalkDir::new(dir).follow_links(true).sort_by_file_name();
    for entry in walk.into_iter().filter_entry(|e| e.depth() == 0 || !is_hidden(e.path())) {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(dir).to_path_buf();
            DataError::io(path, e.into())
        })?;
        if entry.file_type().is_file() && is_sample(entry.path()) {
            files.push(entry.into_path());
        }
    }
    Ok(files)
}

/// The sample files of a folder tree (each with its label) and the class names.
pub(crate) struct LabeledFiles {
    pub files: Vec<(PathBuf, Option<u32>)>,
    pub classes: Vec<String>,
}

/// Lists a folder tree by the `ImageFolder` layout (see [`ImageFolder`]): each first-level
/// sub-directory is a class when there is one, and files lying directly in the root are then
/// ignored with a warning; otherwise the root's files are the samples, unlabeled. Shared by
/// `folder:` (files with an image extension) and `dicom:` (files with the DICOM magic).
/// `expected` describes the root for a `NotFound` error, `what` names the files in warnings
/// (`images`, `DICOM files`); an empty result is the caller's error to word.
pub(crate) fn scan_tree(
    root: &Path,
    expected: &str,
    what: &str,
    is_sample: &dyn Fn(&Path) -> bool,
) -> Result<LabeledFiles> {
    if !root.exists() {
        return Err(DataError::NotFound { path: root.into(), expected: expected.into() });
    }
    if !root.is_dir() {
        return Err(DataError::format(root, "image folder", "not a directory"));
    }
    let read = std::fs::read_dir(root).map_err(|e| DataError::io(root, e))?;
    let mut class_dirs = Vec::new();
    let mut loose = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| DataError::io(root, e))?;
        let path = entry.path();
        if is_hidden(&path) {
            continue;
        }
        // `is_dir` follows symlinks, so a class may be a link to another directory.
        if path.is_dir() {
            class_dirs.push(path);
        } else if is_sample(&path) {
            loose.push(path);
        }
    }
    class_dirs.sort();
    loose.sort();

    if class_dirs.is_empty() {
        return Ok(LabeledFiles {
            files: loose.into_iter().map(|p| (p, None)).collect(),
            classes: Vec::new(),
        });
    }
    if !loose.is_empty() {
        tracing::warn!(
            "{}: ignoring {} {what} directly in the root, since its sub-directories are the \
             classes (ImageFolder layout)",
            root.display(),
            loose.len()
        );
    }
    let mut files = Vec::new();
    let mut classes = Vec::new();
    for (label, dir) in class_dirs.iter().enumerate() {
        let found = files_under(dir, is_sample)?;
        if found.is_empty() {
            // Kept as a class so that labels do not shift when a folder is emptied.
            tracing::warn!("{}: class folder has no {what}", dir.display());
        }
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        classes.push(name);
        files.extend(found.into_iter().map(|p| (p, Some(label as u32))));
    }
    Ok(LabeledFiles { files, classes })
}

impl ImageFolder {
    pub fn open(root: impl AsRef<Path>, limits: DecodeLimits) -> Result<Self> {
        let root = root.as_ref();
        let expected = "a directory of images, or of class sub-directories of images";
        let LabeledFiles { files, classes } = scan_tree(root, expected, "images", &is_image)?;
        if files.is_empty() {
            return Err(DataError::Empty {
                path: root.into(),
                expected: format!("{expected}, with extensions {}", IMAGE_EXTENSIONS.join(", ")),
            });
        }
        Ok(Self { root: root.into(), files, classes, limits })
    }

    /// The file of sample `index`.
    pub fn path(&self, index: usize) -> Option<&Path> {
        self.files.get(index).map(|(p, _)| p.as_path())
    }
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let (path, label) = self.files.get(index).ok_or_else(|| out_of_range(index, self))?;
        Ok(Sample { image: open_image(path, &self.limits)?, label: *label })
    }

    fn class_names(&self) -> &[String] {
        &self.classes
    }

    fn origin(&self, index: usize) -> String {
        match self.files.get(index) {
            Some((path, _)) => path.display().to_string(),
            None => format!("sample {index} of {}", self.describe()),
        }
    }

    fn sample_name(&self, index: usize) -> Option<String> {
        let (path, _) = self.files.get(index)?;
        let relative = path.strip_prefix(&self.root).unwrap_or(path);
        Some(relative.display().to_string())
    }

    fn describe(&self) -> String {
        let labels = if self.classes.is_empty() {
            "unlabeled".to_string()
        } else {
            format!("{} classes", self.classes.len())
        };
        format!("image folder {} ({} images, {labels})", self.root.display(), self.files.len())
    }
}
