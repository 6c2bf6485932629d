use std::path::{Path, PathBuf};

use models::File;
use tempfile::TempDir;

use super::*;

/// The sha256 of `abc`, from FIPS 180-2.
const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

const BAD_ADDRESSES: [&str; 13] = [
    "../x",
    "/etc/passwd",
    "a/../../b",
    "a//b",
    "",
    "a\\b",
    "a\0b",
    "a/./b",
    ".",
    "a/",
    "a\nb",
    "a\u{7f}b",
    "..",
];

struct Setup {
    _dir: TempDir,
    root: PathBuf,
    scratch: PathBuf,
    store: LocalStore,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let store = LocalStore::new(&root).unwrap();
    Setup {
        root: std::fs::canonicalize(&root).unwrap(),
        scratch: std::fs::canonicalize(&scratch).unwrap(),
        store,
        _dir: dir,
    }
}

fn write(path: &Path, content: &[u8]) -> PathBuf {
    std::fs::write(path, content).unwrap();
    path.to_owned()
}

/// Every entry under `dir`, recursively, relative to it, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            found.push(path.strip_prefix(base).unwrap().display().to_string());
            if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                walk(base, &path, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(dir, dir, &mut found);
    found.sort();
    found
}

fn assert_invalid<T: std::fmt::Debug>(result: Result<T, ArtifactError>) {
    match result {
        Err(ArtifactError::InvalidAddress { .. }) => {}
        other => panic!("expected InvalidAddress, got {other:?}"),
    }
}

#[tokio::test]
async fn sha256_file_streams_lowercase_hex() {
    let setup = setup();
    let path = write(&setup.scratch.join("abc"), b"abc");
    assert_eq!(sha256_file(&path).await.unwrap(), ABC_SHA256);

    let big = write(
        &setup.scratch.join("big"),
        &vec![7; 3 * COPY_BUFFER_BYTES + 5],
    );
    let expected = hex::encode(Sha256::digest(vec![7; 3 * COPY_BUFFER_BYTES + 5]));
    assert_eq!(sha256_file(&big).await.unwrap(), expected);
}

#[test]
fn good_addresses_are_accepted() {
    for address in [
        "model",
        "a/b/c.bin",
        "task-1/out put/0",
        ".hidden",
        "a..b",
        "modèle/1",
    ] {
        check_address(address).unwrap_or_else(|error| panic!("{address:?}: {error}"));
    }
}

#[test]
fn bad_addresses_are_refused() {
    for address in BAD_ADDRESSES {
        assert_invalid(check_address(address));
    }
    assert_invalid(check_address(&"a".repeat(MAX_ADDRESS_BYTES + 1)));
    assert_invalid(check_address(&"a".repeat(256)));
    check_address(&["a"; 512].join("/")[..MAX_ADDRESS_BYTES - 1]).unwrap();
}

#[test]
fn refused_address_messages_escape_and_shorten_it() {
    let error = check_address("a\0b").unwrap_err();
    assert_eq!(
        error.to_string(),
        r#"invalid artifact address "a\0b": it must not contain NUL"#
    );
    let long = "x".repeat(5000);
    let error = check_address(&long).unwrap_err();
    assert!(error.to_string().len() < 300, "{error}");
}

#[tokio::test]
async fn local_round_trip() {
    let setup = setup();
    let source = write(&setup.scratch.join("model.bin"), b"abc");
    let file = setup.store.put("task/out/0", &source).await.unwrap();
    assert_eq!(
        file,
        File {
            checksum: ABC_SHA256.to_owned(),
            storage_address: "task/out/0".to_owned(),
        }
    );
    assert_eq!(
        std::fs::read(setup.root.join("task/out/0")).unwrap(),
        b"abc"
    );

    let dest = setup.scratch.join("inputs/model");
    setup.store.fetch(&file, &dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"abc");
}

#[tokio::test]
async fn no_partial_file_is_left_after_success() {
    let setup = setup();
    let source = write(&setup.scratch.join("model.bin"), &vec![1; 200_000]);
    let file = setup.store.put("a/b", &source).await.unwrap();
    setup
        .store
        .fetch(&file, &setup.scratch.join("fetched"))
        .await
        .unwrap();
    assert_eq!(tree(&setup.root), ["a", "a/b"]);
    assert_eq!(tree(&setup.scratch), ["fetched", "model.bin"]);
}

#[tokio::test]
async fn putting_the_same_content_twice_is_fine_and_new_content_replaces() {
    let setup = setup();
    let source = write(&setup.scratch.join("model.bin"), b"abc");
    let first = setup.store.put("m", &source).await.unwrap();
    let second = setup.store.put("m", &source).await.unwrap();
    assert_eq!(first, second);

    write(&source, b"other");
    let third = setup.store.put("m", &source).await.unwrap();
    assert_ne!(third.checksum, first.checksum);
    assert_eq!(std::fs::read(setup.root.join("m")).unwrap(), b"other");
    assert_eq!(tree(&setup.root), ["m"]);
}

#[tokio::test]
async fn checksum_mismatch_leaves_nothing_at_dest() {
    let setup = setup();
    let source = write(&setup.scratch.join("model.bin"), b"abc");
    let mut file = setup.store.put("m", &source).await.unwrap();
    file.checksum = "0".repeat(64);
    let dest = setup.scratch.join("fetched");
    let error = setup.store.fetch(&file, &dest).await.unwrap_err();
    match &error {
        ArtifactError::ChecksumMismatch {
            address,
            expected,
            actual,
        } => {
            assert_eq!(address, "m");
            assert_eq!(expected, &"0".repeat(64));
            assert_eq!(actual, ABC_SHA256);
        }
        other => panic!("expected ChecksumMismatch, got {other:?}"),
    }
    assert!(!dest.exists());
    assert_eq!(tree(&setup.scratch), ["model.bin"]);
}

#[tokio::test]
async fn an_uppercase_checksum_matches() {
    let setup = setup();
    let source = write(&setup.scratch.join("model.bin"), b"abc");
    let mut file = setup.store.put("m", &source).await.unwrap();
    file.checksum = file.checksum.to_uppercase();
    setup
        .store
        .fetch(&file, &setup.scratch.join("fetched"))
        .await
        .unwrap();
}

#[tokio::test]
async fn fetching_a_missing_address_is_not_found() {
    let setup = setup();
    for address in ["missing", "missing/dir/file"] {
        let file = File {
            checksum: ABC_SHA256.to_owned(),
            storage_address: address.to_owned(),
        };
        let error = setup
            .store
            .fetch(&file, &setup.scratch.join("fetched"))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, ArtifactError::NotFound { address: found } if found == address),
            "{error:?}"
        );
        assert_eq!(error.to_string(), format!("no artifact at `{address}`"));
    }
    assert!(tree(&setup.root).is_empty());
}

#[tokio::test]
async fn bad_addresses_are_refused_by_the_local_store() {
    let setup = setup();
    let source = write(&setup.scratch.join("model.bin"), b"abc");
    for address in BAD_ADDRESSES {
        assert_invalid(setup.store.put(address, &source).await);
        let file = File {
            checksum: ABC_SHA256.to_owned(),
            storage_address: address.to_owned(),
        };
        assert_invalid(setup.store.fetch(&file, &setup.scratch.join("x")).await);
    }
    assert!(tree(&setup.root).is_empty());
    assert_eq!(tree(&setup.scratch), ["model.bin"]);
}

#[tokio::test]
async fn a_symlink_leading_outside_the_root_is_refused() {
    let setup = setup();
    let outside = setup.scratch.join("outside");
    std::fs::create_dir(&outside).unwrap();
    write(&outside.join("secret"), b"abc");
    std::os::unix::fs::symlink(&outside, setup.root.join("link")).unwrap();
    let source = write(&setup.scratch.join("model.bin"), b"abc");

    assert_invalid(setup.store.put("link/x", &source).await);
    assert_invalid(setup.store.put("link/sub/x", &source).await);
    let file = File {
        checksum: ABC_SHA256.to_owned(),
        storage_address: "link/secret".to_owned(),
    };
    let dest = setup.scratch.join("fetched");
    assert_invalid(setup.store.fetch(&file, &dest).await);

    assert_eq!(tree(&outside), ["secret"], "nothing was created outside");
    assert!(!dest.exists());
}

#[tokio::test]
async fn a_symlink_nested_deeper_leading_outside_is_refused() {
    let setup = setup();
    let outside = setup.scratch.join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::create_dir_all(setup.root.join("a/b")).unwrap();
    std::os::unix::fs::symlink("../../../scratch/outside", setup.root.join("a/b/up")).unwrap();
    let source = write(&setup.scratch.join("model.bin"), b"abc");
    assert_invalid(setup.store.put("a/b/up/x", &source).await);
    assert!(tree(&outside).is_empty());
}

#[tokio::test]
async fn a_symlink_inside_the_root_leading_inside_is_followed() {
    let setup = setup();
    std::fs::create_dir(setup.root.join("real")).unwrap();
    std::os::unix::fs::symlink(setup.root.join("real"), setup.root.join("alias")).unwrap();
    let source = write(&setup.scratch.join("model.bin"), b"abc");
    let file = setup.store.put("alias/m", &source).await.unwrap();
    assert_eq!(std::fs::read(setup.root.join("real/m")).unwrap(), b"abc");
    setup
        .store
        .fetch(&file, &setup.scratch.join("fetched"))
        .await
        .unwrap();
}

#[tokio::test]
async fn fetching_a_file_that_is_a_symlink_is_refused() {
    let setup = setup();
    write(&setup.root.join("real"), b"abc");
    std::os::unix::fs::symlink(setup.root.join("real"), setup.root.join("inside")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", setup.root.join("passwd")).unwrap();
    for address in ["inside", "passwd"] {
        let file = File {
            checksum: ABC_SHA256.to_owned(),
            storage_address: address.to_owned(),
        };
        let dest = setup.scratch.join("fetched");
        assert_invalid(setup.store.fetch(&file, &dest).await);
        assert!(!dest.exists());
    }
}

#[tokio::test]
async fn a_file_where_a_directory_is_expected_is_refused() {
    let setup = setup();
    let source = write(&setup.scratch.join("model.bin"), b"abc");
    setup.store.put("a", &source).await.unwrap();
    assert_invalid(setup.store.put("a/b", &source).await);
    std::fs::create_dir(setup.root.join("dir")).unwrap();
    let file = File {
        checksum: ABC_SHA256.to_owned(),
        storage_address: "dir".to_owned(),
    };
    assert_invalid(setup.store.fetch(&file, &setup.scratch.join("x")).await);
}

#[tokio::test]
async fn a_missing_source_is_an_io_error_naming_it() {
    let setup = setup();
    let source = setup.scratch.join("missing.bin");
    let error = setup.store.put("m", &source).await.unwrap_err();
    assert!(matches!(error, ArtifactError::Io { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .starts_with(&format!("could not open `{}`: ", source.display())),
        "{error}"
    );
}

/// An [`Abandoned`] already set: nobody waits for the operation.
fn abandoned() -> Abandoned {
    let abandoned = Abandoned::default();
    drop(AbandonOnDrop(abandoned.clone()));
    abandoned
}

#[tokio::test]
async fn an_abandoned_put_stores_nothing() {
    let setup = setup();
    let source = write(&setup.scratch.join("model.bin"), &vec![1; 200_000]);
    let error = setup
        .store
        .put_file("a/b", &source, &abandoned())
        .unwrap_err();
    assert!(matches!(error, ArtifactError::Io { .. }), "{error:?}");
    // The directory is made before the copy starts; no file is left in it.
    assert_eq!(tree(&setup.root), ["a"]);
}

#[tokio::test]
async fn an_abandoned_fetch_leaves_nothing() {
    let setup = setup();
    let source = write(&setup.scratch.join("model.bin"), &vec![1; 200_000]);
    let file = setup.store.put("a/b", &source).await.unwrap();
    let dest = setup.scratch.join("inputs/model");
    let error = setup
        .store
        .fetch_file(&file, &dest, &abandoned())
        .unwrap_err();
    assert!(matches!(error, ArtifactError::Io { .. }), "{error:?}");
    assert_eq!(tree(&setup.scratch), ["model.bin"]);
}

#[tokio::test]
async fn a_fetch_waited_for_is_not_abandoned() {
    let setup = setup();
    let source = write(&setup.scratch.join("model.bin"), b"abc");
    let file = setup.store.put("a/b", &source).await.unwrap();
    let abandoned = Abandoned::default();
    let dest = setup.scratch.join("fetched");
    setup.store.fetch_file(&file, &dest, &abandoned).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"abc");
}

#[test]
fn local_store_describes_its_root() {
    let setup = setup();
    assert_eq!(
        setup.store.describe(),
        format!("local:{}", setup.root.display())
    );
    assert_eq!(setup.store.root(), setup.root);
}

#[test]
fn the_store_is_usable_as_a_trait_object() {
    let setup = setup();
    let store: std::sync::Arc<dyn ArtifactStore> = std::sync::Arc::new(setup.store.clone());
    assert!(store.describe().starts_with("local:"));
}

#[cfg(feature = "s3")]
mod object_store_backed {
    use std::sync::Arc;

    use object_store::memory::InMemory;
    use object_store::path::Path as ObjectPath;
    use object_store::{ObjectStore, ObjectStoreExt};

    use super::*;

    fn in_memory() -> (Arc<InMemory>, ObjectStoreArtifacts) {
        let memory = Arc::new(InMemory::new());
        let store = ObjectStoreArtifacts::new(memory.clone() as Arc<dyn ObjectStore>);
        (memory, store)
    }

    async fn stored(memory: &InMemory, address: &str) -> Option<Vec<u8>> {
        match memory.get(&ObjectPath::from(address)).await {
            Ok(result) => Some(result.bytes().await.unwrap().to_vec()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(error) => panic!("{error}"),
        }
    }

    #[tokio::test]
    async fn round_trip_in_one_request() {
        let setup = setup();
        let (memory, store) = in_memory();
        let source = write(&setup.scratch.join("model.bin"), b"abc");
        let file = store.put("task/out/0", &source).await.unwrap();
        assert_eq!(file.checksum, ABC_SHA256);
        assert_eq!(file.storage_address, "task/out/0");
        assert_eq!(stored(&memory, "task/out/0").await.unwrap(), b"abc");

        let dest = setup.scratch.join("inputs/model");
        store.fetch(&file, &dest).await.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"abc");
        assert_eq!(
            tree(&setup.scratch),
            ["inputs", "inputs/model", "model.bin"]
        );
    }

    #[tokio::test]
    async fn round_trip_in_parts() {
        let setup = setup();
        let (memory, store) = in_memory();
        let store = store.with_part_bytes(1000);
        let content: Vec<u8> = (0..250_000_u32).map(|n| (n % 251) as u8).collect();
        let source = write(&setup.scratch.join("model.bin"), &content);
        let file = store.put("big", &source).await.unwrap();
        assert_eq!(file.checksum, sha256_file(&source).await.unwrap());
        assert_eq!(stored(&memory, "big").await.unwrap(), content);

        let dest = setup.scratch.join("fetched");
        store.fetch(&file, &dest).await.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), content);
    }

    #[tokio::test]
    async fn checksum_mismatch_leaves_nothing_at_dest() {
        let setup = setup();
        let (_memory, store) = in_memory();
        let source = write(&setup.scratch.join("model.bin"), b"abc");
        let mut file = store.put("m", &source).await.unwrap();
        file.checksum = "f".repeat(64);
        let dest = setup.scratch.join("fetched");
        let error = store.fetch(&file, &dest).await.unwrap_err();
        assert!(
            matches!(error, ArtifactError::ChecksumMismatch { .. }),
            "{error:?}"
        );
        assert_eq!(tree(&setup.scratch), ["model.bin"]);
    }

    #[tokio::test]
    async fn missing_objects_are_not_found() {
        let setup = setup();
        let (_memory, store) = in_memory();
        let file = File {
            checksum: ABC_SHA256.to_owned(),
            storage_address: "missing".to_owned(),
        };
        let error = store
            .fetch(&file, &setup.scratch.join("x"))
            .await
            .unwrap_err();
        assert!(matches!(error, ArtifactError::NotFound { .. }), "{error:?}");
    }

    #[tokio::test]
    async fn bad_addresses_are_refused() {
        let setup = setup();
        let (memory, store) = in_memory();
        let source = write(&setup.scratch.join("model.bin"), b"abc");
        for address in BAD_ADDRESSES {
            assert_invalid(store.put(address, &source).await);
            let file = File {
                checksum: ABC_SHA256.to_owned(),
                storage_address: address.to_owned(),
            };
            assert_invalid(store.fetch(&file, &setup.scratch.join("x")).await);
        }
        let listed: Vec<_> = futures::StreamExt::collect(memory.list(None)).await;
        assert!(listed.is_empty());
    }

    #[test]
    fn s3_settings_build_a_store_and_hide_the_secret() {
        let settings = S3Settings {
            bucket: "models".to_owned(),
            endpoint: Some("http://127.0.0.1:9000".to_owned()),
            region: "us-east-1".to_owned(),
            access_key_id: "baton".to_owned(),
            secret_access_key: models::Secret("hunter2-secret".to_owned()),
            allow_http: true,
        };
        assert!(!format!("{settings:?}").contains("hunter2"));
        let store = ObjectStoreArtifacts::s3(&settings).unwrap();
        assert_eq!(store.describe(), "object_store:AmazonS3(models)");
        assert!(!format!("{store:?}").contains("hunter2"));
    }

    #[test]
    fn describe_names_the_backend() {
        let (_memory, store) = in_memory();
        assert_eq!(store.describe(), "object_store:InMemory");
    }
}

#[tokio::test]
async fn a_file_taken_is_moved_into_the_store_and_a_linked_one_copied() {
    let setup = setup();
    // A file of its own moves: nothing is left in the scratch directory, nothing partial in
    // the store.
    let own = write(&setup.scratch.join("own"), b"abc");
    let stored = setup
        .store
        .put_taking("models/t/1/model", &own)
        .await
        .unwrap();
    assert_eq!(stored.checksum, ABC_SHA256);
    assert_eq!(stored.storage_address, "models/t/1/model");
    assert!(!own.exists(), "moved, not copied");
    assert_eq!(
        tree(&setup.root),
        vec!["models", "models/t", "models/t/1", "models/t/1/model"]
    );
    let fetched = setup.scratch.join("fetched");
    setup.store.fetch(&stored, &fetched).await.unwrap();
    assert_eq!(std::fs::read(&fetched).unwrap(), b"abc");

    // A file with another link (here `fetched`, hard-linked) and a symbolic link are copied:
    // their other names keep what they name, and the store gets a file of its own.
    let linked = setup.scratch.join("linked");
    std::fs::hard_link(&fetched, &linked).unwrap();
    let copied = setup
        .store
        .put_taking("models/t/2/model", &linked)
        .await
        .unwrap();
    assert_eq!(copied.checksum, ABC_SHA256);
    assert!(linked.exists() && fetched.exists());
    let symlink = setup.scratch.join("symlink");
    std::os::unix::fs::symlink(&fetched, &symlink).unwrap();
    let through = setup
        .store
        .put_taking("models/t/3/model", &symlink)
        .await
        .unwrap();
    assert_eq!(through.checksum, ABC_SHA256);
    assert!(
        std::fs::symlink_metadata(setup.root.join("models/t/3/model"))
            .unwrap()
            .file_type()
            .is_file(),
        "the store holds a file, not the link"
    );
    assert!(symlink.exists());
    std::fs::write(&fetched, b"changed").unwrap();
    for address in ["models/t/2/model", "models/t/3/model"] {
        assert_eq!(std::fs::read(setup.root.join(address)).unwrap(), b"abc");
    }
    assert_invalid(setup.store.put_taking("../x", &fetched).await);
}

#[tokio::test]
async fn a_file_taken_unsynced_is_in_place_at_once_and_synced_after() {
    let setup = setup();
    let own = write(&setup.scratch.join("own"), b"abc");
    let (stored, syncing) = setup
        .store
        .put_taking_unsynced("models/t/1/model", &own)
        .await
        .unwrap();
    assert_eq!(stored.checksum, ABC_SHA256);
    assert!(!own.exists(), "moved, not copied");
    // Fetchable before its sync ends (a chain's next link reads it meanwhile).
    let fetched = setup.scratch.join("fetched");
    setup.store.fetch(&stored, &fetched).await.unwrap();
    assert_eq!(std::fs::read(&fetched).unwrap(), b"abc");
    syncing.wait().await.unwrap();

    // A file the store copies (another link to it) is synced before it is returned.
    let linked = setup.scratch.join("linked");
    std::fs::hard_link(&fetched, &linked).unwrap();
    let (copied, syncing) = setup
        .store
        .put_taking_unsynced("models/t/2/model", &linked)
        .await
        .unwrap();
    assert_eq!(copied.checksum, ABC_SHA256);
    assert!(syncing.0.is_none(), "nothing left to wait for");
    assert_invalid(
        setup
            .store
            .put_taking_unsynced("../x", &fetched)
            .await
            .map(|(file, _)| file),
    );
}

#[tokio::test]
async fn a_read_only_fetch_links_the_stored_file_and_copies_a_writable_one() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let setup = setup();
    let inode = |path: &Path| std::fs::metadata(path).unwrap().ino();
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    // What the store keeps is read-only, whether copied or moved in.
    let copied_in = setup
        .store
        .put("m/1", &write(&setup.scratch.join("model.bin"), b"abc"))
        .await
        .unwrap();
    let moved_in = setup
        .store
        .put_taking("m/2", &write(&setup.scratch.join("own"), b"abc"))
        .await
        .unwrap();
    assert_eq!(mode(&setup.root.join("m/1")), 0o444);
    assert_eq!(mode(&setup.root.join("m/2")), 0o444);

    // A read-only fetch links the stored file: no new file, the same content.
    let linked = setup.scratch.join("inputs/linked");
    std::fs::create_dir(setup.scratch.join("inputs")).unwrap();
    setup
        .store
        .fetch_read_only(&copied_in, &linked)
        .await
        .unwrap();
    assert_eq!(inode(&linked), inode(&setup.root.join("m/1")));
    assert_eq!(std::fs::read(&linked).unwrap(), b"abc");
    setup
        .store
        .fetch_read_only(&moved_in, &setup.scratch.join("inputs/moved"))
        .await
        .unwrap();
    assert_eq!(
        inode(&setup.scratch.join("inputs/moved")),
        inode(&setup.root.join("m/2"))
    );
    // Removing the link (the workspace emptied) leaves the stored file.
    std::fs::remove_file(&linked).unwrap();
    assert_eq!(std::fs::read(setup.root.join("m/1")).unwrap(), b"abc");

    // A plain fetch still copies, into a file the caller may write.
    let copy = setup.scratch.join("copy");
    setup.store.fetch(&copied_in, &copy).await.unwrap();
    assert_ne!(inode(&copy), inode(&setup.root.join("m/1")));
    assert_ne!(mode(&copy) & 0o200, 0);

    // A stored file someone made writable (as stores written before were) is copied.
    std::fs::set_permissions(
        setup.root.join("m/1"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let writable = setup.scratch.join("inputs/writable");
    setup
        .store
        .fetch_read_only(&copied_in, &writable)
        .await
        .unwrap();
    assert_ne!(inode(&writable), inode(&setup.root.join("m/1")));
    assert_eq!(std::fs::read(&writable).unwrap(), b"abc");

    // A wrong checksum links nothing; a missing directory is the copy's to make.
    let mut wrong = moved_in.clone();
    wrong.checksum = "0".repeat(64);
    let refused = setup.scratch.join("inputs/refused");
    match setup.store.fetch_read_only(&wrong, &refused).await {
        Err(ArtifactError::ChecksumMismatch { actual, .. }) => assert_eq!(actual, ABC_SHA256),
        other => panic!("expected ChecksumMismatch, got {other:?}"),
    }
    assert!(!refused.exists());
    let nested = setup.scratch.join("new/dir/model");
    setup
        .store
        .fetch_read_only(&moved_in, &nested)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&nested).unwrap(), b"abc");
    assert_eq!(
        tree(&setup.scratch)
            .into_iter()
            .filter(|entry| entry.contains(".baton-partial"))
            .count(),
        0
    );
}

#[tokio::test]
async fn a_read_only_fetch_here_links_and_checks_as_the_pooled_one_does() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let setup = setup();
    let inode = |path: &Path| std::fs::metadata(path).unwrap().ino();
    let stored = setup
        .store
        .put_taking("m/1", &write(&setup.scratch.join("own"), b"abc"))
        .await
        .unwrap();
    std::fs::create_dir(setup.scratch.join("inputs")).unwrap();
    // Linked, on the caller's thread.
    let linked = setup.scratch.join("inputs/linked");
    setup
        .store
        .fetch_read_only_here(&stored, &linked)
        .await
        .unwrap();
    assert_eq!(inode(&linked), inode(&setup.root.join("m/1")));
    // A wrong checksum links nothing.
    let mut wrong = stored.clone();
    wrong.checksum = "0".repeat(64);
    let refused = setup.scratch.join("inputs/refused");
    match setup.store.fetch_read_only_here(&wrong, &refused).await {
        Err(ArtifactError::ChecksumMismatch { actual, .. }) => assert_eq!(actual, ABC_SHA256),
        other => panic!("expected ChecksumMismatch, got {other:?}"),
    }
    assert!(!refused.exists());
    // A stored file made writable is copied.
    std::fs::set_permissions(
        setup.root.join("m/1"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let copied = setup.scratch.join("inputs/copied");
    setup
        .store
        .fetch_read_only_here(&stored, &copied)
        .await
        .unwrap();
    assert_ne!(inode(&copied), inode(&setup.root.join("m/1")));
    assert_eq!(std::fs::read(&copied).unwrap(), b"abc");
    // An address that is not one is refused, as by the pooled fetch.
    let mut escaping = stored.clone();
    escaping.storage_address = "../outside".to_owned();
    assert!(
        setup
            .store
            .fetch_read_only_here(&escaping, &setup.scratch.join("inputs/escaping"))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn many_read_only_fetches_are_linked_in_shares_and_answered_in_order() {
    use std::os::unix::fs::MetadataExt as _;
    let setup = setup();
    let inode = |path: &Path| std::fs::metadata(path).unwrap().ino();
    // More than one thread's share, with a file missing and one with a wrong checksum.
    let count = FETCHES_PER_THREAD * 2 + 5;
    let mut fetches = Vec::new();
    for n in 0..count {
        let own = write(
            &setup.scratch.join(format!("own-{n}")),
            format!("{n}").as_bytes(),
        );
        let stored = setup
            .store
            .put_taking(&format!("m/{n}"), &own)
            .await
            .unwrap();
        fetches.push((stored, setup.scratch.join(format!("inputs/{n}"))));
    }
    std::fs::create_dir(setup.scratch.join("inputs")).unwrap();
    let missing = FETCHES_PER_THREAD + 1;
    fetches[missing].0.storage_address = "m/gone".to_owned();
    let wrong = count - 1;
    fetches[wrong].0.checksum = "0".repeat(64);

    let results = setup.store.fetch_many_read_only(&fetches).await;

    assert_eq!(results.len(), count);
    for (n, ((_, dest), result)) in fetches.iter().zip(&results).enumerate() {
        match n {
            _ if n == missing => assert!(
                matches!(result, Err(ArtifactError::NotFound { .. })),
                "{n}: {result:?}"
            ),
            _ if n == wrong => assert!(
                matches!(result, Err(ArtifactError::ChecksumMismatch { .. })),
                "{n}: {result:?}"
            ),
            _ => {
                assert!(result.is_ok(), "{n}: {result:?}");
                assert_eq!(inode(dest), inode(&setup.root.join(format!("m/{n}"))));
                assert_eq!(std::fs::read(dest).unwrap(), format!("{n}").as_bytes());
            }
        }
    }
    assert!(!fetches[missing].1.exists() && !fetches[wrong].1.exists());
}
