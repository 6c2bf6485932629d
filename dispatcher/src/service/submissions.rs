//! The submission consumer: reads `plan.submit` messages from `baton.submissions`, validates and
//! stores each plan in one transaction, and answers on the message's `reply_to`.
//!
//! A resubmitted request gets the same answer and stores nothing twice: by message id, or, for a
//! plan key already stored, by a digest of the content. A different plan under a stored key is
//! refused as `already_exists`.

use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;
use tokio_util::sync::CancellationToken;

use broker::topology::SUBMISSIONS_QUEUE;
use broker::{Consumer, Delivery, Publisher};
use models::submission::PlanSubmission;
use models::wire::{ErrorDetail, SubmissionReply};

use super::Context;
use crate::store::rows::SubmissionRow;
use crate::store::{self, StoreError, submissions};
use crate::submission::{SubmissionError, SubmissionRecord, accepted_reply, submit_plan};

/// Submissions handled at once: each is a transaction, so a few suffice.
const PREFETCH: u16 = 8;

/// How long to wait before retrying a submission that met a database error.
const RETRY_DELAY: Duration = Duration::from_secs(1);

fn rejected(plan: &PlanSubmission, error: &str, details: Vec<ErrorDetail>) -> SubmissionReply {
    SubmissionReply::Rejected {
        compute_plan_key: Some(plan.key),
        error: error.to_owned(),
        details,
    }
}

fn decode_reply(row: SubmissionRow) -> Result<SubmissionReply, StoreError> {
    serde_json::from_value(row.reply).map_err(|error| StoreError::Corrupt {
        table: "submissions",
        key: row.message_id,
        reason: error.to_string(),
    })
}

/// The answer to `submission`, stored with the plan when accepted.
async fn answer(
    context: &Context,
    submission: &PlanSubmission,
    message_id: &str,
    user: Option<&str>,
) -> Result<SubmissionReply, StoreError> {
    let body = serde_json::to_vec(submission).map_err(|error| StoreError::Encode {
        what: "submission digest",
        reason: error.to_string(),
    })?;
    let digest = hex::encode(sha2::Sha256::digest(&body));
    // Without a message id, the content identifies the request.
    let message_id = if message_id.is_empty() {
        format!("digest:{digest}")
    } else {
        message_id.to_owned()
    };
    let mut conn = store::connection(&context.pool).await?;
    if let Some(row) = submissions::find_by_message(&mut conn, &message_id).await? {
        return decode_reply(row);
    }
    let record = SubmissionRecord {
        message_id: message_id.clone(),
        digest: digest.clone(),
    };
    let creator = user.map(models::UserId::from);
    // A producer's RabbitMQ user names a baton user only once users are registered.
    let creator = match &creator {
        Some(user)
            if crate::store::catalog::find_user(&mut conn, user)
                .await?
                .is_some() =>
        {
            Some(user.clone())
        }
        _ => None,
    };
    let outcome = submit_plan(
        &mut conn,
        submission,
        &context.config.organization,
        creator.as_ref(),
        chrono::Utc::now(),
        Some(&record),
    )
    .await;
    let reply = match outcome {
        Ok((plan, _)) => {
            context.outbox_wakeup.notify_one();
            tracing::info!(plan.key = %plan.key, "compute plan {} stored with {} tasks", plan.key, plan.counters.task_count);
            return Ok(accepted_reply(&plan));
        }
        Err(SubmissionError::Invalid(errors)) => rejected(
            submission,
            "invalid_submission",
            errors.iter().map(ErrorDetail::from).collect(),
        ),
        Err(SubmissionError::PlanExists(key)) => {
            if let Some(row) = submissions::find_by_content(&mut conn, key, &digest).await? {
                return decode_reply(row);
            }
            rejected(
                submission,
                "already_exists",
                vec![ErrorDetail {
                    path: "key".to_owned(),
                    message: format!("compute plan {key} already exists with other content"),
                }],
            )
        }
        Err(SubmissionError::Store(error)) => return Err(error),
    };
    let row = SubmissionRow {
        message_id,
        compute_plan_key: Some(submission.key.0),
        digest,
        reply: serde_json::to_value(&reply).map_err(|error| StoreError::Encode {
            what: "submission reply",
            reason: error.to_string(),
        })?,
        creation_date: chrono::Utc::now(),
    };
    submissions::insert_submission(&mut conn, &row).await?;
    Ok(reply)
}

async fn handle(
    context: &Context,
    replies: &Publisher,
    delivery: Delivery<PlanSubmission>,
) -> anyhow::Result<()> {
    let reply = match answer(
        context,
        &delivery.message,
        &delivery.meta.message_id,
        delivery.meta.user_id.as_deref(),
    )
    .await
    {
        Ok(reply) => reply,
        Err(error) => {
            // The database failed: nothing was stored; try the message again shortly.
            tracing::warn!(
                "submission {} not handled, retrying: {error}",
                delivery.meta.message_id
            );
            tokio::time::sleep(RETRY_DELAY).await;
            delivery.requeue().await?;
            return Ok(());
        }
    };
    if let SubmissionReply::Rejected { error, details, .. } = &reply {
        tracing::info!(
            plan.key = %delivery.message.key,
            "compute plan {} refused ({error}): {} problem(s)",
            delivery.message.key,
            details.len()
        );
    }
    if delivery.meta.reply_to.is_some()
        && let Err(error) = broker::rpc::reply(replies, &delivery.meta, &reply).await
    {
        // The producer went away; the answer stays recorded for its retry.
        tracing::warn!("answering submission {}: {error}", delivery.meta.message_id);
    }
    delivery.ack().await?;
    Ok(())
}

/// Consumes submissions until `shutdown`.
pub async fn run(context: Arc<Context>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut consumer =
        Consumer::<PlanSubmission>::new(&context.broker, SUBMISSIONS_QUEUE, PREFETCH).await?;
    let replies = Publisher::new(&context.broker).await?;
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            next = consumer.next() => next,
        };
        match next {
            None => anyhow::bail!("the submission consumer was canceled by RabbitMQ"),
            Some(Err(error)) => return Err(error.into()),
            Some(Ok(delivery)) => handle(&context, &replies, delivery).await?,
        }
    }
}
