//! baton's dispatcher: it records submissions in PostgreSQL, resolves each plan's DAG and
//! publishes ready tasks to RabbitMQ.
//!
//! Layout: `core` decides (pure: events in, effects out); `store` is the only module that speaks
//! SQL (one documented function per query, on a deadpool pool of diesel-async connections);
//! `submission` validates and stores plans; `service` runs the loops that connect them to
//! RabbitMQ (`service::run`); `metrics` holds what those loops measure.

pub mod auth;
pub mod core;
pub mod metrics;
pub mod registration;
pub mod service;
pub mod store;
pub mod submission;
