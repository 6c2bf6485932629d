//! Which dispatcher applies events: an epoch in `dispatcher_leadership`, taken by a dispatcher
//! when it starts to apply events and checked by every transaction of its event applier.
//!
//! RabbitMQ delivers `baton.dispatcher` to one consumer at a time, but a dispatcher does not
//! learn that another was given the queue (after a lost connection, say) until it tries to
//! write: the epoch is that fence. Taking the lead waits for the transactions that checked the
//! previous epoch (an advisory lock they hold shared), so the new leader, loading plans after
//! it, sees all they wrote, and nothing they did not write yet can be committed after it.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use models::Timestamp;

use super::schema::dispatcher_leadership;
use super::{Cached, StoreError, StoreResult};

/// The advisory lock `(class, key)` that orders taking the lead after the previous leader's
/// transactions: shared by each of them, exclusive while the lead is taken.
const LEAD_LOCK: (i32, i32) = (0x6261_7402, 0);

/// Takes the lead as `holder` at `now`: the next epoch, once every transaction of the previous
/// leader that checked its own has ended. Returns the new epoch.
pub async fn take(conn: &mut AsyncPgConnection, holder: &str, now: Timestamp) -> StoreResult<i64> {
    conn.transaction(async |conn| {
        diesel::sql_query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind::<diesel::sql_types::Integer, _>(LEAD_LOCK.0)
            .bind::<diesel::sql_types::Integer, _>(LEAD_LOCK.1)
            .execute(conn)
            .await?;
        let epoch = diesel::update(dispatcher_leadership::table.find(1i16))
            .set((
                dispatcher_leadership::epoch.eq(dispatcher_leadership::epoch + 1),
                dispatcher_leadership::holder.eq(holder),
                dispatcher_leadership::since.eq(now),
            ))
            .returning(dispatcher_leadership::epoch)
            .get_result::<i64>(conn)
            .await?;
        Ok::<_, StoreError>(epoch)
    })
    .await
}

/// Within a transaction: fails with [`StoreError::NotLeading`] unless `epoch` is still the
/// lead's, and keeps another dispatcher from taking the lead until the transaction ends.
pub async fn hold(mut conn: &AsyncPgConnection, epoch: i64) -> StoreResult<()> {
    // Two statements, in this order: the second reads after the lock is held.
    let locked = Cached(
        diesel::sql_query("SELECT pg_advisory_xact_lock_shared($1, $2)")
            .bind::<diesel::sql_types::Integer, _>(LEAD_LOCK.0)
            .bind::<diesel::sql_types::Integer, _>(LEAD_LOCK.1),
    )
    .execute(&mut conn);
    let mut reader = conn;
    let current = dispatcher_leadership::table
        .find(1i16)
        .select((dispatcher_leadership::epoch, dispatcher_leadership::holder))
        .get_result::<(i64, String)>(&mut reader);
    let (_, (current, holder)) = futures::try_join!(locked, current)?;
    if current == epoch {
        Ok(())
    } else {
        Err(StoreError::NotLeading(format!(
            "{holder} took the lead at epoch {current}, after this dispatcher's {epoch}"
        )))
    }
}
