//! Queries on answered submissions, which make resubmissions idempotent.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use models::PlanKey;

use super::StoreResult;
use super::rows::SubmissionRow;
use super::schema::submissions;

/// Records the answer to a submission; a second record of the same message keeps the first.
pub async fn insert_submission(
    mut conn: &AsyncPgConnection,
    row: &SubmissionRow,
) -> StoreResult<()> {
    diesel::insert_into(submissions::table)
        .values(row)
        .on_conflict_do_nothing()
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// The answer given to the submission message `message_id`.
pub async fn find_by_message(
    mut conn: &AsyncPgConnection,
    message_id: &str,
) -> StoreResult<Option<SubmissionRow>> {
    Ok(submissions::table
        .find(message_id)
        .select(SubmissionRow::as_select())
        .first(&mut conn)
        .await
        .optional()?)
}

/// The answer given to an earlier submission of plan `plan` with the same content (`digest`).
pub async fn find_by_content(
    conn: &mut AsyncPgConnection,
    plan: PlanKey,
    digest: &str,
) -> StoreResult<Option<SubmissionRow>> {
    Ok(submissions::table
        .filter(submissions::compute_plan_key.eq(plan.0))
        .filter(submissions::digest.eq(digest))
        .order(submissions::creation_date)
        .select(SubmissionRow::as_select())
        .first(conn)
        .await
        .optional()?)
}
