//! Organizations: who owns assets, runs tasks and appears in permissions.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{OrganizationId, Timestamp};

/// An organization of the federation (Substra's `Organization`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Organization {
    /// Its identifier.
    pub id: OrganizationId,
    /// Where its services can be reached, when known.
    pub address: Option<String>,
    /// Whether it is the organization this baton deployment acts as. Not stored: derived from
    /// the deployment's configuration when read.
    pub is_current: bool,
    /// When it was registered.
    pub creation_date: Timestamp,
}
