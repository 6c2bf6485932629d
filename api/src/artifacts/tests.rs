use super::{ArtifactError, check_address, open};

#[test]
fn addresses_are_relative_paths_of_normal_components() {
    for good in ["model", "models/a/b.bin", "plan-1/task-2/model"] {
        assert!(check_address(good).is_ok(), "{good}");
    }
    for bad in [
        "",
        "/etc/passwd",
        "../escape",
        "a/../../b",
        "a/./b",
        "a//b",
        "a/",
        "a\\b",
        "a\0b",
        "a\nb",
    ] {
        assert!(
            matches!(check_address(bad), Err(ArtifactError::Refused { .. })),
            "{bad:?}"
        );
    }
    assert!(check_address(&"a".repeat(256)).is_err());
    assert!(check_address(&["a"; 600].join("/")).is_err());
}

fn store() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let root = dir.path().join("store");
    std::fs::create_dir_all(root.join("models")).expect("store directories");
    std::fs::write(root.join("models/weights"), b"0123456789").expect("a file");
    std::fs::write(dir.path().join("secret"), b"outside").expect("a file outside");
    let root = std::fs::canonicalize(root).expect("canonical root");
    (dir, root)
}

#[tokio::test]
async fn a_file_under_the_root_opens_with_its_size() {
    let (_dir, root) = store();
    let opened = open(&root, "models/weights").await.expect("opens");
    assert_eq!(opened.size, 10);
    assert!(matches!(
        open(&root, "models/missing").await,
        Err(ArtifactError::NotFound { .. })
    ));
    assert!(matches!(
        open(&root, "nowhere/weights").await,
        Err(ArtifactError::NotFound { .. })
    ));
    assert!(matches!(
        open(&root, "models").await,
        Err(ArtifactError::Refused { .. })
    ));
}

#[tokio::test]
async fn links_never_lead_outside_the_root() {
    let (dir, root) = store();
    std::os::unix::fs::symlink(dir.path(), root.join("up")).expect("a directory link");
    std::os::unix::fs::symlink(dir.path().join("secret"), root.join("models/secret"))
        .expect("a file link");
    std::os::unix::fs::symlink(root.join("models"), root.join("inside")).expect("a link inside");
    assert!(matches!(
        open(&root, "up/secret").await,
        Err(ArtifactError::Refused { .. })
    ));
    assert!(matches!(
        open(&root, "models/secret").await,
        Err(ArtifactError::Refused { .. })
    ));
    // A link to a directory inside the root is followed.
    assert_eq!(open(&root, "inside/weights").await.expect("opens").size, 10);
}
