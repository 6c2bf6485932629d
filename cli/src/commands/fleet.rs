//! `baton workers ls` and `baton devices ls`: the fleet as the dispatcher knows it.

use crate::client::ApiClient;
use crate::output::{self, Output};
use crate::{DevicesCommand, OutputFormat, WorkersCommand};

/// Runs `baton workers …`.
pub(crate) async fn workers(
    out: &Output,
    format: OutputFormat,
    client: &ApiClient,
    command: WorkersCommand,
) -> anyhow::Result<()> {
    match command {
        WorkersCommand::Ls { page } => {
            let listed = client.workers(page.into()).await?;
            output::print_worker_page(out, format, &listed)
        }
    }
}

/// Runs `baton devices …`.
pub(crate) async fn devices(
    out: &Output,
    format: OutputFormat,
    client: &ApiClient,
    command: DevicesCommand,
) -> anyhow::Result<()> {
    match command {
        DevicesCommand::Ls { worker, page } => {
            let listed = client.devices(worker.as_deref(), page.into()).await?;
            output::print_device_page(out, format, &listed)
        }
    }
}
