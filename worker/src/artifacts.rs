//! Where model files live: the artifact store a worker uploads output models to and fetches
//! input models from (SPEC.md §7), a local directory ([`LocalStore`]) by default, S3-compatible
//! object storage (`ObjectStoreArtifacts`, feature `s3`) as an option.
//!
//! Every store takes the same addresses ([`check_address`]), returns the sha256 of what it
//! stored and verifies it on fetch, and makes a file appear under its final name only whole:
//! content is written to a partial file next to it, synced, then renamed into place.
//! This module does not choose addresses nor record models: the executor does.

use std::io::{self, Read, Seek as _, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::future::BoxFuture;
use models::File;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tracing::debug;

#[cfg(feature = "s3")]
pub use self::object::{ObjectStoreArtifacts, S3Settings};

#[cfg(test)]
mod tests;

/// The longest store address accepted, in bytes: room for any layout of keys and names,
/// short enough for every backend (S3 keys stop at 1024 bytes).
pub const MAX_ADDRESS_BYTES: usize = models::model::MAX_ADDRESS_BYTES;

/// The size of the buffer files are copied and hashed through.
const COPY_BUFFER_BYTES: usize = 64 * 1024;

/// How many names a partial file tries before giving up: a name is taken only if a file of
/// that name is already there, which another writer of the same process never causes.
const PARTIAL_NAME_TRIES: u32 = 16;

/// How much of a refused address an error message repeats, in chars.
const ADDRESS_EXCERPT_CHARS: usize = 200;

/// A store of model files, addressed by relative paths ([`check_address`]).
///
/// The methods return boxed futures so that the worker can hold any store as
/// `Arc<dyn ArtifactStore>`.
pub trait ArtifactStore: Send + Sync + 'static {
    /// Stores the file at `source` under `address`, returning its sha256 and address.
    fn put<'a>(
        &'a self,
        address: &'a str,
        source: &'a Path,
    ) -> BoxFuture<'a, Result<File, ArtifactError>>;

    /// [`ArtifactStore::put`] for a `source` its caller discards afterwards (an attempt's
    /// output, in a workspace about to be emptied): a store may move the file rather than copy
    /// it. What is left at `source` is unspecified.
    fn put_taking<'a>(
        &'a self,
        address: &'a str,
        source: &'a Path,
    ) -> BoxFuture<'a, Result<File, ArtifactError>> {
        self.put(address, source)
    }

    /// [`ArtifactStore::put_taking`], returning as soon as the file can be fetched at `address`:
    /// the [`Syncing`] returned ends once the file would also survive a crash, and nothing may
    /// say the file is stored before it does (the worker holds the attempt's report until
    /// then, while the chain's next link already reads the file). A store that cannot tell the
    /// two apart stores the file durably first, and has nothing left to wait for.
    fn put_taking_unsynced<'a>(
        &'a self,
        address: &'a str,
        source: &'a Path,
    ) -> BoxFuture<'a, Result<(File, Syncing), ArtifactError>> {
        Box::pin(async move { Ok((self.put_taking(address, source).await?, Syncing::done())) })
    }

    /// Fetches `file` to `dest`, verifying its sha256; on a mismatch nothing is left at `dest`.
    fn fetch<'a>(
        &'a self,
        file: &'a File,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<(), ArtifactError>>;

    /// [`ArtifactStore::fetch`] for a `dest` its caller only reads (an attempt's input): a
    /// store may link `dest` to the stored file rather than copy it, so writing through `dest`
    /// may change what is stored. The local store links only files it keeps read-only.
    fn fetch_read_only<'a>(
        &'a self,
        file: &'a File,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<(), ArtifactError>> {
        self.fetch(file, dest)
    }

    /// [`ArtifactStore::fetch_read_only`] for an attempt that fetches one or two files: a store
    /// may do a small file's work on the caller's thread, where a thread hop would cost more
    /// than the work. An attempt fetching more files fetches them together, with
    /// [`ArtifactStore::fetch_many_read_only`].
    fn fetch_read_only_here<'a>(
        &'a self,
        file: &'a File,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<(), ArtifactError>> {
        self.fetch_read_only(file, dest)
    }

    /// [`ArtifactStore::fetch_read_only`] for each `(file, dest)` of `fetches` (an attempt's
    /// many inputs); returns each result in their order. By default [`FETCHES_AT_ONCE`] run at
    /// a time; a store may batch the work instead, as the local store does on a few blocking
    /// threads rather than a thread hop per file.
    fn fetch_many_read_only<'a>(
        &'a self,
        fetches: &'a [(File, PathBuf)],
    ) -> BoxFuture<'a, Vec<Result<(), ArtifactError>>> {
        use futures::StreamExt as _;
        Box::pin(
            futures::stream::iter(fetches)
                .map(|(file, dest)| self.fetch_read_only(file, dest))
                .buffered(FETCHES_AT_ONCE)
                .collect(),
        )
    }

    /// A short description for logs (e.g. `local:/var/lib/baton/artifacts`).
    fn describe(&self) -> String;
}

/// How many fetches [`ArtifactStore::fetch_many_read_only`] runs at once by default: a task
/// joining many parents (a fan-in) would otherwise wait for each fetch's round trip in turn; a
/// bound keeps one attempt from filling the blocking pool or the object store's connections.
pub const FETCHES_AT_ONCE: usize = 16;

/// The fewest files the local store's [`ArtifactStore::fetch_many_read_only`] gives one
/// blocking thread, and the most threads it uses for one call: a fan-in's join of 1,000 small
/// inputs made 1,000 thread hops (85 ms) where 4 threads link 250 each.
const FETCHES_PER_THREAD: usize = 32;
const FETCH_THREADS: usize = 4;

/// A stored file's way to disk, still under way ([`ArtifactStore::put_taking_unsynced`]).
#[derive(Debug)]
pub struct Syncing(Option<tokio::task::JoinHandle<Result<(), ArtifactError>>>);

impl Syncing {
    /// Nothing left to wait for: the file is durable already.
    pub fn done() -> Syncing {
        Syncing(None)
    }

    /// Waits until the file would survive a crash.
    pub async fn wait(self) -> Result<(), ArtifactError> {
        match self.0 {
            None => Ok(()),
            Some(syncing) => syncing.await.unwrap_or_else(|error| {
                Err(ArtifactError::io("sync", Path::new("a stored file"))(
                    io::Error::other(error),
                ))
            }),
        }
    }
}

/// Why an artifact could not be stored or fetched.
///
/// Messages say what is wrong and where; they never hold credentials.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The address is not a relative path of normal components, or leads outside the store.
    #[error("invalid artifact address {address:?}: {reason}")]
    InvalidAddress {
        /// The address refused (its first 200 chars).
        address: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Nothing is stored at the address.
    #[error("no artifact at `{address}`")]
    NotFound {
        /// The address looked up.
        address: String,
    },
    /// The content fetched does not have the sha256 the model was registered with.
    #[error("artifact `{address}` has sha256 {actual}, expected {expected}")]
    ChecksumMismatch {
        /// The address fetched.
        address: String,
        /// The sha256 the model was registered with.
        expected: String,
        /// The sha256 of the content fetched.
        actual: String,
    },
    /// A local file or directory could not be read or written.
    #[error("could not {action} `{}`: {source}", path.display())]
    Io {
        /// What was being done (`read`, `write`, `rename into place`, …).
        action: &'static str,
        /// The local path it was done to.
        path: PathBuf,
        /// The error the system returned.
        source: io::Error,
    },
    /// The storage backend (object storage) failed.
    #[error("artifact store failed {operation}: {message}")]
    Backend {
        /// What was being done (`uploading `a/b``, `configuring the S3 store`, …).
        operation: String,
        /// The backend's error, as text.
        message: String,
    },
}

impl ArtifactError {
    /// [`ArtifactError::ChecksumMismatch`] unless `actual`, the sha256 of what was read at
    /// `address`, is `expected` (in either case).
    fn unless_checksum(address: &str, expected: &str, actual: String) -> Result<(), ArtifactError> {
        if actual.eq_ignore_ascii_case(expected) {
            return Ok(());
        }
        Err(ArtifactError::ChecksumMismatch {
            address: address.to_owned(),
            expected: expected.to_owned(),
            actual,
        })
    }

    fn invalid(address: &str, reason: &'static str) -> ArtifactError {
        ArtifactError::InvalidAddress {
            address: address.chars().take(ADDRESS_EXCERPT_CHARS).collect(),
            reason,
        }
    }

    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ArtifactError {
        let path = path.to_owned();
        move |source| ArtifactError::Io {
            action,
            path,
            source,
        }
    }
}

/// Checks that `address` is a store address: a relative, `/`-separated path of normal
/// components (no empty, `.` or `..` component, no backslash, NUL or control char), at most
/// [`MAX_ADDRESS_BYTES`] long.
///
/// Every store calls it before anything else, so an address can never name a file outside
/// the store, whatever the backend.
pub fn check_address(address: &str) -> Result<(), ArtifactError> {
    match models::model::address_problem(address) {
        Some(reason) => Err(ArtifactError::invalid(address, reason)),
        None => Ok(()),
    }
}

/// The sha256 of the file at `path`, as 64 lowercase hex digits, read in a streaming fashion.
pub async fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; COPY_BUFFER_BYTES];
    loop {
        let n_read = file.read(&mut buffer).await?;
        if n_read == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buffer[..n_read]);
    }
}

/// An artifact store in a local directory: an address is a path under the root.
///
/// A symbolic link inside the root may lead elsewhere inside it, never outside: an address
/// whose directories resolve outside the root is refused, and a file that is itself a link is
/// never fetched.
#[derive(Clone, Debug)]
pub struct LocalStore {
    /// Canonical (absolute, without symbolic links), so resolved paths can be compared to it.
    root: PathBuf,
}

impl LocalStore {
    /// Opens the store at `root`, creating the directory if needed.
    ///
    /// It blocks on the file system, which is fine for the worker's start.
    pub fn new(root: impl AsRef<Path>) -> Result<LocalStore, ArtifactError> {
        let root = root.as_ref();
        std::fs::create_dir_all(root).map_err(ArtifactError::io("create the directory", root))?;
        let root = std::fs::canonicalize(root).map_err(ArtifactError::io("resolve", root))?;
        Ok(LocalStore { root })
    }

    /// The store's directory, canonical.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Stores the file at `source` under `address`; runs on a blocking thread.
    fn put_file(
        &self,
        address: &str,
        source: &Path,
        abandoned: &Abandoned,
    ) -> Result<File, ArtifactError> {
        check_address(address)?;
        let dest = self.resolve(address, MissingDirectories::Create)?;
        let mut input = std::fs::File::open(source).map_err(ArtifactError::io("open", source))?;
        abandoned.check(&dest)?;
        let mut partial = PartialFile::create_next_to(&dest)?;
        partial.copy_from(&mut input, source, abandoned)?;
        partial
            .file
            .set_permissions(read_only())
            .map_err(ArtifactError::io("make read-only", &partial.path))?;
        let checksum = partial.sync(Durability::Durable)?;
        let size_bytes = partial.size;
        abandoned.check(&dest)?;
        partial.persist(&dest, Durability::Durable)?;
        debug!(size_bytes, "stored artifact {address} locally");
        Ok(File {
            checksum,
            storage_address: address.to_owned(),
        })
    }

    /// Stores the file at `source` under `address` by moving it there, when it is a regular
    /// file with no other link to it on the store's file system: its content is read once for
    /// the sha256 and synced, then it is renamed into place and the directory synced, which
    /// spares a copy and the file system a new file and a deletion per model. Otherwise (a
    /// symbolic link, a file linked elsewhere, another file system) it is copied as
    /// [`LocalStore::put_file`] does. Runs on a blocking thread.
    fn take_file(
        &self,
        address: &str,
        source: &Path,
        abandoned: &Abandoned,
    ) -> Result<File, ArtifactError> {
        let (file, unsynced) = self.take_file_unsynced(address, source, None, abandoned)?;
        if let Some(unsynced) = unsynced {
            unsynced.sync()?;
        }
        Ok(file)
    }

    /// [`LocalStore::take_file`] up to the rename into place: a file moved there is returned
    /// with what is left to sync (a copied one is synced already). `inspected` is the source's
    /// metadata (`symlink_metadata`), if the caller read it already. Runs on a blocking thread.
    fn take_file_unsynced(
        &self,
        address: &str,
        source: &Path,
        inspected: Option<std::fs::Metadata>,
        abandoned: &Abandoned,
    ) -> Result<(File, Option<Unsynced>), ArtifactError> {
        check_address(address)?;
        let copied = || Ok((self.put_file(address, source, abandoned)?, None));
        let metadata = match inspected {
            Some(metadata) => metadata,
            None => {
                std::fs::symlink_metadata(source).map_err(ArtifactError::io("inspect", source))?
            }
        };
        if !metadata.file_type().is_file() || metadata.nlink() != 1 {
            return copied();
        }
        let dest = self.resolve(address, MissingDirectories::Create)?;
        let mut input = std::fs::File::open(source).map_err(ArtifactError::io("open", source))?;
        let (checksum, size_bytes) = hash_all(&mut input, source, &dest, abandoned)?;
        // Not ours to change (another user's file): copied instead.
        if input.set_permissions(read_only()).is_err() {
            return copied();
        }
        abandoned.check(&dest)?;
        match std::fs::rename(source, &dest) {
            Ok(()) => {}
            Err(error) if error.raw_os_error() == Some(nix::libc::EXDEV) => return copied(),
            Err(error) => return Err(ArtifactError::io("rename into place", &dest)(error)),
        }
        debug!(size_bytes, "moved artifact {address} into the local store");
        let file = File {
            checksum,
            storage_address: address.to_owned(),
        };
        Ok((file, Some(Unsynced { input, dest })))
    }

    /// Fetches `file` to `dest`, verifying its sha256; runs on a blocking thread.
    fn fetch_file(
        &self,
        file: &File,
        dest: &Path,
        abandoned: &Abandoned,
    ) -> Result<(), ArtifactError> {
        let (source, mut input, _) = self.open_stored(file)?;
        LocalStore::copy_stored(file, &source, &mut input, dest, abandoned)
    }

    /// Copies the stored `input` (at `source`) to `dest` as [`LocalStore::fetch_file`] does.
    fn copy_stored(
        file: &File,
        source: &Path,
        input: &mut std::fs::File,
        dest: &Path,
        abandoned: &Abandoned,
    ) -> Result<(), ArtifactError> {
        abandoned.check(dest)?;
        let mut partial = PartialFile::create_next_to(dest)?;
        partial.copy_from(input, source, abandoned)?;
        partial.verify_and_persist(&file.storage_address, &file.checksum, dest, abandoned)
    }

    /// Fetches `file` to `dest` by a hard link to the stored file when that file is read-only
    /// (as this store keeps what it stores) and `dest` is on the store's file system, after
    /// reading it once to verify its sha256; otherwise copies it as
    /// [`LocalStore::fetch_file`] does. A link spares the file system a new file, its writes,
    /// and its deletion when the workspace is emptied. Runs on a blocking thread.
    fn link_file(
        &self,
        file: &File,
        dest: &Path,
        abandoned: &Abandoned,
    ) -> Result<(), ArtifactError> {
        let (source, mut input, opened) = self.open_stored(file)?;
        let dest_device = dest
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .and_then(|dir| std::fs::metadata(dir).ok())
            .map(|metadata| metadata.dev());
        if opened.mode() & 0o222 != 0 || dest_device != Some(opened.dev()) {
            return LocalStore::copy_stored(file, &source, &mut input, dest, abandoned);
        }
        let address = file.storage_address.as_str();
        let (actual, _) = hash_all(&mut input, &source, dest, abandoned)?;
        ArtifactError::unless_checksum(address, &file.checksum, actual)?;
        abandoned.check(dest)?;
        if let Err(error) = std::fs::hard_link(&source, dest) {
            // Too many links, or links not allowed here: a copy does.
            debug!("linking artifact {address}: {error}; copying it");
            input.rewind().map_err(ArtifactError::io("read", &source))?;
            return LocalStore::copy_stored(file, &source, &mut input, dest, abandoned);
        }
        // Linked by name: the file verified must be the one linked.
        let linked = std::fs::symlink_metadata(dest).map_err(ArtifactError::io("inspect", dest));
        if !matches!(&linked, Ok(linked) if (linked.dev(), linked.ino()) == (opened.dev(), opened.ino()))
        {
            let _ = std::fs::remove_file(dest);
            linked?;
            return Err(ArtifactError::invalid(
                address,
                "it changed while being linked",
            ));
        }
        debug!("linked artifact {address} to {}", dest.display());
        Ok(())
    }

    /// Opens the stored file of `file`, refusing anything but a regular file inside the root;
    /// returns its path, the open file and its metadata.
    fn open_stored(
        &self,
        file: &File,
    ) -> Result<(PathBuf, std::fs::File, std::fs::Metadata), ArtifactError> {
        let address = file.storage_address.as_str();
        check_address(address)?;
        let source = self.resolve(address, MissingDirectories::Refuse)?;
        let before = match std::fs::symlink_metadata(&source) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(ArtifactError::NotFound {
                    address: address.to_owned(),
                });
            }
            Err(error) => return Err(ArtifactError::io("inspect", &source)(error)),
        };
        if before.file_type().is_symlink() {
            return Err(ArtifactError::invalid(address, "it names a symbolic link"));
        }
        if !before.is_file() {
            return Err(ArtifactError::invalid(
                address,
                "it names something other than a file",
            ));
        }
        let input = std::fs::File::open(&source).map_err(ArtifactError::io("open", &source))?;
        // Without O_NOFOLLOW (no libc here), the file opened is checked to be the one
        // inspected, so a link swapped in between is never followed.
        let opened = input
            .metadata()
            .map_err(ArtifactError::io("inspect", &source))?;
        if (opened.dev(), opened.ino()) != (before.dev(), before.ino()) {
            return Err(ArtifactError::invalid(
                address,
                "it changed while being opened",
            ));
        }
        Ok((source, input, opened))
    }

    /// The path of `address` under the root, its directories walked one at a time so that no
    /// symbolic link leads outside the root (and, when creating them, nothing is created
    /// outside it either).
    fn resolve(
        &self,
        address: &str,
        missing: MissingDirectories,
    ) -> Result<PathBuf, ArtifactError> {
        let (directories, name) = match address.rsplit_once('/') {
            Some((directories, name)) => (Some(directories), name),
            None => (None, address),
        };
        let mut dir = self.root.clone();
        for component in directories.into_iter().flat_map(|path| path.split('/')) {
            dir.push(component);
            self.enter(address, &dir, missing)?;
        }
        // What the OS resolves, checked once more as a whole.
        let parent = std::fs::canonicalize(&dir).map_err(ArtifactError::io("resolve", &dir))?;
        if !parent.starts_with(&self.root) {
            return Err(escapes(address));
        }
        Ok(parent.join(name))
    }

    /// Checks that `dir` is a directory inside the root, creating it if missing and allowed.
    fn enter(
        &self,
        address: &str,
        dir: &Path,
        missing: MissingDirectories,
    ) -> Result<(), ArtifactError> {
        loop {
            let metadata = match std::fs::symlink_metadata(dir) {
                Ok(metadata) => metadata,
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    if missing == MissingDirectories::Refuse {
                        return Err(ArtifactError::NotFound {
                            address: address.to_owned(),
                        });
                    }
                    match std::fs::create_dir(dir) {
                        // Created by someone else meanwhile: inspected again.
                        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
                        created => {
                            created.map_err(ArtifactError::io("create the directory", dir))?;
                            return Ok(());
                        }
                    }
                }
                Err(error) => return Err(ArtifactError::io("inspect", dir)(error)),
            };
            if metadata.is_dir() {
                return Ok(());
            }
            if !metadata.file_type().is_symlink() {
                return Err(ArtifactError::invalid(
                    address,
                    "one of its directories is a file",
                ));
            }
            let target = match std::fs::canonicalize(dir) {
                Ok(target) => target,
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    return Err(ArtifactError::invalid(
                        address,
                        "one of its directories is a broken symbolic link",
                    ));
                }
                Err(error) => return Err(ArtifactError::io("resolve", dir)(error)),
            };
            if !target.starts_with(&self.root) {
                return Err(escapes(address));
            }
            let is_dir = std::fs::metadata(&target)
                .map_err(ArtifactError::io("inspect", &target))?
                .is_dir();
            if !is_dir {
                return Err(ArtifactError::invalid(
                    address,
                    "one of its directories is a file",
                ));
            }
            return Ok(());
        }
    }
}

/// Each method is one blocking task doing the whole job with `std::fs`: one thread hop per
/// artifact, where `tokio::fs` takes one per call (a dozen or more even for a 1-byte file).
/// Moving a file of at most [`INLINE_BYTES`] into the store, and linking one to the workspace
/// of an attempt that fetches one or two files (`fetch_read_only_here`), run on the caller's
/// thread instead, without a hop.
impl ArtifactStore for LocalStore {
    fn put<'a>(
        &'a self,
        address: &'a str,
        source: &'a Path,
    ) -> BoxFuture<'a, Result<File, ArtifactError>> {
        self.blocking_put(address, source, LocalStore::put_file)
    }

    fn put_taking<'a>(
        &'a self,
        address: &'a str,
        source: &'a Path,
    ) -> BoxFuture<'a, Result<File, ArtifactError>> {
        self.blocking_put(address, source, LocalStore::take_file)
    }

    /// The file's sync and its directory's run on a blocking thread of their own, after the
    /// rename.
    fn put_taking_unsynced<'a>(
        &'a self,
        address: &'a str,
        source: &'a Path,
    ) -> BoxFuture<'a, Result<(File, Syncing), ArtifactError>> {
        let store = self.clone();
        let address = address.to_owned();
        let source = source.to_owned();
        Box::pin(async move {
            let (file, unsynced) = if let Some(metadata) = small_file(&source) {
                let abandoned = Abandoned::default();
                store.take_file_unsynced(&address, &source, Some(metadata), &abandoned)?
            } else {
                run_blocking(source.clone(), move |abandoned| {
                    store.take_file_unsynced(&address, &source, None, abandoned)
                })
                .await?
            };
            let span = tracing::Span::current();
            let syncing = unsynced.map(|unsynced| {
                tokio::task::spawn_blocking(move || span.in_scope(|| unsynced.sync()))
            });
            Ok((file, Syncing(syncing)))
        })
    }

    fn fetch<'a>(
        &'a self,
        file: &'a File,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<(), ArtifactError>> {
        self.blocking_fetch(file, dest, LocalStore::fetch_file)
    }

    fn fetch_read_only<'a>(
        &'a self,
        file: &'a File,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<(), ArtifactError>> {
        self.blocking_fetch(file, dest, LocalStore::link_file)
    }

    fn fetch_read_only_here<'a>(
        &'a self,
        file: &'a File,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<(), ArtifactError>> {
        Box::pin(async move {
            // Where the file should be, to learn its size: `link_file` checks the address.
            if check_address(&file.storage_address).is_ok()
                && small_file(&self.root.join(&file.storage_address)).is_some()
            {
                return self.link_file(file, dest, &Abandoned::default());
            }
            self.fetch_read_only(file, dest).await
        })
    }

    /// Links the files on at most [`FETCH_THREADS`] blocking threads, each taking a share in
    /// order (at least [`FETCHES_PER_THREAD`]).
    fn fetch_many_read_only<'a>(
        &'a self,
        fetches: &'a [(File, PathBuf)],
    ) -> BoxFuture<'a, Vec<Result<(), ArtifactError>>> {
        let per_thread = fetches
            .len()
            .div_ceil(FETCH_THREADS)
            .max(FETCHES_PER_THREAD);
        let shares = fetches.chunks(per_thread).map(|share| {
            let store = self.clone();
            let share = share.to_vec();
            let first = share
                .first()
                .map(|(_, dest)| dest.clone())
                .unwrap_or_default();
            async move {
                let count = share.len();
                let linked = run_blocking(first.clone(), move |abandoned| {
                    Ok(share
                        .iter()
                        .map(|(file, dest)| store.link_file(file, dest, abandoned))
                        .collect::<Vec<_>>())
                })
                .await;
                match linked {
                    Ok(results) => results,
                    // The thread could not finish: every fetch of its share failed.
                    Err(error) => (0..count)
                        .map(|_| {
                            Err(ArtifactError::io("link", &first)(io::Error::other(
                                error.to_string(),
                            )))
                        })
                        .collect(),
                }
            }
        });
        Box::pin(async move {
            futures::future::join_all(shares)
                .await
                .into_iter()
                .flatten()
                .collect()
        })
    }

    fn describe(&self) -> String {
        format!("local:{}", self.root.display())
    }
}

impl LocalStore {
    /// Runs `fetch` (fetching `file` to `dest`) on a blocking thread.
    fn blocking_fetch<'a>(
        &self,
        file: &File,
        dest: &Path,
        fetch: fn(&LocalStore, &File, &Path, &Abandoned) -> Result<(), ArtifactError>,
    ) -> BoxFuture<'a, Result<(), ArtifactError>> {
        let store = self.clone();
        let file = file.clone();
        let dest = dest.to_owned();
        Box::pin(run_blocking(dest.clone(), move |abandoned| {
            fetch(&store, &file, &dest, abandoned)
        }))
    }

    /// Runs `put` (storing the file at `source` under `address`) on a blocking thread.
    fn blocking_put<'a>(
        &self,
        address: &str,
        source: &Path,
        put: fn(&LocalStore, &str, &Path, &Abandoned) -> Result<File, ArtifactError>,
    ) -> BoxFuture<'a, Result<File, ArtifactError>> {
        let store = self.clone();
        let address = address.to_owned();
        let source = source.to_owned();
        Box::pin(run_blocking(source.clone(), move |abandoned| {
            put(&store, &address, &source, abandoned)
        }))
    }
}

/// A file moved into the local store and not yet synced: the file, then its directory.
struct Unsynced {
    /// The file, open.
    input: std::fs::File,
    /// Where it is now.
    dest: PathBuf,
}

impl Unsynced {
    /// Syncs the file and its directory; runs on a blocking thread.
    fn sync(self) -> Result<(), ArtifactError> {
        self.input
            .sync_all()
            .map_err(ArtifactError::io("sync", &self.dest))?;
        sync_directory_of(&self.dest)
    }
}

/// Syncs the directory holding `path`, so that a file renamed into it survives a crash.
fn sync_directory_of(path: &Path) -> Result<(), ArtifactError> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        let dir_handle = std::fs::File::open(dir).map_err(ArtifactError::io("open", dir))?;
        dir_handle
            .sync_all()
            .map_err(ArtifactError::io("sync", dir))?;
    }
    Ok(())
}

/// The permissions of a stored file: read-only, so that a file linked into a workspace
/// ([`ArtifactStore::fetch_read_only`]) cannot be written through by a step not run as root.
fn read_only() -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::Permissions::from_mode(0o444)
}

/// Reads `input` (the file at `source`) to its end; returns its sha256, as lowercase hex, and
/// its size. `dest` names the operation's target for [`Abandoned::check`].
fn hash_all(
    input: &mut impl Read,
    source: &Path,
    dest: &Path,
    abandoned: &Abandoned,
) -> Result<(String, u64), ArtifactError> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; COPY_BUFFER_BYTES];
    let mut size_bytes = 0u64;
    loop {
        abandoned.check(dest)?;
        let n_read = match input.read(&mut buffer) {
            Ok(n_read) => n_read,
            // What `tokio::io::AsyncRead` retries by itself.
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(ArtifactError::io("read", source)(error)),
        };
        if n_read == 0 {
            return Ok((hex::encode(hasher.finalize()), size_bytes));
        }
        hasher.update(&buffer[..n_read]);
        size_bytes += n_read as u64;
    }
}

/// What [`LocalStore::resolve`] does with a directory of the address that does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MissingDirectories {
    /// Creates it (to put a file).
    Create,
    /// Reports the address as not found (to fetch a file).
    Refuse,
}

fn escapes(address: &str) -> ArtifactError {
    ArtifactError::invalid(
        address,
        "it leads outside the store's root through a symbolic link",
    )
}

/// Set once nobody waits for a blocking store operation any more (its future was dropped: the
/// task was stopped, or another input failed), so that the operation stops at its next check
/// instead of copying the rest of a file into a workspace that may be removed meanwhile.
///
/// A dropped `tokio::fs` chain stopped at its next call; this keeps that.
#[derive(Clone, Debug, Default)]
struct Abandoned(Arc<AtomicBool>);

impl Abandoned {
    /// An error if the operation was abandoned; its text is never seen, since nobody waits.
    fn check(&self, path: &Path) -> Result<(), ArtifactError> {
        if self.0.load(Ordering::Relaxed) {
            return Err(ArtifactError::io("finish writing", path)(io::Error::new(
                io::ErrorKind::Interrupted,
                "the operation was abandoned",
            )));
        }
        Ok(())
    }
}

/// Marks its [`Abandoned`] when dropped: with the future that waits for the operation, whether
/// the operation is over (then the mark is harmless) or not.
struct AbandonOnDrop(Abandoned);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.0.store(true, Ordering::Relaxed);
    }
}

/// The largest file stored or linked on the calling thread rather than on a blocking one: a
/// chain's link stored its model and linked its parent's in two thread hops that cost more
/// than the few calls they made, on a loaded machine a wait for a thread to be scheduled each.
const INLINE_BYTES: u64 = 64 * 1024;

/// The metadata of `path` (not following a symbolic link) if it is a regular file of at most
/// [`INLINE_BYTES`].
fn small_file(path: &Path) -> Option<std::fs::Metadata> {
    std::fs::symlink_metadata(path)
        .ok()
        .filter(|metadata| metadata.is_file() && metadata.len() <= INLINE_BYTES)
}

/// Runs `work` on a blocking thread and waits for it; `path` names the file in the error if the
/// thread could not finish it (it panicked, or the runtime is shutting down).
async fn run_blocking<T: Send + 'static>(
    path: PathBuf,
    work: impl FnOnce(&Abandoned) -> Result<T, ArtifactError> + Send + 'static,
) -> Result<T, ArtifactError> {
    let abandoned = Abandoned::default();
    let _abandon_on_drop = AbandonOnDrop(abandoned.clone());
    // The caller's span (its task's key), for what the operation logs.
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(|| work(&abandoned)))
        .await
        .map_err(|error| ArtifactError::io("copy", &path)(io::Error::other(error)))?
}

/// A file being written next to its final place under a name of its own, hashed as it is
/// written; it is removed when dropped unless it was persisted, so neither an error nor an
/// abandoned operation leaves it behind.
///
/// Its methods block: they run on a blocking thread.
struct PartialFile {
    path: PathBuf,
    file: std::fs::File,
    hasher: Sha256,
    size: u64,
    persisted: bool,
}

impl PartialFile {
    /// Creates a partial file in the directory of `dest` (creating the directory if needed),
    /// so the final rename stays on one file system.
    fn create_next_to(dest: &Path) -> Result<PartialFile, ArtifactError> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let dir = match dest.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).map_err(ArtifactError::io("create the directory", dir))?;
        let mut tries = 0;
        loop {
            let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!(".baton-partial-{}-{id}", std::process::id()));
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path);
            match created {
                Ok(file) => {
                    return Ok(PartialFile {
                        path,
                        file,
                        hasher: Sha256::new(),
                        size: 0,
                        persisted: false,
                    });
                }
                Err(error)
                    if error.kind() == io::ErrorKind::AlreadyExists
                        && tries < PARTIAL_NAME_TRIES =>
                {
                    tries += 1;
                }
                Err(error) => return Err(ArtifactError::io("create", &path)(error)),
            }
        }
    }

    fn write(&mut self, chunk: &[u8]) -> Result<(), ArtifactError> {
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        self.file
            .write_all(chunk)
            .map_err(ArtifactError::io("write", &self.path))
    }

    /// Copies everything `input` (the file at `source`) holds, unless abandoned meanwhile.
    fn copy_from(
        &mut self,
        input: &mut impl Read,
        source: &Path,
        abandoned: &Abandoned,
    ) -> Result<(), ArtifactError> {
        let mut buffer = vec![0; COPY_BUFFER_BYTES];
        loop {
            abandoned.check(&self.path)?;
            let n_read = match input.read(&mut buffer) {
                Ok(n_read) => n_read,
                // What `tokio::io::AsyncRead` retries by itself.
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(ArtifactError::io("read", source)(error)),
            };
            if n_read == 0 {
                return Ok(());
            }
            self.write(&buffer[..n_read])?;
        }
    }

    /// Flushes the content (to disk if `durability` asks) and returns its sha256.
    fn sync(&mut self, durability: Durability) -> Result<String, ArtifactError> {
        self.file
            .flush()
            .map_err(ArtifactError::io("write", &self.path))?;
        if durability == Durability::Durable {
            self.file
                .sync_all()
                .map_err(ArtifactError::io("sync", &self.path))?;
        }
        Ok(hex::encode(self.hasher.clone().finalize()))
    }

    /// Renames the content to `dest` if its sha256 is `expected` (and the operation was not
    /// abandoned); otherwise the partial file is removed and nothing is left at `dest`. For a
    /// fetch into an attempt's workspace, which a crash throws away: nothing is synced to disk.
    fn verify_and_persist(
        mut self,
        address: &str,
        expected: &str,
        dest: &Path,
        abandoned: &Abandoned,
    ) -> Result<(), ArtifactError> {
        let actual = self.sync(Durability::Volatile)?;
        ArtifactError::unless_checksum(address, expected, actual)?;
        let size_bytes = self.size;
        abandoned.check(dest)?;
        self.persist(dest, Durability::Volatile)?;
        debug!(
            size_bytes,
            "fetched artifact {address} to {}",
            dest.display()
        );
        Ok(())
    }

    /// Renames the (synced) file to `dest`, then, if `durability` asks, syncs the directory so
    /// the rename survives a crash.
    fn persist(mut self, dest: &Path, durability: Durability) -> Result<(), ArtifactError> {
        std::fs::rename(&self.path, dest).map_err(ArtifactError::io("rename into place", dest))?;
        self.persisted = true;
        if durability == Durability::Volatile {
            return Ok(());
        }
        sync_directory_of(dest)
    }
}

/// Whether a written file must survive a crash once written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Durability {
    /// Stored artifacts: synced to disk, file and directory, before they are reported.
    Durable,
    /// Copies fetched into a workspace: a crash discards the workspace anyway.
    Volatile,
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.persisted {
            // Best effort, and quick: a leftover is only a hidden file with a recognisable name.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A [`PartialFile`] written from async code (a download's chunks), each operation one
/// blocking task, as `tokio::fs::File` does.
///
/// The partial file is removed if this is dropped, or if the future of an operation is dropped
/// (the blocking task then drops it when it ends), unless it was persisted.
#[cfg(feature = "s3")]
struct AsyncPartialFile {
    /// The partial file's path, for errors.
    path: PathBuf,
    /// `None` only while an operation runs, or after one was abandoned.
    partial: Option<PartialFile>,
}

#[cfg(feature = "s3")]
impl AsyncPartialFile {
    /// [`PartialFile::create_next_to`].
    async fn create_next_to(dest: &Path) -> Result<AsyncPartialFile, ArtifactError> {
        let dest = dest.to_owned();
        let partial =
            run_blocking(dest.clone(), move |_| PartialFile::create_next_to(&dest)).await?;
        Ok(AsyncPartialFile {
            path: partial.path.clone(),
            partial: Some(partial),
        })
    }

    /// Takes the partial file out for an operation.
    fn take(&mut self) -> Result<PartialFile, ArtifactError> {
        self.partial.take().ok_or_else(|| {
            ArtifactError::io("write", &self.path)(io::Error::other(
                "an earlier write was abandoned",
            ))
        })
    }

    /// [`PartialFile::write`].
    async fn write(&mut self, chunk: &[u8]) -> Result<(), ArtifactError> {
        let mut partial = self.take()?;
        let chunk = chunk.to_vec();
        let (partial, written) = run_blocking(self.path.clone(), move |_| {
            let written = partial.write(&chunk);
            Ok((partial, written))
        })
        .await?;
        self.partial = Some(partial);
        written
    }

    /// [`PartialFile::verify_and_persist`].
    async fn verify_and_persist(
        mut self,
        address: &str,
        expected: &str,
        dest: &Path,
    ) -> Result<(), ArtifactError> {
        let partial = self.take()?;
        let address = address.to_owned();
        let expected = expected.to_owned();
        let dest = dest.to_owned();
        run_blocking(self.path.clone(), move |abandoned| {
            partial.verify_and_persist(&address, &expected, &dest, abandoned)
        })
        .await
    }
}

#[cfg(feature = "s3")]
mod object {
    //! An artifact store on object storage, through the `object_store` crate.

    use std::path::Path;
    use std::sync::Arc;

    use futures::StreamExt;
    use futures::future::BoxFuture;
    use models::{File, Secret};
    use object_store::aws::AmazonS3Builder;
    use object_store::path::Path as ObjectPath;
    use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
    use sha2::{Digest, Sha256};
    use tokio::io::AsyncReadExt;
    use tracing::debug;

    use super::{ArtifactError, ArtifactStore, AsyncPartialFile, COPY_BUFFER_BYTES, check_address};

    /// The size of each part of a multipart upload, and the size up to which a file is
    /// uploaded in one request instead: above S3's 5 MiB minimum part size, and small enough
    /// to keep a few parts in memory.
    const PART_BYTES: usize = 10 * 1024 * 1024;

    /// How many parts of one upload may be in flight at once.
    const MAX_PARTS_IN_FLIGHT: usize = 4;

    /// Where an S3-compatible bucket is and how to sign in to it.
    #[derive(Clone, Debug)]
    pub struct S3Settings {
        /// The bucket's name.
        pub bucket: String,
        /// The endpoint of an S3-compatible server (MinIO, Ceph, …), reached with path-style
        /// requests; `None` for AWS itself.
        pub endpoint: Option<String>,
        /// The region (`us-east-1` for most S3-compatible servers).
        pub region: String,
        /// The access key id.
        pub access_key_id: String,
        /// The secret access key, redacted in `Debug`.
        pub secret_access_key: Secret,
        /// Whether an `http://` endpoint is accepted (for a local test server).
        pub allow_http: bool,
    }

    /// An artifact store on object storage: an address is an object's key.
    ///
    /// Objects are written whole by the backend (a single put, or a multipart upload that
    /// becomes visible once completed), so no partial object is ever visible under an address.
    #[derive(Clone, Debug)]
    pub struct ObjectStoreArtifacts {
        store: Arc<dyn ObjectStore>,
        /// [`PART_BYTES`], smaller in tests to exercise multipart uploads.
        part_bytes: usize,
    }

    impl ObjectStoreArtifacts {
        /// An artifact store on `store` (any `object_store` backend; `InMemory` in tests).
        pub fn new(store: Arc<dyn ObjectStore>) -> ObjectStoreArtifacts {
            ObjectStoreArtifacts {
                store,
                part_bytes: PART_BYTES,
            }
        }

        /// An artifact store on the S3 bucket `settings` describe; nothing is contacted yet.
        pub fn s3(settings: &S3Settings) -> Result<ObjectStoreArtifacts, ArtifactError> {
            let mut builder = AmazonS3Builder::new()
                .with_bucket_name(&settings.bucket)
                .with_region(&settings.region)
                .with_access_key_id(&settings.access_key_id)
                .with_secret_access_key(settings.secret_access_key.expose())
                .with_allow_http(settings.allow_http);
            if let Some(endpoint) = &settings.endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            let store = builder.build().map_err(|error| ArtifactError::Backend {
                operation: format!("configuring the S3 store for bucket `{}`", settings.bucket),
                message: error.to_string(),
            })?;
            Ok(ObjectStoreArtifacts::new(Arc::new(store)))
        }

        #[cfg(test)]
        pub(super) fn with_part_bytes(mut self, part_bytes: usize) -> ObjectStoreArtifacts {
            self.part_bytes = part_bytes;
            self
        }

        /// Uploads the file, hashing it on the way: in one request up to one part's size, as a
        /// multipart upload above it, so a large model is never held whole in memory.
        async fn put_file(&self, address: &str, source: &Path) -> Result<File, ArtifactError> {
            let location = object_path(address)?;
            let mut input = tokio::fs::File::open(source)
                .await
                .map_err(ArtifactError::io("open", source))?;
            let size_bytes = input
                .metadata()
                .await
                .map_err(ArtifactError::io("inspect", source))?
                .len();
            let uploading = || format!("uploading `{address}`");
            let mut hasher = Sha256::new();
            if size_bytes <= self.part_bytes as u64 {
                let mut content = Vec::with_capacity(size_bytes as usize);
                input
                    .read_to_end(&mut content)
                    .await
                    .map_err(ArtifactError::io("read", source))?;
                hasher.update(&content);
                self.store
                    .put(&location, PutPayload::from(content))
                    .await
                    .map_err(backend(uploading()))?;
            } else {
                let upload = self
                    .store
                    .put_multipart(&location)
                    .await
                    .map_err(backend(uploading()))?;
                let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_bytes);
                let mut buffer = vec![0; COPY_BUFFER_BYTES];
                loop {
                    let n_read = match input.read(&mut buffer).await {
                        Ok(n_read) => n_read,
                        Err(error) => {
                            // Best effort: the error that matters is the read's.
                            let _ = writer.abort().await;
                            return Err(ArtifactError::io("read", source)(error));
                        }
                    };
                    if n_read == 0 {
                        break;
                    }
                    hasher.update(&buffer[..n_read]);
                    if let Err(error) = writer.wait_for_capacity(MAX_PARTS_IN_FLIGHT).await {
                        let _ = writer.abort().await;
                        return Err(backend(uploading())(error));
                    }
                    writer.write(&buffer[..n_read]);
                }
                writer.finish().await.map_err(backend(uploading()))?;
            }
            debug!(size_bytes, "uploaded artifact {address} to {}", self.store);
            Ok(File {
                checksum: hex::encode(hasher.finalize()),
                storage_address: address.to_owned(),
            })
        }

        async fn fetch_file(&self, file: &File, dest: &Path) -> Result<(), ArtifactError> {
            let address = file.storage_address.as_str();
            let location = object_path(address)?;
            let downloading = || format!("downloading `{address}`");
            let result = match self.store.get(&location).await {
                Ok(result) => result,
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(ArtifactError::NotFound {
                        address: address.to_owned(),
                    });
                }
                Err(error) => return Err(backend(downloading())(error)),
            };
            let mut chunks = result.into_stream();
            let mut partial = AsyncPartialFile::create_next_to(dest).await?;
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(backend(downloading()))?;
                partial.write(&chunk).await?;
            }
            partial
                .verify_and_persist(address, &file.checksum, dest)
                .await
        }
    }

    impl ArtifactStore for ObjectStoreArtifacts {
        fn put<'a>(
            &'a self,
            address: &'a str,
            source: &'a Path,
        ) -> BoxFuture<'a, Result<File, ArtifactError>> {
            Box::pin(self.put_file(address, source))
        }

        fn fetch<'a>(
            &'a self,
            file: &'a File,
            dest: &'a Path,
        ) -> BoxFuture<'a, Result<(), ArtifactError>> {
            Box::pin(self.fetch_file(file, dest))
        }

        fn describe(&self) -> String {
            format!("object_store:{}", self.store)
        }
    }

    /// The object key of a checked address.
    fn object_path(address: &str) -> Result<ObjectPath, ArtifactError> {
        check_address(address)?;
        ObjectPath::parse(address)
            .map_err(|_| ArtifactError::invalid(address, "it is not a valid object key"))
    }

    fn backend(operation: String) -> impl FnOnce(object_store::Error) -> ArtifactError {
        move |error| ArtifactError::Backend {
            operation,
            message: error.to_string(),
        }
    }
}
