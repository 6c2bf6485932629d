//! Status reports, gathered: the attempts that end while a report is on its way to RabbitMQ
//! are reported together in the next message, a `task.status_batch` on `worker.<id>.status`,
//! rather than a message each. A lone report goes at once, as a `task.status` on
//! `task.<key>.status`; reports gather only behind one under way. Every report is confirmed
//! by RabbitMQ before its attempt's slot is freed, retrying through a broker outage.

use tokio::sync::{mpsc, oneshot};

use broker::Publisher;
use broker::topology::task_event_key;
use models::WorkerId;
use models::wire::{StatusBatch, TaskStatusReport};

use crate::executor::publish_until_confirmed;

/// The most reports sent in one message.
pub(crate) const MAX_BATCH: usize = 64;

/// A report waiting for its message.
struct Pending {
    report: TaskStatusReport,
    confirmed: oneshot::Sender<()>,
}

/// Sends one worker's status reports, in batches (see the module's documentation).
pub(crate) struct Reports {
    tx: mpsc::UnboundedSender<Pending>,
}

impl Reports {
    /// Starts sending the reports of `worker` with `publisher`; stops when the `Reports` is
    /// dropped, after sending what it holds.
    pub(crate) fn start(publisher: Publisher, worker: WorkerId) -> Reports {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(publisher, worker, rx));
        Reports { tx }
    }

    /// Sends `report` and waits until RabbitMQ confirmed it; `false` if the sender stopped
    /// before it could (the attempt's lease then lapses).
    pub(crate) async fn send(&self, report: TaskStatusReport) -> bool {
        let (confirmed, rx) = oneshot::channel();
        if self.tx.send(Pending { report, confirmed }).is_err() {
            return false;
        }
        rx.await.is_ok()
    }
}

/// Sends what is waiting as one message, waits for its confirm, and again, until every sender
/// is gone.
async fn run(publisher: Publisher, worker: WorkerId, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let batch_key = format!("worker.{worker}.status");
    let mut pending = Vec::new();
    while rx.recv_many(&mut pending, MAX_BATCH).await > 0 {
        let (reports, confirmed): (Vec<_>, Vec<_>) = pending
            .drain(..)
            .map(|waiting| (waiting.report, waiting.confirmed))
            .unzip();
        match <[TaskStatusReport; 1]>::try_from(reports) {
            Ok([report]) => {
                let key = task_event_key(report.task_key, "status");
                publish_until_confirmed(&publisher, &key, &report).await;
            }
            Err(reports) => {
                publish_until_confirmed(&publisher, &batch_key, &StatusBatch { reports }).await;
            }
        }
        for waiter in confirmed {
            let _ = waiter.send(());
        }
    }
}
