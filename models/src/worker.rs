//! Workers (Orchestra's `Worker`) and the devices they run steps on (LuciHub's devices).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{DeviceId, OrganizationId, Properties, Timestamp, UserId, WorkerId};

/// A worker process on a device host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Worker {
    /// Its unique identifier.
    pub identifier: WorkerId,
    /// The user it belongs to (and authenticates as).
    pub owner: UserId,
    /// The organization whose tasks it runs.
    pub organization: OrganizationId,
    /// The version of the worker program.
    pub version: String,
    /// The name shown in user interfaces.
    pub display_name: String,
    /// Its properties, from its configuration and its devices; tasks' requirements match them.
    pub properties: Properties,
    /// How many tasks it runs at once.
    pub executor_limit: u32,
    /// A disabled worker gets no new work.
    pub is_enabled: bool,
    /// Its heartbeat was seen within the timeout.
    pub is_active: bool,
    /// It was asked to finish its running work and leave.
    pub should_disconnect: bool,
    /// When its last heartbeat arrived.
    pub last_heartbeat: Option<Timestamp>,
    /// When it first registered.
    pub creation_date: Timestamp,
    /// When it was last updated.
    pub update_date: Timestamp,
}

/// A device a worker runs steps on (`local`, an analog computer, …).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Device {
    /// The worker it is attached to.
    pub worker: WorkerId,
    /// Its identifier, unique within the worker.
    pub id: DeviceId,
    /// Its type; becomes the worker property `device=<type>`.
    #[serde(rename = "type")]
    pub device_type: String,
    /// The type of input it takes (LuciHub's input type).
    pub input_type: Option<String>,
    /// A JSON Schema task parameters are validated against before anything runs.
    pub parameter_schema: Option<serde_json::Value>,
    /// The worker's scanner saw it lately.
    pub is_active: bool,
    /// When the scanner last saw it.
    pub last_seen: Option<Timestamp>,
}
