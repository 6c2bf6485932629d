//! baton's dispatcher: it records submissions in PostgreSQL, resolves each plan's DAG and
//! publishes ready tasks to RabbitMQ.
//!
//! Layout: `store` is the only module that speaks SQL (one documented function per query, on a
//! deadpool pool of diesel-async connections). The pure `core`, the service loops and the HTTP API
//! arrive with the dispatcher issue.

pub mod store;
pub mod submission;
