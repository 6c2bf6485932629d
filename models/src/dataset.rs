//! Datasets (Substra's data managers) and the data samples attached to them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    DataSampleKey, DatasetKey, File, Metadata, OrganizationId, Permission, Permissions, Timestamp,
};

/// A data manager: an opener that reads its samples, with permissions (Substra's `Dataset`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Dataset {
    /// Its key.
    pub key: DatasetKey,
    /// Its name.
    pub name: String,
    /// The organization that registered it; tasks using it run there.
    pub owner: OrganizationId,
    /// Who may process it.
    pub permissions: Permissions,
    /// The kind of data, free text (`images`, `csv`, …). Substra's `type`.
    #[serde(rename = "type")]
    pub data_type: String,
    /// The samples attached to it, in attachment order (stored as links, not on the dataset).
    pub data_sample_keys: Vec<DataSampleKey>,
    /// The opener script that reads the samples.
    pub opener: File,
    /// Its description (a markdown file).
    pub description: File,
    /// Free-form metadata.
    pub metadata: Metadata,
    /// Who may read the logs of tasks that use it.
    pub logs_permission: Permission,
    /// When it was registered.
    pub creation_date: Timestamp,
}

/// One data sample: a directory of data owned by an organization (Substra's `DataSample`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DataSample {
    /// Its key.
    pub key: DataSampleKey,
    /// The organization that registered it.
    pub owner: OrganizationId,
    /// The data managers it is attached to.
    pub data_manager_keys: Vec<DatasetKey>,
    /// Where its data is on the owner's hosts, if registered by path.
    pub path: Option<String>,
    /// When it was registered.
    pub creation_date: Timestamp,
}
