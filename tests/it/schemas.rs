//! The JSON Schemas of the wire messages, committed under `schemas/`, match the Rust types.
//!
//! When a type changes, this test rewrites the stale files and fails, so the change to the
//! schemas is reviewed and committed with the change to the types.

use std::path::PathBuf;

fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas")
}

#[test]
fn committed_schemas_match_the_wire_types() {
    let dir = schemas_dir();
    std::fs::create_dir_all(&dir).expect("schemas/ can be created");
    let mut stale = Vec::new();
    let mut expected_files = Vec::new();
    for message in models::wire::schemas() {
        let file = format!("{}.json", message.kind);
        let path = dir.join(&file);
        let text =
            serde_json::to_string_pretty(&message.schema).expect("a schema serialises") + "\n";
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current != text {
            std::fs::write(&path, &text).expect("schemas/ is writable");
            stale.push(file.clone());
        }
        expected_files.push(file);
    }
    let mut unexpected = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("schemas/ is readable") {
        let name = entry
            .expect("a directory entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".json") && !expected_files.contains(&name) {
            unexpected.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "these schemas were stale and have been rewritten, commit them: {stale:?}"
    );
    assert!(
        unexpected.is_empty(),
        "these files under schemas/ belong to no wire message, delete them: {unexpected:?}"
    );
}
