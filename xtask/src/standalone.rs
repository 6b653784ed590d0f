//! The check that keeps the repository standing alone: nothing a user runs or reads may point at
//! the development machines' shared data folder beside the checkout (a user's clone has none;
//! CI has it, so only this check notices a path that crept back in).

use std::path::{Path, PathBuf};

use crate::util::Result;

/// Folders and files scanned, relative to the workspace root.
const SCANNED: [&str; 6] = ["crates", "examples", "xtask", ".ci", "README.md", "docs"];

/// The forbidden path, built from parts so that this file does not name it.
fn forbidden() -> String {
    ["shared", "data"].join("/")
}

fn text_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let Ok(entries) = std::fs::read_dir(path) else { return };
        let mut entries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for entry in entries {
            let name = entry.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            // Build outputs and Python environments are not ours to check.
            if !["target", ".venv", "__pycache__"].contains(&name) {
                text_files(&entry, out);
            }
        }
    } else if path.is_file() {
        out.push(path.to_path_buf());
    }
}

/// Lines (`path:line: text`) under `root` that name the shared data folder.
pub fn offending_lines(root: &Path) -> Vec<String> {
    let needle = forbidden();
    let mut files = Vec::new();
    for entry in SCANNED {
        text_files(&root.join(entry), &mut files);
    }
    let mut found = Vec::new();
    for file in files {
        // Binary files (images, safetensors) cannot hold a path a user reads; skip what is not UTF-8.
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        for (i, line) in text.lines().enumerate() {
            if line.contains(&needle) {
                let shown = file.strip_prefix(root).unwrap_or(&file).display();
                found.push(format!("{shown}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    found
}

/// Fails, listing every offending line, when anything scanned names the shared data folder.
pub fn check(root: &Path) -> Result<()> {
    let found = offending_lines(root);
    if found.is_empty() {
        return Ok(());
    }
    crate::util::fail(format!(
        "{} line(s) name `{}`, which a user's clone does not have; use the repository's data/ \
         (data/README.md), a synthetic spec, or hf:OWNER/NAME instead:\n  {}",
        found.len(),
        forbidden(),
        found.join("\n  ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_path_in_any_scanned_place_and_nothing_else() {
        let root = tempfile_dir();
        std::fs::create_dir_all(root.join("crates/x/src")).unwrap();
        std::fs::create_dir_all(root.join("elsewhere")).unwrap();
        std::fs::write(root.join("crates/x/src/lib.rs"), "fn a() {}\n").unwrap();
        std::fs::write(root.join("elsewhere/notes.md"), format!("see ../{}\n", forbidden())).unwrap();
        std::fs::write(root.join("README.md"), "fine\n").unwrap();
        assert!(offending_lines(&root).is_empty());
        assert!(check(&root).is_ok());
        std::fs::write(
            root.join("crates/x/src/lib.rs"),
            format!("fn a() {{}}\n// ../../{}/mnist\n", forbidden()),
        )
        .unwrap();
        assert_eq!(
            offending_lines(&root),
            vec![format!("crates/x/src/lib.rs:2: // ../../{}/mnist", forbidden())]
        );
        assert!(check(&root).is_err());
        let _ = std::fs::remove_dir_all(&root);
    }

    /// A fresh folder under the system's temporary directory (xtask has no dependencies).
    fn tempfile_dir() -> PathBuf {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("xtask-standalone-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_repository_itself_is_clean() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let found = offending_lines(&root);
        assert!(found.is_empty(), "{found:#?}");
    }
}
