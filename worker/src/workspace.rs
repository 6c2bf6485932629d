//! A directory per task attempt, where its steps run (DESIGN.md, "Workers and devices"):
//! `<base>/<task>-<attempt>/` holds `work/` (scratch space), `inputs/` (fetched before the first
//! step), `outputs/` (what the steps leave for the task's outputs) and `measurements.jsonl`.
//!
//! Every name a task gives (an input or output identifier) is one path component, so it can
//! never name a path outside the workspace, and outputs must be regular files: a step cannot
//! hand the worker a symbolic link to a file elsewhere.
//! This module neither fetches inputs nor uploads outputs: the executor does, through an
//! artifact store.
//!
//! A finished workspace is emptied and kept, under a hidden name (`.spare-<pid>-<n>`) in its
//! base directory, when the steps left its layout and permissions as they were made; the next
//! attempt renames it into place instead of making four directories. The directories of its
//! multiple inputs (`inputs/<identifier>/`) are emptied and kept too, for an attempt that
//! fetches an input of the same name (a chain's next link, say): otherwise each such attempt
//! made one and removed it, and on ext4 without a journal every removed inode slows the
//! allocation of the next ones for a minute. An attempt is never given a kept directory it does
//! not fetch into. Spares a stopped worker left are removed by the next worker process that
//! uses the base directory.
//!
//! Most file system work runs on tokio's blocking pool, a few calls to a thread hop. Taking a
//! spare (a `stat` and a `rename`), collecting an output that is a single file (two `stat`s)
//! and keeping a workspace the steps left empty (a `stat` of each of its parts, a listing of
//! its directories and a `rename`) run on the caller's thread instead: they are the whole of
//! a short attempt's file system work, and the hops they would take cost more than the calls
//! themselves (a throughput run's blocking threads took 0.2 cores, see BENCHMARKS.md).
//! Anything that may take long, such as removing what a step left or laying out a new
//! workspace, keeps its hop.
//!
//! A device reaches the workspace through a [`WorkspaceHandle`]. For a device that runs in
//! the worker's process ([`crate::device::Handlers`]) and a task without input or output
//! files, the workspace is made only when the device first asks for its directory: an
//! in-process task that touches no file costs no file system call.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use models::{Attempt, TaskKey};

#[cfg(test)]
mod tests;

/// The longest input or output identifier accepted, in chars.
pub const MAX_IDENTIFIER_CHARS: usize = 100;

/// How much of a refused identifier an error message repeats, in chars.
const IDENTIFIER_EXCERPT_CHARS: usize = 120;

const WORK: &str = "work";
const INPUTS: &str = "inputs";
const OUTPUTS: &str = "outputs";
const MEASUREMENTS: &str = "measurements.jsonl";

/// Why an input or output of a workspace could not be placed or collected.
///
/// Paths in messages are relative to the workspace, as the task's author sees them.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// The identifier is not one normal path component.
    #[error("invalid input or output identifier {identifier:?}: {reason}")]
    InvalidIdentifier {
        /// The identifier refused (its first 120 chars).
        identifier: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The steps wrote nothing for the output.
    #[error("output `{identifier}` was not written: expected {expected} at {path}")]
    OutputMissing {
        /// The output's identifier.
        identifier: String,
        /// Where it was expected, relative to the workspace.
        path: String,
        /// What was expected (`a file`, `a directory of files`).
        expected: &'static str,
    },
    /// The steps left a symbolic link where a file was expected.
    #[error("output `{identifier}` is a symbolic link at {path}: outputs must be regular files")]
    OutputIsSymlink {
        /// The output's identifier.
        identifier: String,
        /// The link, relative to the workspace.
        path: String,
    },
    /// The steps left something other than what the output needs (a directory for a single
    /// value, a file for a multiple one, a nested directory, a FIFO…).
    #[error("output `{identifier}` must be {expected} at {path}, found {found}")]
    OutputWrongKind {
        /// The output's identifier.
        identifier: String,
        /// What was found, relative to the workspace.
        path: String,
        /// What was expected.
        expected: &'static str,
        /// What was found instead.
        found: &'static str,
    },
    /// A multiple output's directory holds no file.
    #[error("output `{identifier}` is empty: expected at least one file in {path}")]
    OutputEmpty {
        /// The output's identifier.
        identifier: String,
        /// The directory, relative to the workspace.
        path: String,
    },
    /// One of the workspace's own directories was replaced (by a symbolic link or a file).
    #[error("the workspace's {path} is no longer a directory")]
    Tampered {
        /// The directory, relative to the workspace.
        path: String,
    },
    /// The file system failed.
    #[error("could not {action} {path} in the workspace: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path, relative to the workspace.
        path: String,
        /// The error the system returned.
        source: io::Error,
    },
}

/// The directory of one task attempt.
///
/// Dropping it keeps the directory; [`Workspace::finish`] removes it (or keeps it, emptied, for
/// the next attempt).
#[derive(Debug)]
pub struct Workspace {
    /// Absolute, canonical and valid UTF-8, so [`Workspace::env`] gives exact paths.
    root: PathBuf,
    /// The permissions its directories were made with, which a reused one must still have.
    mode: u32,
    /// The multiple inputs' directories a reused spare came with, empty (each one an input of
    /// this attempt's).
    input_dirs: Vec<String>,
}

/// An emptied workspace kept for the next attempt in the same base directory: renaming it into
/// place replaces the four `mkdir` a new workspace costs (on ext4, allocating their inodes was
/// the largest cost of a no-op attempt), and keeping it replaces their removal.
#[derive(Debug)]
struct Spare {
    path: PathBuf,
    mode: u32,
    /// The empty directories kept under its `inputs/`, by identifier.
    input_dirs: Vec<String>,
}

impl Spare {
    /// Whether an attempt fetching the multiple inputs `wanted` may have it as it is.
    fn fits(&self, wanted: &[&str]) -> bool {
        self.input_dirs
            .iter()
            .all(|dir| wanted.contains(&dir.as_str()))
    }
}

/// The spares of this process, every base directory's.
static SPARES: std::sync::Mutex<Vec<Spare>> = std::sync::Mutex::new(Vec::new());

/// Each base directory a workspace was made in, as given and as resolved, so that taking a
/// spare needs no resolving. Kept for the process's life: a base that is a symbolic link
/// given another target meanwhile goes on taking the spares of its first one.
static RESOLVED: std::sync::Mutex<Vec<(PathBuf, PathBuf)>> = std::sync::Mutex::new(Vec::new());

/// Base directories remembered as resolved at most; workspaces made in others are made on the
/// blocking pool, spare or not.
const MAX_RESOLVED: usize = 256;

/// Spares kept at most, all base directories together; more finished workspaces are removed.
const MAX_SPARES: usize = 256;

/// Multiple inputs' directories a spare keeps at most; the rest are removed.
const MAX_KEPT_INPUT_DIRS: usize = 16;

/// The prefix of a spare's name; the process id and a number follow.
const SPARE_PREFIX: &str = ".spare-";

/// Numbers the spares of this process.
static NEXT_SPARE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Base directories whose spares left by stopped processes were removed.
static SWEPT: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn spares() -> std::sync::MutexGuard<'static, Vec<Spare>> {
    // A panic while holding the lock leaves a plain Vec: still usable.
    SPARES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn resolved() -> std::sync::MutexGuard<'static, Vec<(PathBuf, PathBuf)>> {
    RESOLVED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `base` resolved by an earlier [`Workspace::create`], if any.
fn resolved_base(base: &Path) -> Option<PathBuf> {
    resolved()
        .iter()
        .find(|(given, _)| given == base)
        .map(|(_, canonical)| canonical.clone())
}

impl Workspace {
    /// Creates `<base>/<task>-<attempt>/` with `work/`, `inputs/`, `outputs/` and an empty
    /// `measurements.jsonl`.
    ///
    /// `base` is created if needed and must have a UTF-8 path. An existing directory of the same
    /// name is an error (`AlreadyExists`): an attempt runs once, so it is a leftover to look at,
    /// not something to reuse or delete.
    ///
    /// `multiple_inputs` are the identifiers of the multiple inputs the attempt will fetch
    /// ([`Workspace::input_path`] with `multiple`): `inputs/` may then hold their directories
    /// already, empty, and holds no other.
    pub async fn create(
        base: &Path,
        task: TaskKey,
        attempt: Attempt,
        multiple_inputs: &[&str],
    ) -> io::Result<Workspace> {
        let name = format!("{task}-{attempt}");
        // A spare is taken on this thread (see the module's documentation), unless it has
        // directories to remove first.
        if let Some(resolved) = resolved_base(base)
            && let Some(workspace) = reuse_spare(
                &resolved,
                &resolved.join(&name),
                multiple_inputs,
                Emptying::Refused,
            )
        {
            return Ok(workspace);
        }
        let base = base.to_owned();
        let wanted: Vec<String> = multiple_inputs.iter().map(|&dir| dir.to_owned()).collect();
        blocking(move || {
            let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
            Workspace::create_blocking(&base, &name, &wanted)
        })
        .await?
    }

    /// [`Workspace::create`], on a blocking thread.
    fn create_blocking(requested: &Path, name: &str, wanted: &[&str]) -> io::Result<Workspace> {
        std::fs::create_dir_all(requested)?;
        let base = std::fs::canonicalize(requested)?;
        if base.to_str().is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the workspace directory {} is not valid UTF-8",
                    base.display()
                ),
            ));
        }
        let root = base.join(name);
        sweep_stopped_spares(&base);
        {
            let mut resolved = resolved();
            if resolved.len() < MAX_RESOLVED
                && !resolved.iter().any(|(given, _)| given == requested)
            {
                resolved.push((requested.to_owned(), base.clone()));
            }
        }
        if let Some(workspace) = reuse_spare(&base, &root, wanted, Emptying::Allowed) {
            return Ok(workspace);
        }
        std::fs::create_dir(&root)?;
        let mode = permission_bits(&std::fs::symlink_metadata(&root)?);
        let workspace = Workspace {
            root,
            mode,
            input_dirs: Vec::new(),
        };
        if let Err(error) = workspace.lay_out() {
            // Best effort: the error that matters is the layout's.
            let _ = std::fs::remove_dir_all(&workspace.root);
            return Err(error);
        }
        Ok(workspace)
    }

    fn lay_out(&self) -> io::Result<()> {
        for dir in [WORK, INPUTS, OUTPUTS] {
            std::fs::create_dir(self.root.join(dir))?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.measurements_path())?;
        Ok(())
    }

    /// The workspace's directory, absolute.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The scratch directory the steps run in.
    pub fn work_dir(&self) -> PathBuf {
        self.root.join(WORK)
    }

    /// The directory the task's inputs are fetched into.
    pub fn inputs_dir(&self) -> PathBuf {
        self.root.join(INPUTS)
    }

    /// The directory the steps write the task's outputs into.
    pub fn outputs_dir(&self) -> PathBuf {
        self.root.join(OUTPUTS)
    }

    /// The file the steps append measurements to, one JSON line each.
    pub fn measurements_path(&self) -> PathBuf {
        self.root.join(MEASUREMENTS)
    }

    /// The variables that tell a step where things are, as absolute paths:
    /// `BATON_WORKSPACE` (the workspace's directory), `BATON_INPUTS`, `BATON_OUTPUTS` and
    /// `BATON_MEASUREMENTS`.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("BATON_WORKSPACE", self.root.clone()),
            ("BATON_INPUTS", self.inputs_dir()),
            ("BATON_OUTPUTS", self.outputs_dir()),
            ("BATON_MEASUREMENTS", self.measurements_path()),
        ]
        .into_iter()
        // The root is valid UTF-8 (checked on creation) and the rest are ASCII names.
        .map(|(name, path)| (name.to_owned(), path.to_string_lossy().into_owned()))
        .collect()
    }

    /// Where input `identifier`'s value number `index` goes: `inputs/<identifier>` for a single
    /// value, `inputs/<identifier>/<index>` when `multiple` (creating the directory).
    ///
    /// Concurrent calls for the values of one multiple input are fine: whichever creates the
    /// directory, the others find it there.
    pub async fn input_path(
        &self,
        identifier: &str,
        multiple: bool,
        index: usize,
    ) -> Result<PathBuf, WorkspaceError> {
        check_identifier(identifier)?;
        // Kept from the spare, empty, and untouched since: no step of this attempt ran yet.
        if multiple && self.input_dirs.iter().any(|dir| dir == identifier) {
            return Ok(self
                .root
                .join(INPUTS)
                .join(identifier)
                .join(index.to_string()));
        }
        let root = self.root.clone();
        let identifier = identifier.to_owned();
        let relative = format!("{INPUTS}/{identifier}");
        blocking(move || input_path_blocking(&root, &identifier, multiple, index))
            .await
            .map_err(io_error("prepare", &relative))?
    }

    /// [`Workspace::input_path`] for each `(identifier, multiple, index)` of `wanted`, in
    /// their order, in one blocking call at most (each multiple input's directory made once).
    pub async fn input_paths(
        &self,
        wanted: &[(&str, bool, usize)],
    ) -> Result<Vec<PathBuf>, WorkspaceError> {
        for (identifier, _, _) in wanted {
            check_identifier(identifier)?;
        }
        // Values of multiple inputs whose directories were kept from the spare, empty and
        // untouched since: nothing to make or check.
        if wanted.iter().all(|(identifier, multiple, _)| {
            *multiple && self.input_dirs.iter().any(|dir| dir == identifier)
        }) {
            let inputs = self.root.join(INPUTS);
            return Ok(wanted
                .iter()
                .map(|(identifier, _, index)| inputs.join(identifier).join(index.to_string()))
                .collect());
        }
        let root = self.root.clone();
        let owned: Vec<(String, bool, usize)> = wanted
            .iter()
            .map(|(identifier, multiple, index)| ((*identifier).to_owned(), *multiple, *index))
            .collect();
        blocking(move || {
            let mut made: Vec<&str> = Vec::new();
            owned
                .iter()
                .map(|(identifier, multiple, index)| {
                    if *multiple && made.contains(&identifier.as_str()) {
                        return Ok(root.join(INPUTS).join(identifier).join(index.to_string()));
                    }
                    let path = input_path_blocking(&root, identifier, *multiple, *index)?;
                    if *multiple {
                        made.push(identifier);
                    }
                    Ok(path)
                })
                .collect::<Result<Vec<_>, WorkspaceError>>()
        })
        .await
        .map_err(io_error("prepare", INPUTS))?
    }

    /// The files the steps left for output `identifier`: `outputs/<identifier>` must be a
    /// regular file when not `multiple`, or a directory of at least one regular file (returned
    /// sorted by name) when `multiple`.
    ///
    /// Symbolic links are refused, since a step could point them outside the workspace.
    /// Call it once the steps are over: nothing stops a running step from changing the files.
    pub async fn collect_output(
        &self,
        identifier: &str,
        multiple: bool,
    ) -> Result<Vec<PathBuf>, WorkspaceError> {
        check_identifier(identifier)?;
        // A single file is two `stat`s: on this thread (see the module's documentation).
        if !multiple {
            return collect_output_blocking(&self.root, identifier, false);
        }
        let root = self.root.clone();
        let identifier = identifier.to_owned();
        let relative = format!("{OUTPUTS}/{identifier}");
        blocking(move || collect_output_blocking(&root, &identifier, multiple))
            .await
            .map_err(io_error("inspect", &relative))?
    }

    /// Removes the directory unless `keep` (a failed attempt's, when configured, to look at);
    /// returns the path kept, if any.
    ///
    /// A workspace whose layout the steps left as it was made (the three directories and the
    /// measurements file, with their permissions) is emptied and kept, under a hidden name in
    /// the same base directory, for the next attempt; any other is removed, directories a step
    /// made read-only being made writable again first, so they do not stop the removal.
    pub async fn finish(self, keep: bool) -> io::Result<Option<PathBuf>> {
        if keep {
            return Ok(Some(self.root));
        }
        let Workspace { root, mode, .. } = self;
        // Left empty, it is kept on this thread (see the module's documentation).
        if keep_as_spare(&root, mode, Emptying::Refused) {
            return Ok(None);
        }
        blocking(move || {
            if !keep_as_spare(&root, mode, Emptying::Allowed) {
                remove_tree(&root)?;
            }
            Ok::<_, io::Error>(())
        })
        .await??;
        Ok(None)
    }
}

/// The workspace of an attempt as its device sees it: made before the device runs, or made
/// on the device's first call to [`WorkspaceHandle::work_dir`] (see the module's
/// documentation).
#[derive(Clone, Debug)]
pub struct WorkspaceHandle(Arc<tokio::sync::Mutex<Slot>>);

/// Where a [`WorkspaceHandle`]'s workspace is.
#[derive(Debug)]
enum Slot {
    /// Made before the run (the executor holds it): its work directory.
    Ready(PathBuf),
    /// Not made yet; it is made in `base` when first asked for.
    OnDemand {
        base: PathBuf,
        task: TaskKey,
        attempt: Attempt,
    },
    /// Made on demand, for the executor to finish once the attempt is over.
    Made(Workspace),
    /// The attempt is over: no workspace is made any more.
    Closed,
}

impl WorkspaceHandle {
    /// The handle of `workspace`, made before the run.
    pub(crate) fn ready(workspace: &Workspace) -> WorkspaceHandle {
        WorkspaceHandle::with(Slot::Ready(workspace.work_dir()))
    }

    /// The handle of attempt `attempt` of `task`'s workspace, to be made in `base` when first
    /// asked for.
    pub(crate) fn on_demand(base: &Path, task: TaskKey, attempt: Attempt) -> WorkspaceHandle {
        WorkspaceHandle::with(Slot::OnDemand {
            base: base.to_owned(),
            task,
            attempt,
        })
    }

    fn with(slot: Slot) -> WorkspaceHandle {
        WorkspaceHandle(Arc::new(tokio::sync::Mutex::new(slot)))
    }

    /// The scratch directory of the workspace (`work/`), absolute; the workspace is made
    /// first if it was not made yet. Once the attempt is over, an error.
    pub async fn work_dir(&self) -> io::Result<PathBuf> {
        let mut slot = self.0.clone().lock_owned().await;
        let (base, task, attempt) = match &*slot {
            Slot::Ready(dir) => return Ok(dir.clone()),
            Slot::Made(workspace) => return Ok(workspace.work_dir()),
            Slot::Closed => {
                return Err(io::Error::other(
                    "the attempt is over: its workspace can no longer be made",
                ));
            }
            Slot::OnDemand {
                base,
                task,
                attempt,
            } => (base.clone(), *task, *attempt),
        };
        // Made by a task of its own, which holds the slot and stores the workspace there even
        // if this call is dropped meanwhile (a handler aborted while it waits): the executor
        // still finds it, and finishes it, when the attempt is over.
        tokio::spawn(async move {
            let workspace = Workspace::create(&base, task, attempt, &[]).await?;
            let dir = workspace.work_dir();
            *slot = Slot::Made(workspace);
            Ok(dir)
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Ends the attempt's use of the handle: later calls of [`WorkspaceHandle::work_dir`]
    /// fail. Returns the workspace made on demand, if one was, for the caller to finish.
    pub(crate) async fn close(&self) -> Option<Workspace> {
        match std::mem::replace(&mut *self.0.lock().await, Slot::Closed) {
            Slot::Made(workspace) => Some(workspace),
            Slot::Ready(_) | Slot::OnDemand { .. } | Slot::Closed => None,
        }
    }
}

/// Runs `work`, a few `std::fs` calls, on a blocking thread: one thread hop for them all,
/// where `tokio::fs` takes one per call.
///
/// A task that could not finish (it panicked, or the runtime is shutting down) is an IO error,
/// as it is for `tokio::fs`.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(io::Error::other)
}

/// [`Workspace::input_path`], on a blocking thread.
fn input_path_blocking(
    root: &Path,
    identifier: &str,
    multiple: bool,
    index: usize,
) -> Result<PathBuf, WorkspaceError> {
    check_own_directory(root, INPUTS)?;
    let path = root.join(INPUTS).join(identifier);
    if !multiple {
        return Ok(path);
    }
    let relative = format!("{INPUTS}/{identifier}");
    match std::fs::create_dir(&path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            let metadata =
                std::fs::symlink_metadata(&path).map_err(io_error("inspect", &relative))?;
            if !metadata.is_dir() {
                return Err(io_error("create the directory", &relative)(error));
            }
        }
        Err(error) => return Err(io_error("create the directory", &relative)(error)),
    }
    Ok(path.join(index.to_string()))
}

/// [`Workspace::collect_output`], on a blocking thread.
fn collect_output_blocking(
    root: &Path,
    identifier: &str,
    multiple: bool,
) -> Result<Vec<PathBuf>, WorkspaceError> {
    check_own_directory(root, OUTPUTS)?;
    let path = root.join(OUTPUTS).join(identifier);
    let relative = format!("{OUTPUTS}/{identifier}");
    let expected = if multiple {
        "a directory of files"
    } else {
        "a file"
    };
    let metadata = match std::fs::symlink_metadata(&path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(WorkspaceError::OutputMissing {
                identifier: identifier.to_owned(),
                path: relative,
                expected,
            });
        }
        Err(error) => return Err(io_error("inspect", &relative)(error)),
    };
    let wrong_kind = |path: String, expected, found| WorkspaceError::OutputWrongKind {
        identifier: identifier.to_owned(),
        path,
        expected,
        found,
    };
    let symlink = |path: String| WorkspaceError::OutputIsSymlink {
        identifier: identifier.to_owned(),
        path,
    };
    let kind = kind_of(&metadata.file_type());
    if !multiple {
        return match kind {
            Kind::File => Ok(vec![path]),
            Kind::Symlink => Err(symlink(relative)),
            other => Err(wrong_kind(relative, expected, other.described())),
        };
    }
    match kind {
        Kind::Directory => {}
        Kind::Symlink => return Err(symlink(relative)),
        other => return Err(wrong_kind(relative, expected, other.described())),
    }
    let entries = std::fs::read_dir(&path).map_err(io_error("read", &relative))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error("read", &relative))?;
        let name = entry.file_name();
        let entry_relative = format!("{relative}/{}", name.to_string_lossy());
        // `DirEntry::file_type` does not follow symbolic links.
        let file_type = entry
            .file_type()
            .map_err(io_error("inspect", &entry_relative))?;
        match kind_of(&file_type) {
            Kind::File => files.push(entry.path()),
            Kind::Symlink => return Err(symlink(entry_relative)),
            other => return Err(wrong_kind(entry_relative, "a file", other.described())),
        }
    }
    if files.is_empty() {
        return Err(WorkspaceError::OutputEmpty {
            identifier: identifier.to_owned(),
            path: format!("{relative}/"),
        });
    }
    files.sort();
    Ok(files)
}

/// Checks that the workspace's directory `name` is still a directory, not a symbolic link a
/// step put in its place.
fn check_own_directory(root: &Path, name: &str) -> Result<(), WorkspaceError> {
    let tampered = || WorkspaceError::Tampered {
        path: format!("{name}/"),
    };
    match std::fs::symlink_metadata(root.join(name)) {
        Ok(metadata) if metadata.is_dir() => Ok(()),
        Ok(_) => Err(tampered()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Err(tampered()),
        Err(error) => Err(io_error("inspect", &format!("{name}/"))(error)),
    }
}

/// A spare of `base` renamed to `root`, if there is one and `root` does not exist (renaming
/// would replace an empty directory: an existing one is the fresh path's `AlreadyExists`).
///
/// Its kept input directories not in `wanted` are removed first, when `removing` is allowed;
/// otherwise only a spare without such directories is taken.
fn reuse_spare(base: &Path, root: &Path, wanted: &[&str], removing: Emptying) -> Option<Workspace> {
    let spare = {
        let mut spares = spares();
        let ours = |spare: &Spare| spare.path.parent() == Some(base);
        let position = spares
            .iter()
            .rposition(|spare| ours(spare) && spare.fits(wanted))
            .or_else(|| {
                (removing == Emptying::Allowed)
                    .then(|| spares.iter().rposition(ours))
                    .flatten()
            })?;
        spares.swap_remove(position)
    };
    let free = matches!(
        std::fs::symlink_metadata(root),
        Err(error) if error.kind() == io::ErrorKind::NotFound
    );
    if !free {
        spares().push(spare);
        return None;
    }
    let Spare {
        path,
        mode,
        mut input_dirs,
    } = spare;
    let mut unwanted = Ok(());
    input_dirs.retain(|dir| {
        let keep = wanted.contains(&dir.as_str());
        if !keep && unwanted.is_ok() {
            unwanted = std::fs::remove_dir(path.join(INPUTS).join(dir));
        }
        keep
    });
    if unwanted.is_ok() && std::fs::rename(&path, root).is_ok() {
        return Some(Workspace {
            root: root.to_owned(),
            mode,
            input_dirs,
        });
    }
    // Best effort: a spare that cannot be used is only an empty hidden directory.
    let _ = remove_tree(&path);
    None
}

/// Whether [`keep_as_spare`] may remove what the steps left in a workspace.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Emptying {
    /// It may: it runs on a blocking thread.
    Allowed,
    /// It may not, so it takes a bounded number of calls: a workspace with anything to remove
    /// (or a measurements file to truncate) is left as it is, and not kept; except for up to
    /// [`INLINE_UNLINKS`] values in kept input directories, a call each.
    Refused,
}

/// How many values of kept multiple-input directories (files and links, an `unlink` each)
/// [`keep_as_spare`] removes on the caller's thread: a chain's link leaves one, its parent's
/// model, and keeping its workspace took a second pass on a blocking thread for it.
const INLINE_UNLINKS: usize = 8;

/// Empties the workspace at `root` and keeps it as a spare, if the steps left its layout as it
/// was made with `mode` (and, unless `emptying` is allowed, nothing in it but a few values of
/// its multiple inputs); answers whether it did. A workspace it does not keep may be emptied
/// in part: the caller removes it.
fn keep_as_spare(root: &Path, mode: u32, emptying: Emptying) -> bool {
    if spares().len() >= MAX_SPARES {
        return false;
    }
    let Some(base) = root.parent() else {
        return false;
    };
    // The metadata of `path` if it is what the layout made, with the permissions `wanted`.
    let as_made = |path: &Path, wanted: u32, is_dir: bool| {
        std::fs::symlink_metadata(path).ok().filter(|metadata| {
            let kind = if is_dir {
                metadata.is_dir()
            } else {
                metadata.is_file()
            };
            kind && permission_bits(metadata) == wanted
        })
    };
    // A file is made with the directories' permissions less the execute bits.
    let file_mode = mode & !0o111;
    let measurements = root.join(MEASUREMENTS);
    let dirs_kept = as_made(root, mode, true).is_some()
        && [WORK, INPUTS, OUTPUTS]
            .iter()
            .all(|dir| as_made(&root.join(dir), mode, true).is_some());
    if !dirs_kept {
        return false;
    }
    let Some(measured) = as_made(&measurements, file_mode, false) else {
        return false;
    };
    // Removes what the steps left at `path`, when allowed: answers whether it did.
    let remove = |path: &Path| -> io::Result<bool> {
        if emptying == Emptying::Refused {
            return Ok(false);
        }
        remove_entry(path)?;
        Ok(true)
    };
    let mut input_dirs = Vec::new();
    let mut unlinks = 0;
    let emptied = (|| -> io::Result<bool> {
        for entry in std::fs::read_dir(root)? {
            let name = entry?.file_name();
            if ![WORK, INPUTS, OUTPUTS, MEASUREMENTS]
                .iter()
                .any(|own| name == *own)
                && !remove(&root.join(&name))?
            {
                return Ok(false);
            }
        }
        for dir in [WORK, INPUTS, OUTPUTS] {
            for entry in std::fs::read_dir(root.join(dir))? {
                let path = entry?.path();
                if dir == INPUTS
                    && input_dirs.len() < MAX_KEPT_INPUT_DIRS
                    && let Some(identifier) = kept_input_dir(&path, mode)
                {
                    // A multiple input's directory, as made, holds files and links: emptied
                    // and kept. One holding a directory is a step's doing, removed.
                    let mut flat = true;
                    for value in std::fs::read_dir(&path)? {
                        let value = value?;
                        if value.file_type()?.is_dir() {
                            flat = false;
                            break;
                        }
                        if emptying == Emptying::Refused && unlinks < INLINE_UNLINKS {
                            std::fs::remove_file(value.path())?;
                            unlinks += 1;
                            continue;
                        }
                        if !remove(&value.path())? {
                            return Ok(false);
                        }
                    }
                    if flat {
                        input_dirs.push(identifier);
                        continue;
                    }
                }
                if !remove(&path)? {
                    return Ok(false);
                }
            }
        }
        // Most steps write no measurements: an empty file needs no truncating.
        if measured.len() > 0 {
            if emptying == Emptying::Refused {
                return Ok(false);
            }
            std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&measurements)?;
        }
        Ok(true)
    })();
    if !matches!(emptied, Ok(true)) {
        return false;
    }
    let name = format!(
        "{SPARE_PREFIX}{}-{}",
        std::process::id(),
        NEXT_SPARE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let path = base.join(name);
    if std::fs::rename(root, &path).is_err() {
        return false;
    }
    spares().push(Spare {
        path,
        mode,
        input_dirs,
    });
    true
}

/// The identifier of the input directory at `path` when it may be kept in a spare: a
/// directory (not a symbolic link) made with the workspace's `mode` and named as an identifier.
fn kept_input_dir(path: &Path, mode: u32) -> Option<String> {
    let metadata = std::fs::symlink_metadata(path).ok()?;
    if !metadata.is_dir() || permission_bits(&metadata) != mode {
        return None;
    }
    let identifier = path.file_name()?.to_str()?;
    check_identifier(identifier).ok()?;
    Some(identifier.to_owned())
}

/// The permission bits of `metadata` (with set-id and sticky bits), without the file type.
fn permission_bits(metadata: &std::fs::Metadata) -> u32 {
    metadata.permissions().mode() & 0o7777
}

/// Removes `path`, a directory tree or anything else, without following a symbolic link.
fn remove_entry(path: &Path) -> io::Result<()> {
    let metadata = std::fs::symlink_metadata(path)?;
    if metadata.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// Removes, once per base directory and process, the spares of `base` that processes no longer
/// running left (a worker that stopped keeps its spares on disk), including those with this
/// process's id; those of other running processes (several workers sharing a work directory)
/// are theirs.
fn sweep_stopped_spares(base: &Path) {
    {
        let mut swept = SWEPT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if swept.iter().any(|done| done == base) {
            return;
        }
        swept.push(base.to_owned());
    }
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix(SPARE_PREFIX))
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        // Spares with this process's id are a previous process's (containers reuse ids):
        // this one has kept none in `base` before its first sweep of it.
        let ours = pid == std::process::id().to_string();
        if ours || !Path::new("/proc").join(pid).exists() {
            // Best effort: what stays is an empty hidden directory.
            let _ = remove_tree(&entry.path());
        }
    }
}

/// Removes the tree at `root`; when a directory a step made read-only stops it, makes every
/// directory writable and tries once more.
fn remove_tree(root: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(root) {
        Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
            make_directories_writable(root)?;
            std::fs::remove_dir_all(root)
        }
        removed => removed,
    }
}

/// Checks that `identifier` is one normal path component of 1 to [`MAX_IDENTIFIER_CHARS`]
/// chars: no `/`, `\`, NUL or other control char, not `.` or `..`.
pub fn check_identifier(identifier: &str) -> Result<(), WorkspaceError> {
    let refuse = |reason| {
        Err(WorkspaceError::InvalidIdentifier {
            identifier: identifier.chars().take(IDENTIFIER_EXCERPT_CHARS).collect(),
            reason,
        })
    };
    if identifier.is_empty() {
        return refuse("it is empty");
    }
    if identifier.chars().count() > MAX_IDENTIFIER_CHARS {
        return refuse("it is longer than 100 chars");
    }
    if identifier == "." || identifier == ".." {
        return refuse("it must not be `.` or `..`");
    }
    if identifier.contains(['/', '\\']) {
        return refuse("it must not contain `/` or `\\`");
    }
    if identifier.chars().any(char::is_control) {
        return refuse("it must not contain NUL or control characters");
    }
    Ok(())
}

/// What a directory entry is, as far as outputs care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    File,
    Directory,
    Symlink,
    Other,
}

impl Kind {
    fn described(self) -> &'static str {
        match self {
            Kind::File => "a file",
            Kind::Directory => "a directory",
            Kind::Symlink => "a symbolic link",
            Kind::Other => "a special file",
        }
    }
}

fn kind_of(file_type: &std::fs::FileType) -> Kind {
    if file_type.is_symlink() {
        Kind::Symlink
    } else if file_type.is_file() {
        Kind::File
    } else if file_type.is_dir() {
        Kind::Directory
    } else {
        Kind::Other
    }
}

fn io_error(action: &'static str, relative: &str) -> impl FnOnce(io::Error) -> WorkspaceError {
    let path = relative.to_owned();
    move |source| WorkspaceError::Io {
        action,
        path,
        source,
    }
}

/// Gives the owner full access to every directory under `dir` (not following symbolic links),
/// so that a tree a step made read-only can be removed.
fn make_directories_writable(dir: &Path) -> io::Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            make_directories_writable(&entry.path())?;
        }
    }
    Ok(())
}
