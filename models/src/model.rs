//! Files: the address of a stored file, and the models tasks produce (Substra's `_File`,
//! `InModel` and `OutModel`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ModelKey, OrganizationId, Permissions, TaskKey, Timestamp};

/// Where a file is stored and how to check it: Substra's `_File` and `InModel`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct File {
    /// SHA-256 of the content, 64 lowercase hex digits; consumers verify it after download.
    pub checksum: String,
    /// Where the file is: a URL (`file://`, `s3://`, `https://`) or a path in the artifact store.
    pub storage_address: String,
}

impl File {
    /// Whether `checksum` is 64 hex digits, the form of a SHA-256.
    pub fn has_valid_checksum(&self) -> bool {
        self.checksum.len() == 64 && self.checksum.bytes().all(|b| b.is_ascii_hexdigit())
    }
}

/// A file a task produced for one of its MODEL outputs (Substra's `OutModel`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Model {
    /// The model's key.
    pub key: ModelKey,
    /// The task that produced it.
    pub compute_task_key: TaskKey,
    /// The task output it was registered for.
    pub output_identifier: String,
    /// Where its file is; `None` once the model was disabled (file deleted, record kept).
    pub address: Option<File>,
    /// The permissions of the output it was registered for.
    pub permissions: Permissions,
    /// The organization that produced it (the task's worker organization).
    pub owner: OrganizationId,
    /// When it was registered.
    pub creation_date: Timestamp,
}

/// The longest artifact address, in bytes.
pub const MAX_ADDRESS_BYTES: usize = 1024;

/// The longest component of an artifact address, in bytes (a file name on Linux).
pub const MAX_ADDRESS_COMPONENT_BYTES: usize = 255;

/// Why `address` is not an artifact address, or `None` if it is one: a relative,
/// `/`-separated path of normal components (no empty, `.` or `..` component, no backslash,
/// NUL or control character), at most [`MAX_ADDRESS_BYTES`] long. Every artifact store and
/// the API's downloads check it before anything else, so an address never names a file
/// outside the store.
pub fn address_problem(address: &str) -> Option<&'static str> {
    if address.is_empty() {
        return Some("it is empty");
    }
    if address.len() > MAX_ADDRESS_BYTES {
        return Some("it is longer than 1024 bytes");
    }
    if address.starts_with('/') {
        return Some("it must be relative, not start with `/`");
    }
    if address.contains('\\') {
        return Some("it must not contain a backslash");
    }
    if address.contains('\0') {
        return Some("it must not contain NUL");
    }
    if address.chars().any(char::is_control) {
        return Some("it must not contain control characters");
    }
    address.split('/').find_map(|component| match component {
        "" => Some("it must not have an empty component (`//` or a trailing `/`)"),
        "." | ".." => Some("it must not have a `.` or `..` component"),
        _ if component.len() > MAX_ADDRESS_COMPONENT_BYTES => {
            Some("each component must be at most 255 bytes long")
        }
        _ => None,
    })
}
