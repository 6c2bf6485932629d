use futures::future::BoxFuture;
use models::wire::{AssignedInput, InputValue};
use models::{Attempt, DataSampleKey, File, ModelKey, TaskKey};
use tempfile::TempDir;
use tokio::sync::{Barrier, Notify};
use uuid::Uuid;

use super::*;
use crate::artifacts::{ArtifactError, LocalStore};

const TASK: TaskKey = TaskKey(Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef));

/// More inputs than are fetched at once, so the window moves along.
const N_INPUTS: usize = 3 * crate::artifacts::FETCHES_AT_ONCE + 5;

struct Setup {
    _dir: TempDir,
    store: LocalStore,
    workspace: Workspace,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path().join("store")).unwrap();
    let workspace = Workspace::create(&dir.path().join("work"), TASK, Attempt::FIRST, &[])
        .await
        .unwrap();
    Setup {
        _dir: dir,
        store,
        workspace,
    }
}

fn model_key(n: usize) -> ModelKey {
    ModelKey(Uuid::from_u128(n as u128))
}

/// Stores `content` at `address`, returning the file a model input names.
async fn stored(store: &LocalStore, address: &str, content: &[u8]) -> File {
    let source = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(source.path(), content).unwrap();
    store.put(address, source.path()).await.unwrap()
}

/// A file the store does not hold (with the checksum of empty content).
fn missing(address: &str) -> File {
    File {
        checksum: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".to_owned(),
        storage_address: address.to_owned(),
    }
}

fn model_input(identifier: &str, multiple: bool, n: usize, file: File) -> AssignedInput {
    AssignedInput {
        identifier: identifier.to_owned(),
        multiple,
        value: InputValue::Model {
            model_key: model_key(n),
            file,
        },
    }
}

/// `N_INPUTS` values of the multiple input `models`, value `n` holding `model n`.
async fn many_models(store: &LocalStore) -> Vec<AssignedInput> {
    let mut inputs = Vec::new();
    for n in 0..N_INPUTS {
        let file = stored(
            store,
            &format!("models/{n}"),
            format!("model {n}").as_bytes(),
        )
        .await;
        inputs.push(model_input("models", true, n, file));
    }
    inputs
}

#[tokio::test]
async fn inputs_are_fetched_in_the_tasks_order() {
    let setup = setup().await;
    let mut inputs = many_models(&setup.store).await;
    let single = stored(&setup.store, "single", b"single").await;
    inputs.insert(7, model_input("single", false, 1000, single));
    let sample = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(sample.path(), b"sample").unwrap();
    inputs.push(AssignedInput {
        identifier: "sample".to_owned(),
        multiple: false,
        value: InputValue::DataSample {
            data_sample_key: DataSampleKey(Uuid::from_u128(1)),
            path: Some(sample.path().display().to_string()),
        },
    });

    let paths = fetch_inputs(&inputs, &setup.store, &setup.workspace)
        .await
        .unwrap();

    let inputs_dir = setup.workspace.inputs_dir();
    let shown = |name: &str| inputs_dir.join(name).display().to_string();
    assert_eq!(
        paths,
        BTreeMap::from([
            ("models".to_owned(), shown("models")),
            ("sample".to_owned(), shown("sample")),
            ("single".to_owned(), shown("single")),
        ])
    );
    for n in 0..N_INPUTS {
        let content = std::fs::read(inputs_dir.join(format!("models/{n}"))).unwrap();
        assert_eq!(content, format!("model {n}").as_bytes(), "value {n}");
    }
    assert_eq!(std::fs::read(inputs_dir.join("single")).unwrap(), b"single");
    assert_eq!(std::fs::read(inputs_dir.join("sample")).unwrap(), b"sample");
    assert_eq!(
        std::fs::read_dir(inputs_dir.join("models"))
            .unwrap()
            .count(),
        N_INPUTS,
        "no partial file is left"
    );
}

#[tokio::test]
async fn the_first_missing_input_by_position_is_reported() {
    let setup = setup().await;
    let mut inputs = many_models(&setup.store).await;
    let first = crate::artifacts::FETCHES_AT_ONCE + 3;
    for n in [first, first + 1, N_INPUTS - 1] {
        inputs[n] = model_input("models", true, n, missing(&format!("gone/{n}")));
    }

    let error = fetch_inputs(&inputs, &setup.store, &setup.workspace)
        .await
        .unwrap_err();

    assert_eq!(
        error,
        format!(
            "input `models` (model {}): no artifact at `gone/{first}`",
            model_key(first)
        )
    );
}

/// A store whose fetch of `slow` waits until the fetch of `fast` is over.
struct Raced {
    store: LocalStore,
    slow: String,
    fast: String,
    fast_done: Notify,
}

impl ArtifactStore for Raced {
    fn put<'a>(
        &'a self,
        address: &'a str,
        source: &'a Path,
    ) -> BoxFuture<'a, Result<File, ArtifactError>> {
        self.store.put(address, source)
    }

    fn fetch<'a>(
        &'a self,
        file: &'a File,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<(), ArtifactError>> {
        Box::pin(async move {
            if file.storage_address == self.slow {
                self.fast_done.notified().await;
            }
            let fetched = self.store.fetch(file, dest).await;
            if file.storage_address == self.fast {
                self.fast_done.notify_one();
            }
            fetched
        })
    }

    fn describe(&self) -> String {
        "raced".to_owned()
    }
}

#[tokio::test]
async fn an_earlier_input_failing_later_is_still_the_one_reported() {
    let setup = setup().await;
    let inputs = vec![
        model_input("a", false, 0, missing("slow")),
        model_input("b", false, 1, missing("fast")),
    ];
    let store = Raced {
        store: setup.store.clone(),
        slow: "slow".to_owned(),
        fast: "fast".to_owned(),
        fast_done: Notify::new(),
    };

    let error = fetch_inputs(&inputs, &store, &setup.workspace)
        .await
        .unwrap_err();

    assert_eq!(
        error,
        format!("input `a` (model {}): no artifact at `slow`", model_key(0))
    );
}

/// A store whose first fetches each wait until all of them started.
struct Gathered {
    store: LocalStore,
    barrier: Barrier,
}

impl ArtifactStore for Gathered {
    fn put<'a>(
        &'a self,
        address: &'a str,
        source: &'a Path,
    ) -> BoxFuture<'a, Result<File, ArtifactError>> {
        self.store.put(address, source)
    }

    fn fetch<'a>(
        &'a self,
        file: &'a File,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<(), ArtifactError>> {
        Box::pin(async move {
            self.barrier.wait().await;
            self.store.fetch(file, dest).await
        })
    }

    fn describe(&self) -> String {
        "gathered".to_owned()
    }
}

#[tokio::test]
async fn inputs_are_fetched_several_at_once() {
    let setup = setup().await;
    let inputs: Vec<AssignedInput> = many_models(&setup.store)
        .await
        .into_iter()
        .take(crate::artifacts::FETCHES_AT_ONCE)
        .collect();
    let store = Gathered {
        store: setup.store.clone(),
        barrier: Barrier::new(crate::artifacts::FETCHES_AT_ONCE),
    };

    // Fetched one after the other, the first fetch would wait forever.
    let fetched = tokio::time::timeout(
        Duration::from_secs(30),
        fetch_inputs(&inputs, &store, &setup.workspace),
    )
    .await
    .expect("the fetches wait for each other: they run at once");

    assert_eq!(fetched.unwrap().len(), 1);
}

#[test]
fn model_addresses_share_256_directories_and_never_collide() {
    let grant = Grant {
        task_key: TaskKey(Uuid::parse_str("3f7290ab-3693-4bfd-bb77-98ddc8e163f6").unwrap()),
        attempt: Attempt(2),
        lease_token: Uuid::nil(),
        lease_expires_at: models::Timestamp::default(),
    };
    assert_eq!(
        model_address(&grant, "model", None),
        "models/3f/3f7290ab-3693-4bfd-bb77-98ddc8e163f6.2.model"
    );
    assert_eq!(
        model_address(&grant, "model", Some(0)),
        "models/3f/3f7290ab-3693-4bfd-bb77-98ddc8e163f6.2-0.model"
    );
    // An identifier that looks like an index and a suffix stays apart from a multiple output.
    assert_ne!(
        model_address(&grant, "0.x", None),
        model_address(&grant, "x", Some(0))
    );
    for address in [
        model_address(&grant, "a.b c", None),
        model_address(&grant, "é", Some(12)),
    ] {
        crate::artifacts::check_address(&address).unwrap();
    }
}

#[tokio::test]
async fn data_samples_among_many_inputs_are_linked_and_a_failed_link_is_reported() {
    let setup = setup().await;
    let model = stored(&setup.store, "m", b"model").await;
    let sample = |n: u128, path: &Path| AssignedInput {
        identifier: "sample".to_owned(),
        multiple: false,
        value: InputValue::DataSample {
            data_sample_key: DataSampleKey(Uuid::from_u128(n)),
            path: Some(path.display().to_string()),
        },
    };
    let first = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(first.path(), b"first").unwrap();
    // Three inputs: fetched together. The second sample goes where the first is linked.
    let inputs = vec![
        model_input("model", false, 0, model),
        sample(1, first.path()),
        sample(2, first.path()),
    ];

    let error = fetch_inputs(&inputs, &setup.store, &setup.workspace)
        .await
        .unwrap_err();

    let key = DataSampleKey(Uuid::from_u128(2));
    assert!(
        error.starts_with(&format!(
            "input `sample`: linking data sample {key} at {}",
            first.path().display()
        )),
        "{error}"
    );
    let inputs_dir = setup.workspace.inputs_dir();
    assert_eq!(std::fs::read(inputs_dir.join("sample")).unwrap(), b"first");
    assert_eq!(std::fs::read(inputs_dir.join("model")).unwrap(), b"model");
}
