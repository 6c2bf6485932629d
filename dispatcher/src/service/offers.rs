//! Idle workers' free slots, as their DONE reports and heartbeats tell them (`idle_slots`):
//! the submission consumer starts a new plan's ready tasks on them at once (eager starts),
//! sparing each its way through the outbox, the task queue and a claim.
//!
//! An offer is a hint, never a promise: a worker whose slot was taken meanwhile hands the task
//! back (re-queued without counting an attempt), and one that went away lets its lease lapse.
//! So offers are kept short: each grant to a worker takes one of its slots, a report that is
//! not idle or a hand-back withdraws its offer, and an offer not renewed within `fresh_for`
//! (a little more than a heartbeat interval) is forgotten.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use models::{Properties, RequirementSet, WorkerId};

/// The offers of idle workers, shared by the event applier (which records them) and the
/// submission consumer (which takes them).
#[derive(Debug)]
pub struct Offers {
    offers: Mutex<HashMap<WorkerId, Offer>>,
    fresh_for: Duration,
}

/// What one idle worker offers.
#[derive(Debug)]
struct Offer {
    properties: Properties,
    slots: u32,
    at: Instant,
}

impl Offers {
    /// No offers; an offer not renewed within `fresh_for` is forgotten.
    pub fn new(fresh_for: Duration) -> Offers {
        Offers {
            offers: Mutex::default(),
            fresh_for,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<WorkerId, Offer>> {
        // A panic elsewhere cannot leave the map half-changed: every change is one statement.
        self.offers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `worker`, whose properties are `properties`, said at `now` that it is idle with `slots`
    /// free slots; 0 withdraws its offer.
    pub fn idle(&self, worker: &WorkerId, properties: &Properties, slots: u32, now: Instant) {
        let mut offers = self.lock();
        if slots == 0 {
            offers.remove(worker);
            return;
        }
        offers.insert(
            worker.clone(),
            Offer {
                properties: properties.clone(),
                slots,
                at: now,
            },
        );
    }

    /// Withdraws `worker`'s offer (it is busy, stopping, silent or no longer registered).
    pub fn withdraw(&self, worker: &WorkerId) {
        self.lock().remove(worker);
    }

    /// One of `worker`'s slots was taken by a task granted otherwise (a claim, a follow-up).
    pub fn took(&self, worker: &WorkerId) {
        take_slot(&mut self.lock(), worker);
    }

    /// Whether no worker offers a slot (a cheap check before looking at a plan's tasks).
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Takes a slot of a fresh offer whose worker satisfies `requirements`, from the worker
    /// with the most free slots (ties broken by id, so the choice does not depend on the
    /// map's order); `None` when no offer fits.
    pub fn take(&self, requirements: &RequirementSet, now: Instant) -> Option<WorkerId> {
        let mut offers = self.lock();
        offers.retain(|_, offer| now.saturating_duration_since(offer.at) <= self.fresh_for);
        let chosen = offers
            .iter()
            .filter(|(_, offer)| requirements.is_satisfied_by(&offer.properties))
            .max_by(|(a_id, a), (b_id, b)| a.slots.cmp(&b.slots).then_with(|| b_id.cmp(a_id)))
            .map(|(worker, _)| worker.clone())?;
        take_slot(&mut offers, &chosen);
        Some(chosen)
    }
}

/// Takes one of `worker`'s offered slots, forgetting its offer when none is left.
fn take_slot(offers: &mut HashMap<WorkerId, Offer>, worker: &WorkerId) {
    if let Some(offer) = offers.get_mut(worker) {
        offer.slots -= 1;
        if offer.slots == 0 {
            offers.remove(worker);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: &str) -> WorkerId {
        WorkerId::from(id)
    }

    fn properties(pairs: &[(&str, &str)]) -> Properties {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn requiring(pairs: &[(&str, &str)]) -> RequirementSet {
        RequirementSet(properties(pairs))
    }

    #[test]
    fn a_slot_goes_to_the_idlest_worker_that_satisfies_the_requirements() {
        let offers = Offers::new(Duration::from_secs(15));
        let now = Instant::now();
        offers.idle(&worker("a"), &properties(&[("device", "gpu")]), 1, now);
        offers.idle(&worker("b"), &properties(&[("device", "cpu")]), 3, now);
        let gpu = requiring(&[("device", "gpu")]);
        assert_eq!(offers.take(&gpu, now), Some(worker("a")));
        // a's only slot is gone; b does not have a gpu.
        assert_eq!(offers.take(&gpu, now), None);
        let any = RequirementSet::any();
        assert_eq!(offers.take(&any, now), Some(worker("b")));
        assert_eq!(offers.take(&any, now), Some(worker("b")));
        assert_eq!(offers.take(&any, now), Some(worker("b")));
        assert_eq!(offers.take(&any, now), None);
        assert!(offers.is_empty());
    }

    #[test]
    fn grants_reports_and_silence_shrink_the_offers() {
        let offers = Offers::new(Duration::from_secs(15));
        let now = Instant::now();
        let any = RequirementSet::any();
        offers.idle(&worker("a"), &properties(&[]), 2, now);
        offers.took(&worker("a"));
        offers.took(&worker("a"));
        assert!(offers.is_empty(), "two claims took both slots");
        offers.idle(&worker("a"), &properties(&[]), 2, now);
        offers.idle(&worker("a"), &properties(&[]), 0, now);
        assert!(offers.is_empty(), "a busy report withdraws the offer");
        offers.idle(&worker("a"), &properties(&[]), 2, now);
        offers.withdraw(&worker("a"));
        assert!(offers.is_empty());
        offers.idle(&worker("a"), &properties(&[]), 2, now);
        assert_eq!(offers.take(&any, now + Duration::from_secs(16)), None);
        assert!(
            offers.is_empty(),
            "an offer not renewed in time is forgotten"
        );
    }
}
