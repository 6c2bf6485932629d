//! Opening a model's file in the local artifact store for download, under the store's rules
//! (the worker's `LocalStore`): an address is a relative path of normal components, its
//! directories never lead outside the root (symbolic links included), and the file itself is a
//! regular file, not a link. Nothing outside the root is ever opened.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Why a file is not served.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The address is not one the store accepts, or it leads outside the root.
    #[error("address {address:?} is refused: {reason}")]
    Refused {
        /// The address.
        address: String,
        /// Why.
        reason: &'static str,
    },
    /// No file is at the address.
    #[error("no file at {address:?}")]
    NotFound {
        /// The address.
        address: String,
    },
    /// Reading the file system failed.
    #[error("reading {address:?}: {source}")]
    Io {
        /// The address.
        address: String,
        /// The error.
        source: io::Error,
    },
}

/// Checks that `address` is a store address: relative, `/`-separated, of normal components
/// (no empty, `.` or `..` component, no backslash, NUL or control character), bounded in
/// length. Pure.
pub fn check_address(address: &str) -> Result<(), ArtifactError> {
    match models::model::address_problem(address) {
        Some(reason) => Err(ArtifactError::Refused {
            address: address.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// An open file of the store, checked to be the regular file the address names.
#[derive(Debug)]
pub struct OpenArtifact {
    /// The open file.
    pub file: tokio::fs::File,
    /// Its size in bytes.
    pub size: u64,
}

/// Opens the file at `address` under `root` (canonical) for reading.
pub async fn open(root: &Path, address: &str) -> Result<OpenArtifact, ArtifactError> {
    check_address(address)?;
    let io_error = |source: io::Error| {
        if source.kind() == io::ErrorKind::NotFound {
            ArtifactError::NotFound {
                address: address.to_owned(),
            }
        } else {
            ArtifactError::Io {
                address: address.to_owned(),
                source,
            }
        }
    };
    let refuse = |reason| ArtifactError::Refused {
        address: address.to_owned(),
        reason,
    };
    let (directories, name) = match address.rsplit_once('/') {
        Some((directories, name)) => (Some(directories), name),
        None => (None, address),
    };
    let mut parent = root.to_path_buf();
    if let Some(directories) = directories {
        parent.push(directories);
    }
    // The directories as the OS resolves them, links followed, must stay under the root.
    let parent: PathBuf = tokio::fs::canonicalize(&parent).await.map_err(io_error)?;
    if !parent.starts_with(root) {
        return Err(refuse(
            "it leads outside the store's root through a symbolic link",
        ));
    }
    let path = parent.join(name);
    let before = tokio::fs::symlink_metadata(&path).await.map_err(io_error)?;
    if before.file_type().is_symlink() {
        return Err(refuse("it names a symbolic link"));
    }
    if !before.is_file() {
        return Err(refuse("it names something other than a file"));
    }
    let file = tokio::fs::File::open(&path).await.map_err(io_error)?;
    // Without O_NOFOLLOW, the file opened is checked to be the one inspected, so a link swapped
    // in between is never followed.
    let opened = file.metadata().await.map_err(io_error)?;
    if (opened.dev(), opened.ino()) != (before.dev(), before.ino()) {
        return Err(refuse("it changed while being opened"));
    }
    Ok(OpenArtifact {
        file,
        size: opened.len(),
    })
}

#[cfg(test)]
mod tests;
