//! Claims of tasks, gathered: the tasks a worker's consumers take while a claim is on its way
//! to the dispatcher are claimed together in the next one, as one `task.claim_batch` message
//! (`worker.<id>.claim`) and one reply, rather than a message and a reply each. A lone claim
//! goes at once; claims gather only behind one already under way (as commits gather behind a
//! commit), so nothing waits for a batch to fill.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use broker::RpcClient;
use broker::topology::EVENTS_EXCHANGE;
use models::wire::{ClaimBatch, ClaimBatchReply, ClaimReply};
use models::{TaskKey, WorkerId};

/// The most tasks claimed in one message.
const MAX_BATCH: usize = 256;

/// A claim waiting for its batch.
struct Pending {
    task: TaskKey,
    answer: oneshot::Sender<Result<ClaimReply, String>>,
}

/// Claims tasks for one worker, in batches (see the module's documentation).
pub(crate) struct Claims {
    tx: mpsc::UnboundedSender<Pending>,
}

impl Claims {
    /// Starts claiming for `worker` over `rpc`, each batch waiting at most `timeout` for its
    /// reply; stops when the `Claims` is dropped.
    pub(crate) fn start(rpc: RpcClient, worker: WorkerId, timeout: Duration) -> Claims {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rpc, worker, timeout, rx));
        Claims { tx }
    }

    /// Claims `task`: the dispatcher's answer, or why there is none (the claim may have been
    /// granted all the same; its lease then lapses).
    pub(crate) async fn claim(&self, task: TaskKey) -> Result<ClaimReply, String> {
        let (answer, rx) = oneshot::channel();
        self.tx
            .send(Pending { task, answer })
            .map_err(|_| "the worker stopped claiming".to_owned())?;
        rx.await
            .map_err(|_| "the claim was dropped unanswered".to_owned())?
    }
}

/// Sends what is waiting as one batch, waits for its answer, and again, until every sender is
/// gone.
async fn run(
    rpc: RpcClient,
    worker: WorkerId,
    timeout: Duration,
    mut rx: mpsc::UnboundedReceiver<Pending>,
) {
    let key = broker::topology::worker_event_key(&worker, "claim");
    let mut pending = Vec::new();
    while rx.recv_many(&mut pending, MAX_BATCH).await > 0 {
        let request = ClaimBatch {
            worker_id: worker.clone(),
            task_keys: pending.iter().map(|p| p.task).collect(),
        };
        let reply = rpc
            .call::<_, ClaimBatchReply>(EVENTS_EXCHANGE, &key, &request, timeout)
            .await
            .map_err(|error| error.to_string());
        answer(pending.drain(..), reply);
    }
}

/// Gives each claim of a batch its answer from `reply`, which answers them in order.
fn answer(pending: impl ExactSizeIterator<Item = Pending>, reply: Result<ClaimBatchReply, String>) {
    let claimed = pending.len();
    match reply {
        Ok(reply) if reply.replies.len() == claimed => {
            for (claim, reply) in pending.zip(reply.replies) {
                let answer = if reply.task_key() == claim.task {
                    Ok(reply)
                } else {
                    Err(format!(
                        "the dispatcher answered for task {} instead",
                        reply.task_key()
                    ))
                };
                let _ = claim.answer.send(answer);
            }
        }
        Ok(reply) => {
            let problem = format!(
                "the dispatcher answered {} claims of {claimed}",
                reply.replies.len()
            );
            for claim in pending {
                let _ = claim.answer.send(Err(problem.clone()));
            }
        }
        Err(problem) => {
            for claim in pending {
                let _ = claim.answer.send(Err(problem.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(n: u128) -> (Pending, oneshot::Receiver<Result<ClaimReply, String>>) {
        let (answer, rx) = oneshot::channel();
        let task = TaskKey(uuid::Uuid::from_u128(n));
        (Pending { task, answer }, rx)
    }

    fn refused(n: u128) -> ClaimReply {
        ClaimReply::Refused {
            task_key: TaskKey(uuid::Uuid::from_u128(n)),
            reason: "duplicate".into(),
        }
    }

    #[test]
    fn each_claim_gets_the_answer_for_its_task() {
        let ((a, mut ra), (b, mut rb)) = (pending(1), pending(2));
        let replies = vec![refused(1), refused(7)];
        answer(vec![a, b].into_iter(), Ok(ClaimBatchReply { replies }));
        assert_eq!(ra.try_recv().unwrap(), Ok(refused(1)));
        let mismatch = rb.try_recv().unwrap().unwrap_err();
        assert!(mismatch.contains("instead"), "{mismatch}");
    }

    #[test]
    fn a_short_or_failed_answer_leaves_every_claim_unanswered() {
        let ((a, mut ra), (b, mut rb)) = (pending(1), pending(2));
        let replies = vec![refused(1)];
        answer(vec![a, b].into_iter(), Ok(ClaimBatchReply { replies }));
        for rx in [&mut ra, &mut rb] {
            let problem = rx.try_recv().unwrap().unwrap_err();
            assert!(problem.contains("answered 1 claims of 2"), "{problem}");
        }
        let (c, mut rc) = pending(3);
        answer(vec![c].into_iter(), Err("timed out".into()));
        assert_eq!(rc.try_recv().unwrap(), Err("timed out".into()));
    }
}
