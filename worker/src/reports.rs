//! Status reports, gathered: the attempts that end while a report is on its way to RabbitMQ
//! are reported together in the next message, a `task.status_batch` on `worker.<id>.status`,
//! rather than a message each. A lone report goes at once, as a `task.status` on
//! `task.<key>.status`; reports gather only behind one under way, except a chain's: a link's
//! report whose next link started here already waits a few milliseconds for the next links'
//! (see [`gather`]). A report whose models are still being synced to disk waits for them,
//! and so do the reports queued after it. Every report is sent until
//! RabbitMQ confirms it, retrying through a broker outage; its attempt frees its slot once
//! the report is queued here, and ends (a stopping worker waits for it) once it is confirmed.

use tokio::sync::{mpsc, oneshot};

use broker::Publisher;
use broker::topology::task_event_key;
use models::TaskErrorType;
use models::WorkerId;
use models::wire::{ReportedOutcome, StatusBatch, TaskStatusReport};

use crate::artifacts::{ArtifactError, Syncing};
use crate::executor::publish_until_confirmed;

/// The most reports sent in one message.
const MAX_BATCH: usize = 64;

/// The most log text, in bytes, one message's reports carry together (one report carries what
/// it carries): an attempt's whole log may ride in its report (8 MiB by default), and 64 of
/// them would pass RabbitMQ's largest message.
const MAX_LOG_BYTES: usize = 8 * 1024 * 1024;

/// How long a report whose task's next link started here already waits for the reports of the
/// next links (see [`gather`]). A chain's link of no-op work takes 1 to 3 ms on a 2-core machine;
/// the dispatcher keeps 64 links granted ahead (`DispatcherConfig::run_ahead`), so a wait of
/// a few links leaves the worker links to run while the reports travel.
const LINGER: std::time::Duration = std::time::Duration::from_millis(4);

/// How many reports wait together for a chain's next links at most.
const LINGER_REPORTS: usize = 4;

/// A report waiting for its message.
struct Pending {
    report: TaskStatusReport,
    /// Its output models' way to disk, waited for before the report is sent.
    syncing: Vec<Syncing>,
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
        self.queue(report).confirmed().await
    }

    /// Queues `report` for its message; the returned [`Queued`] tells when RabbitMQ confirmed
    /// it.
    pub(crate) fn queue(&self, report: TaskStatusReport) -> Queued {
        self.queue_synced(report, Vec::new())
    }

    /// Queues `report`, to be sent once its output models are on disk (`syncing`); one whose
    /// model could not be synced is sent FAILED instead, retryable. Reports keep their order:
    /// those queued after it wait for it.
    pub(crate) fn queue_synced(&self, report: TaskStatusReport, syncing: Vec<Syncing>) -> Queued {
        let (confirmed, rx) = oneshot::channel();
        match self.tx.send(Pending {
            report,
            syncing,
            confirmed,
        }) {
            Ok(()) => Queued(Some(rx)),
            Err(_) => Queued(None),
        }
    }
}

/// A report on its way to RabbitMQ.
pub(crate) struct Queued(Option<oneshot::Receiver<()>>);

impl Queued {
    /// Waits until RabbitMQ confirmed the report; `false` if the sender stopped before it
    /// could (the attempt's lease then lapses).
    pub(crate) async fn confirmed(self) -> bool {
        match self.0 {
            Some(rx) => rx.await.is_ok(),
            None => false,
        }
    }
}

/// Sends what is waiting as one message, waits for its confirm, and again, until every sender
/// is gone.
async fn run(publisher: Publisher, worker: WorkerId, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let batch_key = broker::topology::worker_event_key(&worker, "status");
    let mut pending: Vec<Pending> = Vec::new();
    while gather(&mut rx, &mut pending).await {
        for waiting in &mut pending {
            for syncing in std::mem::take(&mut waiting.syncing) {
                if let Err(error) = syncing.wait().await {
                    not_stored(&mut waiting.report, &error);
                }
            }
        }
        let (reports, confirmed): (Vec<_>, Vec<_>) = pending
            .drain(..)
            .map(|waiting| (waiting.report, waiting.confirmed))
            .unzip();
        for message in messages(reports) {
            match <[TaskStatusReport; 1]>::try_from(message) {
                Ok([report]) => {
                    let key = task_event_key(report.task_key, "status");
                    publish_until_confirmed(&publisher, &key, &report).await;
                }
                Err(reports) => {
                    let batch = StatusBatch { reports };
                    publish_until_confirmed(&publisher, &batch_key, &batch).await;
                }
            }
        }
        for waiter in confirmed {
            let _ = waiter.send(());
        }
    }
}

/// Turns `report`, whose output models could not all be synced to disk, into a retryable
/// failure: the dispatcher must not record outputs that a crash could lose.
fn not_stored(report: &mut TaskStatusReport, error: &ArtifactError) {
    let task = report.task_key;
    tracing::warn!(task.key = %task, "task {task}: storing its outputs: {error}");
    report.outcome = ReportedOutcome::Failed {
        error_type: TaskErrorType::Internal,
        message: format!("the worker could not store the task's outputs: {error}"),
        retryable: true,
    };
    report.outputs.clear();
}

/// Waits for the next reports to send into `pending`, which must be empty; `false` once every
/// sender is gone and nothing is left.
///
/// Reports that came while the last message was on its way go at once. So does a lone report,
/// unless it says its task's next link started here already (`started_next`, a chain running
/// ahead): nothing waits for such a report, so it waits up to [`LINGER`] for the reports of the
/// next links, [`LINGER_REPORTS`] at most, and they go as one message, which the dispatcher
/// applies in one pass instead of one each. A report of any other kind ends the wait.
async fn gather(rx: &mut mpsc::UnboundedReceiver<Pending>, pending: &mut Vec<Pending>) -> bool {
    if rx.recv_many(pending, MAX_BATCH).await == 0 {
        return false;
    }
    let deadline = tokio::time::Instant::now() + LINGER;
    while pending.len() < LINGER_REPORTS
        && pending
            .iter()
            .all(|waiting| waiting.report.started_next.is_some())
    {
        let room = MAX_BATCH - pending.len();
        match tokio::time::timeout_at(deadline, rx.recv_many(pending, room)).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    true
}

/// `reports` split, in order, into messages whose log text is at most [`MAX_LOG_BYTES`] (or
/// one report).
fn messages(reports: Vec<TaskStatusReport>) -> Vec<Vec<TaskStatusReport>> {
    let mut messages = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for report in reports {
        let size: usize = report.logs.iter().map(|line| line.text.len()).sum();
        if !current.is_empty() && bytes + size > MAX_LOG_BYTES {
            messages.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(report);
    }
    if !current.is_empty() {
        messages.push(current);
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;
    use models::wire::LogRecord;
    use models::{Attempt, LogStream, TaskKey};
    use std::time::Duration;

    fn report(n: u128, log_bytes: usize) -> TaskStatusReport {
        TaskStatusReport {
            task_key: TaskKey(uuid::Uuid::from_u128(n)),
            attempt: Attempt(1),
            lease_token: uuid::Uuid::from_u128(n),
            worker_id: "w".into(),
            outcome: ReportedOutcome::Done,
            steps: Vec::new(),
            output: serde_json::Value::Null,
            outputs: Vec::new(),
            logs: vec![LogRecord {
                seq: 0,
                step: Some(0),
                stream: LogStream::Stdout,
                timestamp: chrono::Utc::now(),
                text: "x".repeat(log_bytes),
                truncated: false,
            }],
            follow_up: false,
            idle_slots: 0,
            started_next: None,
            awaits_work: false,
            on_deck: 0,
        }
    }

    fn keys(messages: &[Vec<TaskStatusReport>]) -> Vec<Vec<u128>> {
        messages
            .iter()
            .map(|message| message.iter().map(|r| r.task_key.0.as_u128()).collect())
            .collect()
    }

    #[tokio::test]
    async fn a_report_queued_after_the_sender_stopped_is_never_confirmed() {
        let (tx, rx) = mpsc::unbounded_channel();
        let reports = Reports { tx };
        let queued = reports.queue(report(1, 1));
        drop(rx);
        assert!(
            !queued.confirmed().await,
            "a report dropped unsent is not confirmed"
        );
        assert!(
            !reports.queue(report(2, 1)).confirmed().await,
            "nor is one queued once the sender is gone"
        );
    }

    /// `report(n)` as a chain's link whose next link started here.
    fn ahead(n: u128) -> TaskStatusReport {
        TaskStatusReport {
            started_next: Some(TaskKey(uuid::Uuid::from_u128(n + 1))),
            ..report(n, 1)
        }
    }

    fn pending(report: TaskStatusReport) -> Pending {
        Pending {
            report,
            syncing: Vec::new(),
            confirmed: oneshot::channel().0,
        }
    }

    fn gathered(pending: &mut Vec<Pending>) -> Vec<u128> {
        pending
            .drain(..)
            .map(|waiting| waiting.report.task_key.0.as_u128())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_chain_s_reports_wait_a_little_for_the_next_links_and_others_go_at_once() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut batch = Vec::new();

        // A lone report of another kind goes at once.
        tx.send(pending(report(1, 1))).unwrap();
        let started = tokio::time::Instant::now();
        assert!(gather(&mut rx, &mut batch).await);
        assert_eq!(gathered(&mut batch), [1]);
        assert_eq!(started.elapsed(), Duration::ZERO);

        // A chain's link waits LINGER for the next links' reports, then goes with those come.
        tx.send(pending(ahead(2))).unwrap();
        let sender = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(LINGER / 2).await;
            sender.send(pending(ahead(3))).unwrap();
        });
        let started = tokio::time::Instant::now();
        assert!(gather(&mut rx, &mut batch).await);
        assert_eq!(gathered(&mut batch), [2, 3]);
        assert_eq!(started.elapsed(), LINGER);

        // The chain's last link (or any other report) ends the wait.
        tx.send(pending(ahead(4))).unwrap();
        let sender = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(LINGER / 4).await;
            sender.send(pending(report(5, 1))).unwrap();
        });
        let started = tokio::time::Instant::now();
        assert!(gather(&mut rx, &mut batch).await);
        assert_eq!(gathered(&mut batch), [4, 5]);
        assert_eq!(started.elapsed(), LINGER / 4);

        // At most LINGER_REPORTS wait together.
        for n in 0..LINGER_REPORTS as u128 + 1 {
            tx.send(pending(ahead(10 + n))).unwrap();
        }
        let started = tokio::time::Instant::now();
        assert!(gather(&mut rx, &mut batch).await);
        assert_eq!(batch.len(), LINGER_REPORTS + 1, "those come go together");
        assert_eq!(started.elapsed(), Duration::ZERO);
        batch.clear();

        // Every sender gone: what is left goes, then nothing.
        tx.send(pending(ahead(20))).unwrap();
        drop(tx);
        assert!(gather(&mut rx, &mut batch).await);
        assert_eq!(gathered(&mut batch), [20]);
        assert!(!gather(&mut rx, &mut batch).await);
    }

    #[test]
    fn a_report_whose_models_could_not_be_synced_becomes_a_retryable_failure() {
        let mut done = TaskStatusReport {
            outputs: vec![models::wire::ReportedOutput::Performance {
                identifier: "score".to_owned(),
                value: 1.0,
            }],
            ..ahead(1)
        };
        let error = ArtifactError::Io {
            action: "sync",
            path: "/store/models/ab/x".into(),
            source: std::io::Error::other("disk gone"),
        };
        not_stored(&mut done, &error);
        match &done.outcome {
            ReportedOutcome::Failed {
                error_type,
                message,
                retryable,
            } => {
                assert_eq!(*error_type, TaskErrorType::Internal);
                assert!(*retryable);
                assert!(message.contains("disk gone"), "{message}");
            }
            other => panic!("still {other:?}"),
        }
        assert!(done.outputs.is_empty(), "no output of it is registered");
        assert!(
            done.started_next.is_some(),
            "the next link's start is still said, for the dispatcher to abort it"
        );
    }

    #[test]
    fn small_reports_go_in_one_message_in_order() {
        let messages = messages((1..=3).map(|n| report(n, 10)).collect());
        assert_eq!(keys(&messages), vec![vec![1, 2, 3]]);
    }

    #[test]
    fn long_logs_split_the_reports_into_several_messages() {
        let half = MAX_LOG_BYTES / 2;
        let reports = vec![
            report(1, half),
            report(2, half),
            report(3, 1),
            report(4, MAX_LOG_BYTES + 1),
            report(5, 1),
        ];
        assert_eq!(
            keys(&messages(reports)),
            vec![vec![1, 2], vec![3], vec![4], vec![5]],
            "a message holds at most MAX_LOG_BYTES of log text, or a single report"
        );
    }
}
