use std::path::{Path, PathBuf};

use models::{Attempt, TaskKey};
use tempfile::TempDir;
use uuid::Uuid;

use super::*;

const TASK: TaskKey = TaskKey(Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef));

async fn setup() -> (TempDir, Workspace) {
    let base = tempfile::tempdir().unwrap();
    let workspace = Workspace::create(base.path(), TASK, Attempt(2), &[])
        .await
        .unwrap();
    (base, workspace)
}

fn write(path: &Path, content: &[u8]) {
    std::fs::write(path, content).unwrap();
}

fn relative(workspace: &Workspace, paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|path| {
            path.strip_prefix(workspace.root())
                .unwrap()
                .display()
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn create_lays_out_the_attempt_directory() {
    let (base, workspace) = setup().await;
    let root = std::fs::canonicalize(base.path())
        .unwrap()
        .join("01234567-89ab-cdef-0123-456789abcdef-2");
    assert_eq!(workspace.root(), root);
    assert_eq!(workspace.work_dir(), root.join("work"));
    assert_eq!(workspace.inputs_dir(), root.join("inputs"));
    assert_eq!(workspace.outputs_dir(), root.join("outputs"));
    assert_eq!(
        workspace.measurements_path(),
        root.join("measurements.jsonl")
    );
    for dir in [
        workspace.work_dir(),
        workspace.inputs_dir(),
        workspace.outputs_dir(),
    ] {
        assert!(std::fs::symlink_metadata(&dir).unwrap().is_dir(), "{dir:?}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }
    assert_eq!(std::fs::read(workspace.measurements_path()).unwrap(), b"");
}

#[tokio::test]
async fn create_makes_the_base_and_resolves_it() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("not/yet/there");
    let workspace = Workspace::create(&base, TASK, Attempt::FIRST, &[])
        .await
        .unwrap();
    assert!(workspace.root().is_absolute());
    assert!(
        workspace
            .root()
            .starts_with(std::fs::canonicalize(&base).unwrap())
    );
}

#[tokio::test]
async fn creating_the_same_attempt_twice_is_refused() {
    let (base, _workspace) = setup().await;
    let error = Workspace::create(base.path(), TASK, Attempt(2), &[])
        .await
        .unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
    Workspace::create(base.path(), TASK, Attempt(3), &[])
        .await
        .unwrap();
}

#[tokio::test]
async fn env_gives_absolute_paths() {
    let (_base, workspace) = setup().await;
    let root = workspace.root().display().to_string();
    assert_eq!(
        workspace.env(),
        [
            ("BATON_WORKSPACE".to_owned(), root.clone()),
            ("BATON_INPUTS".to_owned(), format!("{root}/inputs")),
            ("BATON_OUTPUTS".to_owned(), format!("{root}/outputs")),
            (
                "BATON_MEASUREMENTS".to_owned(),
                format!("{root}/measurements.jsonl")
            ),
        ]
    );
    assert!(root.starts_with('/'));
}

#[tokio::test]
async fn input_paths_are_under_inputs() {
    let (_base, workspace) = setup().await;
    let single = workspace.input_path("model", false, 0).await.unwrap();
    assert_eq!(single, workspace.inputs_dir().join("model"));
    assert!(
        !single.exists(),
        "a single input's path is left to the fetch"
    );

    let first = workspace.input_path("models", true, 0).await.unwrap();
    let second = workspace.input_path("models", true, 1).await.unwrap();
    assert_eq!(
        relative(&workspace, &[first, second]),
        ["inputs/models/0", "inputs/models/1"]
    );
    assert!(workspace.inputs_dir().join("models").is_dir());
}

#[tokio::test]
async fn the_values_of_a_multiple_input_can_be_placed_at_once() {
    let (_base, workspace) = setup().await;
    let paths =
        futures::future::join_all((0..32).map(|index| workspace.input_path("models", true, index)))
            .await;
    for (index, path) in paths.into_iter().enumerate() {
        assert_eq!(
            path.unwrap(),
            workspace.inputs_dir().join(format!("models/{index}"))
        );
    }
    assert!(workspace.inputs_dir().join("models").is_dir());
}

#[tokio::test]
async fn identifiers_that_try_to_escape_are_refused() {
    let (_base, workspace) = setup().await;
    let long = "x".repeat(MAX_IDENTIFIER_CHARS + 1);
    for identifier in [
        "",
        ".",
        "..",
        "../x",
        "a/b",
        "/etc",
        "a\\b",
        "a\0b",
        "a\nb",
        long.as_str(),
    ] {
        for multiple in [false, true] {
            let input = workspace.input_path(identifier, multiple, 0).await;
            assert!(
                matches!(input, Err(WorkspaceError::InvalidIdentifier { .. })),
                "{identifier:?}: {input:?}"
            );
            let output = workspace.collect_output(identifier, multiple).await;
            assert!(
                matches!(output, Err(WorkspaceError::InvalidIdentifier { .. })),
                "{identifier:?}: {output:?}"
            );
        }
    }
    check_identifier(&"x".repeat(MAX_IDENTIFIER_CHARS)).unwrap();
    check_identifier("modèle.v2-final").unwrap();
    assert_eq!(
        check_identifier("a/b").unwrap_err().to_string(),
        r#"invalid input or output identifier "a/b": it must not contain `/` or `\`"#
    );
}

#[tokio::test]
async fn a_single_output_is_its_file() {
    let (_base, workspace) = setup().await;
    write(&workspace.outputs_dir().join("model"), b"weights");
    let files = workspace.collect_output("model", false).await.unwrap();
    assert_eq!(relative(&workspace, &files), ["outputs/model"]);
}

#[tokio::test]
async fn a_missing_output_says_what_was_expected_where() {
    let (_base, workspace) = setup().await;
    let error = workspace.collect_output("x", false).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "output `x` was not written: expected a file at outputs/x"
    );
    let error = workspace.collect_output("x", true).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "output `x` was not written: expected a directory of files at outputs/x"
    );
}

#[tokio::test]
async fn a_directory_where_a_file_is_expected_is_refused() {
    let (_base, workspace) = setup().await;
    std::fs::create_dir(workspace.outputs_dir().join("model")).unwrap();
    let error = workspace.collect_output("model", false).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "output `model` must be a file at outputs/model, found a directory"
    );

    write(&workspace.outputs_dir().join("many"), b"one file");
    let error = workspace.collect_output("many", true).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "output `many` must be a directory of files at outputs/many, found a file"
    );
}

#[tokio::test]
async fn symlink_outputs_are_refused() {
    let (_base, workspace) = setup().await;
    std::os::unix::fs::symlink("/etc/passwd", workspace.outputs_dir().join("model")).unwrap();
    let error = workspace.collect_output("model", false).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "output `model` is a symbolic link at outputs/model: outputs must be regular files"
    );

    let many = workspace.outputs_dir().join("many");
    std::fs::create_dir(&many).unwrap();
    write(&many.join("a"), b"a");
    std::os::unix::fs::symlink("/etc/passwd", many.join("b")).unwrap();
    let error = workspace.collect_output("many", true).await.unwrap_err();
    assert!(
        matches!(&error, WorkspaceError::OutputIsSymlink { path, .. } if path == "outputs/many/b"),
        "{error:?}"
    );

    std::os::unix::fs::symlink("/etc", workspace.outputs_dir().join("dir")).unwrap();
    let error = workspace.collect_output("dir", true).await.unwrap_err();
    assert!(
        matches!(error, WorkspaceError::OutputIsSymlink { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn outputs_replaced_by_a_symlink_are_refused() {
    let (_base, workspace) = setup().await;
    std::fs::remove_dir(workspace.outputs_dir()).unwrap();
    std::os::unix::fs::symlink("/etc", workspace.outputs_dir()).unwrap();
    let error = workspace.collect_output("passwd", false).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "the workspace's outputs/ is no longer a directory"
    );
}

#[tokio::test]
async fn multiple_outputs_are_collected_sorted_by_name() {
    let (_base, workspace) = setup().await;
    let many = workspace.outputs_dir().join("models");
    std::fs::create_dir(&many).unwrap();
    for name in ["b", "a", "c.bin", "10", "2"] {
        write(&many.join(name), name.as_bytes());
    }
    let files = workspace.collect_output("models", true).await.unwrap();
    assert_eq!(
        relative(&workspace, &files),
        [
            "outputs/models/10",
            "outputs/models/2",
            "outputs/models/a",
            "outputs/models/b",
            "outputs/models/c.bin",
        ]
    );
}

#[tokio::test]
async fn an_empty_or_nested_multiple_output_is_refused() {
    let (_base, workspace) = setup().await;
    let many = workspace.outputs_dir().join("models");
    std::fs::create_dir(&many).unwrap();
    let error = workspace.collect_output("models", true).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "output `models` is empty: expected at least one file in outputs/models/"
    );

    std::fs::create_dir(many.join("sub")).unwrap();
    let error = workspace.collect_output("models", true).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "output `models` must be a file at outputs/models/sub, found a directory"
    );
}

#[tokio::test]
async fn finish_removes_the_directory() {
    let (_base, workspace) = setup().await;
    let root = workspace.root().to_owned();
    write(&workspace.work_dir().join("scratch"), b"x");
    assert_eq!(workspace.finish(false).await.unwrap(), None);
    assert!(!root.exists());
}

#[tokio::test]
async fn finish_keeps_the_directory_when_asked() {
    let (_base, workspace) = setup().await;
    let root = workspace.root().to_owned();
    assert_eq!(workspace.finish(true).await.unwrap(), Some(root.clone()));
    assert!(root.join("outputs").is_dir());
}

#[tokio::test]
async fn finish_removes_directories_a_step_made_read_only() {
    use std::os::unix::fs::PermissionsExt;

    let (_base, workspace) = setup().await;
    let root = workspace.root().to_owned();
    let locked = workspace.work_dir().join("cache/locked");
    std::fs::create_dir_all(&locked).unwrap();
    write(&locked.join("file"), b"x");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o500)).unwrap();
    assert_eq!(workspace.finish(false).await.unwrap(), None);
    assert!(!root.exists());
}

#[tokio::test]
async fn finish_does_not_follow_symlinks_out_of_the_workspace() {
    let (base, workspace) = setup().await;
    let outside = base.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    write(&outside.join("keep"), b"x");
    std::os::unix::fs::symlink(&outside, workspace.work_dir().join("link")).unwrap();
    workspace.finish(false).await.unwrap();
    assert!(outside.join("keep").exists());
}

/// The hidden spares in `base`.
fn spares_in(base: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(base)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(SPARE_PREFIX))
        })
        .collect()
}

#[tokio::test]
async fn a_finished_workspace_is_emptied_and_reused_by_the_next_attempt() {
    use std::os::unix::fs::MetadataExt;

    let (base, workspace) = setup().await;
    let root = workspace.root().to_owned();
    write(&workspace.work_dir().join("scratch"), b"x");
    std::fs::create_dir_all(workspace.inputs_dir().join("data/nested")).unwrap();
    write(&workspace.inputs_dir().join("data/nested/file"), b"x");
    write(&workspace.outputs_dir().join("model"), b"x");
    write(&workspace.measurements_path(), b"{\"channel\":\"loss\"}\n");
    write(&root.join("left-at-the-root"), b"x");
    std::os::unix::fs::symlink(base.path(), workspace.work_dir().join("link")).unwrap();
    assert_eq!(workspace.finish(false).await.unwrap(), None);
    assert!(!root.exists());
    let spares = spares_in(base.path());
    assert_eq!(spares.len(), 1, "kept as a spare: {spares:?}");
    let work_inode = std::fs::metadata(spares[0].join("work")).unwrap().ino();

    let next = Workspace::create(base.path(), TASK, Attempt(3), &[])
        .await
        .unwrap();
    assert!(spares_in(base.path()).is_empty(), "the spare was reused");
    assert_eq!(
        std::fs::metadata(next.work_dir()).unwrap().ino(),
        work_inode,
        "the same directory, renamed"
    );
    for dir in [next.work_dir(), next.inputs_dir(), next.outputs_dir()] {
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "{dir:?} empty");
    }
    assert_eq!(std::fs::read(next.measurements_path()).unwrap(), b"");
    let mut names: Vec<String> = std::fs::read_dir(next.root())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["inputs", "measurements.jsonl", "outputs", "work"]);
    assert!(base.path().exists(), "the symbolic link was not followed");
}

#[tokio::test]
async fn a_multiple_inputs_directory_is_kept_for_an_attempt_fetching_the_same_input_only() {
    use std::os::unix::fs::MetadataExt;

    let (base, workspace) = setup().await;
    let stored = base.path().join("stored");
    write(&stored, b"x");
    for index in 0..2 {
        let value = workspace.input_path("models", true, index).await.unwrap();
        std::fs::hard_link(&stored, value).unwrap();
    }
    // One holding a directory (a step's doing), and a symbolic link to one: not kept.
    let data = workspace.input_path("data", true, 0).await.unwrap();
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::symlink(base.path(), workspace.inputs_dir().join("linked")).unwrap();
    let models_inode = std::fs::metadata(workspace.inputs_dir().join("models"))
        .unwrap()
        .ino();
    assert_eq!(workspace.finish(false).await.unwrap(), None);
    let spares = spares_in(base.path());
    assert_eq!(spares.len(), 1);
    assert_eq!(names(&spares[0].join(INPUTS)), ["models"], "emptied");
    assert_eq!(names(&spares[0].join(INPUTS).join("models")), [""; 0]);
    assert_eq!(
        std::fs::read(&stored).unwrap(),
        b"x",
        "the stored file stays"
    );

    // An attempt fetching `models` takes it as it is, on its own thread.
    let next = Workspace::create(base.path(), TASK, Attempt(3), &["models", "other"])
        .await
        .unwrap();
    assert_eq!(names(&next.inputs_dir()), ["models"]);
    assert_eq!(
        std::fs::metadata(next.inputs_dir().join("models"))
            .unwrap()
            .ino(),
        models_inode,
        "the same directory"
    );
    assert_eq!(
        next.input_path("models", true, 0).await.unwrap(),
        next.inputs_dir().join("models/0")
    );
    let other = next.input_path("other", true, 0).await.unwrap();
    assert!(
        other.parent().unwrap().is_dir(),
        "a directory not kept is made"
    );
    assert_eq!(next.finish(false).await.unwrap(), None);
    assert_eq!(
        names(&spares_in(base.path())[0].join(INPUTS)),
        ["models", "other"]
    );

    // An attempt fetching neither is given neither.
    let last = Workspace::create(base.path(), TASK, Attempt(4), &[])
        .await
        .unwrap();
    assert!(spares_in(base.path()).is_empty(), "the spare was taken");
    assert_eq!(names(&last.inputs_dir()), [""; 0]);
    assert_eq!(
        names(last.root()),
        ["inputs", "measurements.jsonl", "outputs", "work"]
    );
}

#[tokio::test]
async fn keeping_without_emptying_leaves_a_workspace_with_anything_in_it_untouched() {
    // What `finish` tries on the caller's thread: every leftover, and measurements to
    // truncate, send it to the blocking pool instead, with nothing removed meanwhile.
    type Place = fn(&Workspace) -> PathBuf;
    let leftovers: [(&str, Place); 5] = [
        ("work", |w| w.work_dir().join("scratch")),
        ("inputs", |w| w.inputs_dir().join("data")),
        ("outputs", |w| w.outputs_dir().join("model")),
        ("the root", |w| w.root().join("left-at-the-root")),
        ("measurements", |w| w.measurements_path()),
    ];
    for (place, path) in leftovers {
        let (base, workspace) = setup().await;
        let left = path(&workspace);
        write(&left, b"{}\n");
        assert!(
            !keep_as_spare(workspace.root(), workspace.mode, Emptying::Refused),
            "something left in {place}: not kept without emptying"
        );
        assert_eq!(std::fs::read(&left).unwrap(), b"{}\n", "{place}: untouched");
        assert!(spares_in(base.path()).is_empty(), "{place}: no spare");
        // The blocking pool's pass empties and keeps it.
        assert_eq!(workspace.finish(false).await.unwrap(), None);
        let spares = spares_in(base.path());
        assert_eq!(spares.len(), 1, "{place}: kept once emptied");
        assert_eq!(
            std::fs::metadata(spares[0].join(MEASUREMENTS))
                .unwrap()
                .len(),
            0,
            "{place}: measurements truncated"
        );
    }
}

#[tokio::test]
async fn an_empty_workspace_is_kept_without_emptying_and_its_base_resolved_once() {
    let (base, workspace) = setup().await;
    let root = workspace.root().to_owned();
    assert!(keep_as_spare(&root, workspace.mode, Emptying::Refused));
    assert!(!root.exists());
    assert_eq!(spares_in(base.path()).len(), 1);
    assert_eq!(
        resolved_base(base.path()),
        Some(std::fs::canonicalize(base.path()).unwrap()),
        "the next attempt takes the spare without resolving the base again"
    );
    let next = Workspace::create(base.path(), TASK, Attempt(3), &[])
        .await
        .unwrap();
    assert!(spares_in(base.path()).is_empty(), "the spare was taken");
    assert_eq!(next.root(), root.with_file_name(format!("{TASK}-3")));
}

#[tokio::test]
async fn a_workspace_whose_permissions_a_step_changed_is_removed_not_kept() {
    use std::os::unix::fs::PermissionsExt;

    let (base, workspace) = setup().await;
    let root = workspace.root().to_owned();
    let mode = permission_bits(&std::fs::metadata(workspace.work_dir()).unwrap());
    std::fs::set_permissions(
        workspace.outputs_dir(),
        std::fs::Permissions::from_mode(mode ^ 0o010),
    )
    .unwrap();
    assert_eq!(workspace.finish(false).await.unwrap(), None);
    assert!(!root.exists());
    assert!(spares_in(base.path()).is_empty(), "not kept");
}

#[tokio::test]
async fn a_spare_is_not_renamed_over_an_existing_directory() {
    let (base, workspace) = setup().await;
    workspace.finish(false).await.unwrap();
    assert_eq!(spares_in(base.path()).len(), 1);
    let taken = base.path().join(format!("{TASK}-3"));
    std::fs::create_dir(&taken).unwrap();
    let error = Workspace::create(base.path(), TASK, Attempt(3), &[])
        .await
        .unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read_dir(&taken).unwrap().count(), 0, "untouched");
    assert_eq!(spares_in(base.path()).len(), 1, "the spare is kept");
}

#[tokio::test]
async fn spares_left_by_stopped_processes_are_swept_on_first_use() {
    let base = tempfile::tempdir().unwrap();
    // No process has this id (above the kernel's limit); this one's id is a previous run's.
    let stale = [
        base.path().join(format!("{SPARE_PREFIX}4194305-0")),
        base.path()
            .join(format!("{SPARE_PREFIX}{}-999999", std::process::id())),
    ];
    for spare in &stale {
        std::fs::create_dir_all(spare.join("work")).unwrap();
    }
    let kept_failed = base.path().join("some-task-1");
    std::fs::create_dir(&kept_failed).unwrap();
    let workspace = Workspace::create(base.path(), TASK, Attempt(1), &[])
        .await
        .unwrap();
    for spare in &stale {
        assert!(!spare.exists(), "{spare:?} swept");
    }
    assert!(kept_failed.exists(), "other directories are left alone");
    workspace.finish(false).await.unwrap();
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_workspace_on_demand_is_made_once_when_asked_for_and_given_back_at_close() {
    let base = tempfile::tempdir().unwrap();
    let handle = WorkspaceHandle::on_demand(base.path(), TASK, Attempt(3));
    assert!(names(base.path()).is_empty(), "nothing made before asked");

    let dir = handle.work_dir().await.unwrap();
    let root = std::fs::canonicalize(base.path())
        .unwrap()
        .join("01234567-89ab-cdef-0123-456789abcdef-3");
    assert_eq!(dir, root.join("work"));
    assert!(std::fs::symlink_metadata(&dir).unwrap().is_dir());
    write(&dir.join("scratch"), b"x");
    assert_eq!(handle.clone().work_dir().await.unwrap(), dir, "made once");

    let workspace = handle.close().await.expect("the workspace made on demand");
    assert_eq!(workspace.root(), root);
    let error = handle.work_dir().await.unwrap_err();
    assert!(error.to_string().contains("the attempt is over"), "{error}");
    workspace.finish(false).await.unwrap();
    assert!(!root.exists(), "finished: {:?}", names(base.path()));
}

#[tokio::test]
async fn a_workspace_on_demand_never_asked_for_is_never_made() {
    let base = tempfile::tempdir().unwrap();
    let handle = WorkspaceHandle::on_demand(base.path(), TASK, Attempt(4));
    assert!(handle.close().await.is_none());
    assert!(handle.work_dir().await.is_err(), "closed");
    assert!(names(base.path()).is_empty());
}

/// A caller dropped while the workspace is being made (an aborted handler) leaves it to the
/// handle, so that what is on disk is always what `close` gives back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_made_for_a_dropped_caller_is_still_given_back() {
    for attempt in 1..=20 {
        let base = tempfile::tempdir().unwrap();
        let handle = WorkspaceHandle::on_demand(base.path(), TASK, Attempt(attempt));
        let asking = tokio::spawn({
            let handle = handle.clone();
            async move { handle.work_dir().await }
        });
        // Dropped at some point of its call, or after it.
        tokio::time::sleep(std::time::Duration::from_micros(u64::from(attempt) * 50)).await;
        asking.abort();
        let _ = asking.await;
        let workspace = handle.close().await;
        let on_disk = names(base.path());
        match workspace {
            Some(workspace) => {
                assert!(workspace.root().is_dir());
                assert_eq!(on_disk.len(), 1, "{on_disk:?}");
            }
            None => assert!(on_disk.is_empty(), "made but not given back: {on_disk:?}"),
        }
    }
}

#[tokio::test]
async fn a_ready_handle_gives_the_workspace_made_before() {
    let (_base, workspace) = setup().await;
    let handle = WorkspaceHandle::ready(&workspace);
    assert_eq!(handle.work_dir().await.unwrap(), workspace.work_dir());
    assert!(handle.close().await.is_none(), "the executor holds it");
    assert!(handle.work_dir().await.is_err());
}

#[tokio::test]
async fn a_few_fetched_values_are_removed_without_a_thread_hop_and_many_with_one() {
    let (base, workspace) = setup().await;
    let stored = base.path().join("stored");
    write(&stored, b"x");
    // A chain's link: its parent's model, linked, and a copied file.
    let linked = workspace.input_path("models", true, 0).await.unwrap();
    std::fs::hard_link(&stored, linked).unwrap();
    write(
        &workspace.input_path("models", true, 1).await.unwrap(),
        b"y",
    );
    let root = workspace.root().to_owned();
    assert!(
        keep_as_spare(&root, workspace.mode, Emptying::Refused),
        "kept on the caller's thread"
    );
    let spares = spares_in(base.path());
    assert_eq!(spares.len(), 1);
    assert_eq!(names(&spares[0].join(INPUTS).join("models")), [""; 0]);
    assert_eq!(
        std::fs::read(&stored).unwrap(),
        b"x",
        "the stored file stays"
    );

    // More values than that: left to the blocking pool, which keeps it emptied.
    let next = Workspace::create(base.path(), TASK, Attempt(2), &["models"])
        .await
        .unwrap();
    for index in 0..=INLINE_UNLINKS {
        let value = next.input_path("models", true, index).await.unwrap();
        std::fs::hard_link(&stored, value).unwrap();
    }
    assert!(
        !keep_as_spare(next.root(), next.mode, Emptying::Refused),
        "too many to remove on the caller's thread"
    );
    assert_eq!(next.finish(false).await.unwrap(), None);
    let spares = spares_in(base.path());
    assert_eq!(spares.len(), 1);
    assert_eq!(names(&spares[0].join(INPUTS).join("models")), [""; 0]);
}
