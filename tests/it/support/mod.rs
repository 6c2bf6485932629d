//! Shared helpers of the integration tests.

pub(crate) mod broker;
pub(crate) mod cluster;
pub(crate) mod db;
pub(crate) mod fixtures;
pub(crate) mod logs;
