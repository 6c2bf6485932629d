//! baton's worker: it registers with the dispatcher, consumes the requirement queues its
//! properties satisfy, claims tasks and runs their steps on devices, and reports logs,
//! measurements, outputs and outcomes back.
//!
//! [`Worker::builder`] is the entry point, for `baton worker` and for programs that register
//! in-process handlers:
//!
//! ```no_run
//! # async fn demo(config: worker::WorkerConfig, store: std::sync::Arc<dyn worker::artifacts::ArtifactStore>) -> anyhow::Result<()> {
//! let worker = worker::Worker::builder(config, store)
//!     .handler("add", |ctx| async move {
//!         ctx.log("adding");
//!         ctx.set_performance("sum", 3.0).await
//!     })
//!     .build();
//! worker.run(tokio_util::sync::CancellationToken::new()).await
//! # }
//! ```

pub mod agent;
pub mod artifacts;
mod claims;
mod deck;
pub mod device;
mod executor;
pub mod logs;
pub mod measurements;
pub mod process;
mod reports;
pub mod template;
pub mod workspace;

pub use agent::{Worker, WorkerBuilder, WorkerConfig};
pub use device::{Device, DeviceScanner, HandlerContext, LocalDevice};
