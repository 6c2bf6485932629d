//! The submission consumer: reads `plan.submit` messages from `baton.submissions`, validates and
//! stores each plan in one transaction, and answers on the message's `reply_to`; and the
//! registrations of organizations, projects, functions, datasets and data samples.
//!
//! A resubmitted request gets the same answer and stores nothing twice: by message id, or, for a
//! plan key already stored, by a digest of the content. A different plan under a stored key is
//! refused as `already_exists`.

use std::sync::Arc;
use std::time::Duration;

use diesel_async::AsyncPgConnection;
use tokio_util::sync::CancellationToken;

use broker::consumer::MessageSet;
use broker::envelope::{DecodeError, Envelope};
use broker::topology::{self, CONTROL_EXCHANGE, SUBMISSIONS_QUEUE};
use broker::{Consumer, Delivery, Meta, Publisher, Received, Refusal};
use models::submission::{
    NewDataSamples, NewDataset, NewFunction, NewOrganization, NewProject, PlanSubmission,
};
use models::wire::{AssetReply, ErrorDetail, SubmissionReply, TaskAssigned, WireMessage};

use models::access::{Action, Principal};
use models::{OrganizationId, WorkerId};

use super::Context;
use super::assignment::Functions;
use crate::auth;
use crate::registration::{self, RegistrationError};
use crate::store::rows::SubmissionRow;
use crate::store::{self, StoreError, submissions};
use crate::submission::{
    MESSAGE_ID_REUSED, Starts, SubmissionError, SubmissionRecord, accepted_reply, analyze_after,
    recorded_reply, reused_message_id, submit_plan_starting,
};

/// What arrives on `baton.submissions`.
#[derive(Debug)]
pub enum Submission {
    /// A new compute plan.
    Plan(PlanSubmission),
    /// A function to register (boxed: it is much larger than the others).
    Function(Box<NewFunction>),
    /// A dataset to register.
    Dataset(NewDataset),
    /// Data samples to register.
    DataSamples(NewDataSamples),
    /// An organization to register.
    Organization(NewOrganization),
    /// A project to register.
    Project(NewProject),
}

impl MessageSet for Submission {
    fn kinds() -> Vec<&'static str> {
        broker::topology::submission_kinds().to_vec()
    }

    fn decode(envelope: &Envelope<'_>) -> Result<Self, DecodeError> {
        Ok(match envelope.kind.as_str() {
            PlanSubmission::KIND => Submission::Plan(envelope.decode()?),
            NewFunction::KIND => Submission::Function(Box::new(envelope.decode()?)),
            NewDataset::KIND => Submission::Dataset(envelope.decode()?),
            NewDataSamples::KIND => Submission::DataSamples(envelope.decode()?),
            NewOrganization::KIND => Submission::Organization(envelope.decode()?),
            NewProject::KIND => Submission::Project(envelope.decode()?),
            other => {
                return Err(DecodeError::UnexpectedKind {
                    found: other.to_owned(),
                    expected: Self::kinds().join(", "),
                });
            }
        })
    }
}

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

/// The answer to `submission`, stored with the plan when accepted; the tasks it started at once
/// are sent to their workers with `publisher`.
async fn answer(
    context: &Context,
    publisher: &Publisher,
    functions: &mut Functions,
    conn: &mut AsyncPgConnection,
    submission: &PlanSubmission,
    (record, recorded): (&SubmissionRecord, Option<SubmissionRow>),
    principal: &Principal,
) -> Result<SubmissionReply, StoreError> {
    if let Some(row) = recorded {
        if let Some(detail) = reused_message_id(&row, record) {
            return Ok(rejected(submission, MESSAGE_ID_REUSED, vec![detail]));
        }
        return recorded_reply(row);
    }
    let mut starts = Starts {
        offers: &context.offers,
        lease_duration: context.config.lease_duration,
        functions,
    };
    let outcome = submit_plan_starting(
        conn,
        submission,
        owner_of(context, principal),
        principal.user.as_ref(),
        chrono::Utc::now(),
        Some(record),
        &mut starts,
        context.config.publish_ahead,
    )
    .await;
    let reply = match outcome {
        Ok((plan, outbox, started)) => {
            // The event applier holds the plan before any report of its started tasks.
            if let Some(state) = started.plan {
                context
                    .started
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(state);
            }
            context
                .config
                .metrics
                .count_eager_starts(started.assigned.len());
            send_assigned(publisher, started.assigned).await;
            context.hand_over(outbox);
            analyze_after(conn, &plan).await;
            tracing::info!(plan.key = %plan.key, "compute plan {} stored with {} tasks", plan.key, plan.counters.task_count);
            return Ok(accepted_reply(&plan));
        }
        Err(SubmissionError::Invalid(errors)) => rejected(
            submission,
            "invalid_submission",
            errors.iter().map(ErrorDetail::from).collect(),
        ),
        Err(SubmissionError::PlanExists(key)) => {
            if let Some(row) = submissions::find_by_content(conn, key, &record.digest).await? {
                return recorded_reply(row);
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
    let row = record.row(Some(submission.key), &reply, chrono::Utc::now())?;
    submissions::insert_submission(conn, &row).await?;
    Ok(reply)
}

/// Sends each task started at once to its worker's control queue; their confirms are awaited
/// off the loop. One that does not arrive lapses with its lease, which the event applier
/// watches (`Context::started`).
async fn send_assigned(publisher: &Publisher, assigned: Vec<(WorkerId, TaskAssigned)>) {
    let mut confirms = Vec::with_capacity(assigned.len());
    for (worker, assigned) in assigned {
        let key = topology::worker_control_key(&worker);
        let task = assigned.grant.task_key;
        match publisher
            .send(CONTROL_EXCHANGE, &key, &assigned, Meta::default())
            .await
        {
            Ok(confirm) => confirms.push((task, confirm)),
            Err(error) => {
                tracing::warn!(task.key = %task, "assignment of task {task} not sent: {error}")
            }
        }
    }
    if !confirms.is_empty() {
        tokio::spawn(async move {
            for (task, confirm) in confirms {
                if let Err(error) = confirm.confirmed().await {
                    tracing::warn!(task.key = %task, "assignment of task {task}: {error}");
                }
            }
        });
    }
}

/// The record of `submission`'s message, by which a resubmission is recognized.
fn record_of(submission: &Submission, meta: &Meta) -> Result<SubmissionRecord, StoreError> {
    match submission {
        Submission::Function(new) => SubmissionRecord::of(new.as_ref(), &meta.message_id),
        Submission::Dataset(new) => SubmissionRecord::of(new, &meta.message_id),
        Submission::DataSamples(new) => SubmissionRecord::of(new, &meta.message_id),
        Submission::Organization(new) => SubmissionRecord::of(new, &meta.message_id),
        Submission::Project(new) => SubmissionRecord::of(new, &meta.message_id),
        Submission::Plan(new) => SubmissionRecord::of(new, &meta.message_id),
    }
}

/// The answer to a registration, recorded by message id so a resubmission gets it again.
async fn answer_asset(
    context: &Context,
    conn: &mut AsyncPgConnection,
    submission: &Submission,
    (record, recorded): (&SubmissionRecord, Option<SubmissionRow>),
    principal: &Principal,
) -> Result<AssetReply, StoreError> {
    if let Some(row) = recorded {
        if let Some(detail) = reused_message_id(&row, record) {
            return Ok(AssetReply::Rejected {
                error: MESSAGE_ID_REUSED.to_owned(),
                details: vec![detail],
            });
        }
        return recorded_reply(row);
    }
    let owner = owner_of(context, principal);
    let now = chrono::Utc::now();
    let outcome: Result<Vec<String>, RegistrationError> = match submission {
        Submission::Function(new) => registration::register_function(conn, new, owner, None, now)
            .await
            .map(|function| vec![function.key.to_string()]),
        Submission::Dataset(new) => registration::register_dataset(conn, new, owner, now)
            .await
            .map(|dataset| vec![dataset.key.to_string()]),
        Submission::DataSamples(new) => registration::register_data_samples(conn, new, owner, now)
            .await
            .map(|samples| samples.iter().map(|s| s.key.to_string()).collect()),
        Submission::Organization(new) => registration::register_organization(conn, new, now)
            .await
            .map(|organization| vec![organization.id.to_string()]),
        Submission::Project(new) => registration::register_project(conn, new, now)
            .await
            .map(|project| vec![project.identifier.to_string()]),
        Submission::Plan(_) => Ok(Vec::new()),
    };
    let reply = match outcome {
        Ok(keys) => AssetReply::Accepted { keys },
        Err(RegistrationError::Invalid(details)) => AssetReply::Rejected {
            error: "invalid".to_owned(),
            details,
        },
        Err(RegistrationError::AlreadyExists(message)) => AssetReply::Rejected {
            error: "already_exists".to_owned(),
            details: vec![ErrorDetail {
                path: String::new(),
                message,
            }],
        },
        Err(RegistrationError::Store(error)) => return Err(error),
    };
    let row = record.row(None, &reply, now)?;
    submissions::insert_submission(conn, &row).await?;
    Ok(reply)
}

/// The organization that owns what `principal` registers or submits: its own, or the
/// deployment's for an anonymous caller the deployment allows to.
fn owner_of<'a>(context: &'a Context, principal: &'a Principal) -> &'a OrganizationId {
    principal
        .organization
        .as_ref()
        .unwrap_or(&context.config.organization)
}

/// What a submission asks to do, for authorization.
fn action_of(submission: &Submission) -> Action {
    match submission {
        Submission::Plan(_) => Action::SubmitPlans,
        Submission::Organization(_) => Action::RegisterOrganizations,
        Submission::Function(_)
        | Submission::Dataset(_)
        | Submission::DataSamples(_)
        | Submission::Project(_) => Action::RegisterAssets,
    }
}

/// The sender of `delivery`, or the refusal (error word and message) to answer when it may
/// not do what it asks; and the answer recorded for `record`'s message, if any. Both are read
/// together, on `conn`.
async fn look_up(
    context: &Context,
    conn: &AsyncPgConnection,
    delivery: &Delivery<Submission>,
    record: &SubmissionRecord,
) -> Result<
    (
        Result<Principal, (&'static str, String)>,
        Option<SubmissionRow>,
    ),
    StoreError,
> {
    let (principal, recorded) = futures::try_join!(
        auth::principal_of_message(
            conn,
            &delivery.meta,
            context.broker.user(),
            &context.config.anonymous_roles,
        ),
        submissions::find_by_message(conn, &record.message_id),
    )?;
    let allowed = match auth::refusal(&principal, action_of(&delivery.message), None) {
        None => Ok(principal),
        Some(refusal) => Err(refusal),
    };
    Ok((allowed, recorded))
}

/// Answers a submission its sender may not make, in the reply its kind expects; nothing is
/// stored or recorded, so the same message may succeed once the sender has the right.
async fn refuse(
    replies: &Publisher,
    delivery: &Delivery<Submission>,
    error: &str,
    message: String,
) {
    tracing::info!(
        "submission {} ({}) refused: {message}",
        delivery.meta.message_id,
        action_of(&delivery.message)
    );
    let details = vec![ErrorDetail {
        path: String::new(),
        message,
    }];
    match &delivery.message {
        Submission::Plan(plan) => {
            send_reply(replies, &delivery.meta, &rejected(plan, error, details)).await;
        }
        _ => {
            let reply = AssetReply::Rejected {
                error: error.to_owned(),
                details,
            };
            send_reply(replies, &delivery.meta, &reply).await;
        }
    }
}

async fn handle(
    context: &Context,
    replies: &Publisher,
    functions: &mut Functions,
    delivery: Delivery<Submission>,
) -> anyhow::Result<()> {
    let sent = async {
        let record = record_of(&delivery.message, &delivery.meta)?;
        let mut conn = store::connection(&context.pool).await?;
        match look_up(context, &conn, &delivery, &record).await? {
            (Err((error, message)), _) => {
                refuse(replies, &delivery, error, message).await;
                Ok(())
            }
            (Ok(principal), recorded) => {
                let known = (&record, recorded);
                let asked = (&delivery, &principal);
                answer_authorized(context, replies, functions, &mut conn, asked, known).await
            }
        }
    }
    .await;
    if let Err(error) = sent {
        // The database failed: nothing was stored; try the message again shortly.
        tracing::warn!(
            "submission {} not handled, retrying: {error}",
            delivery.meta.message_id
        );
        tokio::time::sleep(RETRY_DELAY).await;
        delivery.requeue().await?;
        return Ok(());
    }
    delivery.ack().await?;
    Ok(())
}

/// Answers a submission its sender may make.
/// `known`: the record of its message, and the answer recorded for it, if any.
async fn answer_authorized(
    context: &Context,
    replies: &Publisher,
    functions: &mut Functions,
    conn: &mut AsyncPgConnection,
    (delivery, principal): (&Delivery<Submission>, &Principal),
    known: (&SubmissionRecord, Option<SubmissionRow>),
) -> Result<(), StoreError> {
    match &delivery.message {
        Submission::Plan(plan) => {
            match answer(context, replies, functions, conn, plan, known, principal).await {
                Ok(reply) => {
                    if let SubmissionReply::Rejected { error, details, .. } = &reply {
                        tracing::info!(
                            plan.key = %plan.key,
                            "compute plan {} refused ({error}): {} problem(s)",
                            plan.key,
                            details.len()
                        );
                    }
                    send_reply(replies, &delivery.meta, &reply).await;
                    Ok(())
                }
                Err(error) => Err(error),
            }
        }
        other => match answer_asset(context, conn, other, known, principal).await {
            Ok(reply) => {
                send_reply(replies, &delivery.meta, &reply).await;
                Ok(())
            }
            Err(error) => Err(error),
        },
    }
}

/// Tells the sender of a submission that could not be read why (it was dead-lettered), in the
/// reply its kind expects.
async fn answer_refusal(replies: &Publisher, refusal: &Refusal) {
    let details = vec![ErrorDetail {
        path: String::new(),
        message: refusal.reason.clone(),
    }];
    if refusal.kind.as_deref() == Some(PlanSubmission::KIND) || refusal.kind.is_none() {
        let reply = SubmissionReply::Rejected {
            compute_plan_key: None,
            error: "malformed".to_owned(),
            details,
        };
        send_reply(replies, &refusal.meta, &reply).await;
    } else {
        let reply = AssetReply::Rejected {
            error: "malformed".to_owned(),
            details,
        };
        send_reply(replies, &refusal.meta, &reply).await;
    }
}

/// Answers on `reply_to`, if the message gave one.
async fn send_reply<M: WireMessage>(replies: &Publisher, meta: &Meta, reply: &M) {
    if meta.reply_to.is_some()
        && let Err(error) = broker::rpc::reply(replies, meta, reply).await
    {
        // The producer went away; the answer stays recorded for its retry.
        tracing::warn!("answering submission {}: {error}", meta.message_id);
    }
}

/// Consumes submissions until `shutdown`.
pub async fn run(context: Arc<Context>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut consumer =
        Consumer::<Submission>::new(&context.broker, SUBMISSIONS_QUEUE, PREFETCH).await?;
    let replies = Publisher::new(&context.broker).await?;
    // The functions of the tasks started at once, kept while READY.
    let mut functions = Functions::default();
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            next = consumer.next_or_refusal() => next,
        };
        match next {
            None => anyhow::bail!("the submission consumer was canceled by RabbitMQ"),
            Some(Err(error)) => return Err(error.into()),
            Some(Ok(Received::Message(delivery))) => {
                handle(&context, &replies, &mut functions, delivery).await?;
            }
            Some(Ok(Received::Refused(refusal))) => answer_refusal(&replies, &refusal).await,
        }
    }
}
