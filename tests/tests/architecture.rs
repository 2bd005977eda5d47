//! ARCHITECTURE.md's code map names only files that exist: every `code span` that is a
//! path (it has a `/`, or ends in a file extension) must exist in the workspace, a bare file
//! name somewhere in it.

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

/// Whether a file named `name` exists under `dir` (skipping `target` and hidden dirs).
fn exists_somewhere(dir: &Path, name: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let path = entry.path();
        let file = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            !file.starts_with('.') && file != "target" && exists_somewhere(&path, name)
        } else {
            file == name
        }
    })
}

fn looks_like_path(span: &str) -> bool {
    let allowed = span
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-'));
    let extension = [".rs", ".md", ".lua", ".toml", ".sql"]
        .iter()
        .any(|e| span.ends_with(e));
    allowed && !span.starts_with('-') && (span.contains('/') || extension)
}

#[test]
fn every_path_in_architecture_md_exists() {
    let root = workspace();
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let spans: Vec<&str> = text.split('`').skip(1).step_by(2).collect();
    let paths: Vec<&str> = spans.into_iter().filter(|s| looks_like_path(s)).collect();
    assert!(
        paths.len() > 30,
        "the code map names its files: found {paths:?}"
    );
    let missing: Vec<&str> = paths
        .iter()
        .copied()
        .filter(|path| {
            if path.contains('/') {
                !root.join(path).exists()
            } else {
                !exists_somewhere(&root, path)
            }
        })
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names missing paths: {missing:?}"
    );
}
