//! Invariants of the code base that a test can check better than a reviewer's memory.

use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

/// Crates that do IO or are tied to a runtime, a database, a broker or HTTP.
const IO_CRATES: &[&str] = &[
    "tokio",
    "diesel",
    "diesel-async",
    "diesel_migrations",
    "lapin",
    "axum",
    "reqwest",
    "hyper",
    "async-std",
    "futures",
    "deadpool",
    "object_store",
    "nix",
];

#[test]
fn models_has_no_io_dependency() {
    let manifest = std::fs::read_to_string(workspace_root().join("models/Cargo.toml"))
        .expect("models/Cargo.toml is readable");
    let mut section = String::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line.to_owned();
            continue;
        }
        if section != "[dependencies]" {
            continue;
        }
        let Some(name) = line.split(['=', '.', ' ']).next().filter(|n| !n.is_empty()) else {
            continue;
        };
        assert!(
            !IO_CRATES.contains(&name),
            "models depends on {name}: models must stay free of IO (ARCHITECTURE.md)"
        );
    }
}

#[test]
fn models_source_does_no_io() {
    let mut files = Vec::new();
    rust_files(&workspace_root().join("models/src"), &mut files);
    assert!(!files.is_empty());
    let forbidden = [
        "tokio",
        "diesel",
        "lapin",
        "axum",
        "std::fs",
        "std::net",
        "std::process",
        "std::thread",
        "std::env",
        "async fn",
        "SystemTime",
        "Utc::now",
        "Local::now",
        "println!",
    ];
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable source file");
        for word in forbidden {
            assert!(
                !text.contains(word),
                "{} mentions `{word}`: models must stay free of IO, async and clocks",
                file.display()
            );
        }
    }
}

#[test]
fn the_documented_role_table_is_the_one_in_the_code() {
    let documented = std::fs::read_to_string(workspace_root().join("docs/security.md")).unwrap();
    let table = models::access::markdown_table();
    assert!(
        documented.contains(&table),
        "docs/security.md must hold models::access::markdown_table() as it is:\n{table}"
    );
}
