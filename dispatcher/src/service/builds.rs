//! Function builds, the dispatcher's side (SPEC.md §4): a function registered with build steps
//! is WAITING; its build is published to the task queue of its requirements; the first worker
//! to claim it builds it under a lease renewed by its heartbeats; the report makes the
//! function READY (with the built image) or FAILED, and the tasks waiting for it follow. A
//! build whose lease lapses goes back to WAITING and is published again.

use broker::topology::{CONTROL_EXCHANGE, QUEUE_ANNOUNCE_KEY, TASKS_EXCHANGE};
use broker::{Meta, Publisher};
use diesel_async::AsyncPgConnection;
use models::wire::{
    BuildClaim, BuildClaimReply, BuildReady, BuildReport, HeldBuild, QueueAnnouncement,
    ReportedOutcome,
};
use models::{Attempt, FunctionStatus, TaskErrorType, Timestamp};

use super::Context;
use crate::store::{StoreError, builds, catalog};

/// Answers a build claim: granted to the first claimant while the function waits.
pub(crate) async fn claim(
    context: &Context,
    conn: &mut AsyncPgConnection,
    request: &BuildClaim,
    now: Timestamp,
) -> Result<BuildClaimReply, StoreError> {
    let refuse = |reason: String| BuildClaimReply::Refused {
        function_key: request.function_key,
        reason,
    };
    let Some(function) = catalog::find_function(conn, request.function_key).await? else {
        return Ok(refuse(format!(
            "function {} does not exist",
            request.function_key
        )));
    };
    if function.status != FunctionStatus::Waiting {
        return Ok(refuse(format!(
            "function {} is {}: nothing to build",
            function.key, function.status
        )));
    }
    let token = uuid::Uuid::new_v4();
    let expires_at = now + context.config.lease_duration;
    let Some(attempt) = builds::grant_build(
        conn,
        function.key,
        &request.worker_id,
        token,
        expires_at,
        now,
    )
    .await?
    else {
        return Ok(refuse(format!(
            "function {} is being built elsewhere",
            function.key
        )));
    };
    tracing::info!(
        "build {attempt} of function {} granted to worker {}",
        function.key,
        request.worker_id
    );
    Ok(BuildClaimReply::Granted {
        function_key: function.key,
        function_name: function.name.clone(),
        attempt: Attempt(attempt),
        build_token: token,
        lease_expires_at: expires_at,
        build_steps: function.build_steps.clone(),
        archive: function.archive.clone(),
        timeout_secs: function.timeout_secs,
    })
}

/// Records the end of a build; a report without the build's current token changes nothing.
/// Returns whether it ended the build.
pub(crate) async fn finish(
    conn: &mut AsyncPgConnection,
    report: &BuildReport,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let (status, image) = match &report.outcome {
        ReportedOutcome::Done => (FunctionStatus::Ready, report.image.as_ref()),
        ReportedOutcome::Failed {
            error_type,
            message,
            ..
        } if *error_type != TaskErrorType::CanceledByWorker => {
            // A build is not retried: its steps are the function's, and they failed.
            tracing::warn!(
                "build of function {} failed: {message}",
                report.function_key
            );
            (FunctionStatus::Failed, None)
        }
        // A worker that gives up (shutting down, or canceled): built again elsewhere.
        ReportedOutcome::Failed { .. } | ReportedOutcome::Canceled => {
            if builds::release_build(conn, report.function_key, report.build_token, now).await? {
                tracing::info!(
                    "build of function {} handed back: building it again",
                    report.function_key
                );
            }
            return Ok(false);
        }
    };
    let ended = builds::finish_build(
        conn,
        report.function_key,
        report.build_token,
        status,
        image,
        now,
    )
    .await?;
    if ended {
        tracing::info!("function {} is {status}", report.function_key);
    } else {
        tracing::debug!(
            "stale build report for function {} refused",
            report.function_key
        );
    }
    Ok(ended)
}

/// Renews the build leases a heartbeat names.
pub(crate) async fn renew(
    context: &Context,
    conn: &mut AsyncPgConnection,
    held: &[HeldBuild],
    now: Timestamp,
) -> Result<(), StoreError> {
    let expires_at = now + context.config.lease_duration;
    for build in held {
        if !builds::renew_build(conn, build.function_key, build.build_token, expires_at).await? {
            tracing::debug!(
                "renewal of a build of function {} it no longer holds refused",
                build.function_key
            );
        }
    }
    Ok(())
}

/// Lapses expired build leases and publishes every build not yet published (with its queue
/// declared and announced to workers).
pub(crate) async fn publish_pending(
    context: &Context,
    conn: &mut AsyncPgConnection,
    publisher: &Publisher,
    now: Timestamp,
) -> anyhow::Result<()> {
    for function in builds::lapse_builds(conn, now).await? {
        tracing::warn!("the build lease of function {function} lapsed: building it again");
    }
    for function in builds::unpublished_builds(conn).await? {
        let message = BuildReady {
            function_key: function.key,
            requirements: function.requirements.clone(),
        };
        context
            .broker
            .declare_task_queue(&message.requirements)
            .await?;
        publisher
            .publish_broadcast(
                CONTROL_EXCHANGE,
                QUEUE_ANNOUNCE_KEY,
                &QueueAnnouncement {
                    requirements: message.requirements.clone(),
                },
                Meta::default(),
            )
            .await?;
        publisher
            .publish(
                TASKS_EXCHANGE,
                &message.requirements.routing_key(),
                &message,
                Meta {
                    message_id: format!("build-{}-{}", function.key, now.timestamp_micros()),
                    ..Meta::default()
                },
            )
            .await?;
        builds::mark_build_published(conn, function.key, now).await?;
        tracing::info!("build of function {} published", function.key);
    }
    Ok(())
}
