//! baton's integration tests: one binary, run against real PostgreSQL (and RabbitMQ, as the
//! broker arrives). Each test gets its own database, so they run in parallel.

mod support;

// Every entity through PostgreSQL and back; typed errors for refused data.
mod store;
// Migrations up, down and up again on an empty database.
mod migrations;
// The RabbitMQ layer: topology, confirms, dead-lettering, request/reply, reconnection.
mod broker;
// The dispatcher end to end with scripted workers.
mod dispatch;
// Real workers running real steps against the dispatcher.
mod worker;
// Node-wide faults (memory alarm); run serially by .ci/run.
mod faults;
// The committed JSON Schemas of the wire messages are up to date.
mod schemas;
// Submitting a compute plan: validation, then one transaction.
mod submit;
// The `baton` command end to end.
mod cli;
// The `baton` client commands against `baton dev`: submit, watch, perf, logs -f, errors.
mod cli_client;
// The HTTP API: every route against an in-process dispatcher.
mod api;
// Authentication and authorization: every route for every role, other organizations' assets,
// refused credentials, AMQP senders, lease tokens, secrets kept out of the logs.
mod auth;
// Per-principal RabbitMQ users and what RabbitMQ lets each do.
mod rabbitmq;
// Producers in any language: the Python example over AMQP, followed through the HTTP API.
mod producers;
// Checked invariants of the code base (no IO in `models`).
mod tidy;
// Every field of the seed documents has a home in baton's model.
mod seeds;
// compose.yaml and the Dockerfile checked against the `baton` command, without Docker.
mod compose;
