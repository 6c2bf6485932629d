//! Projects: namespaces of functions, plans and schedules (Orchestra's `Project`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{JsonObject, ProjectId, Timestamp};

/// A namespace of functions, compute plans and schedules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Project {
    /// Its unique identifier.
    pub identifier: ProjectId,
    /// The name shown in user interfaces.
    pub display_name: String,
    /// Services associated with the project (source control, artifact stores, …), by name.
    pub services: JsonObject,
    /// When it was created.
    pub creation_date: Timestamp,
    /// When it was last updated.
    pub update_date: Timestamp,
}
