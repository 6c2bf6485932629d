//! What the dispatcher's loops measure for operators: how long a claim waits for its answer, how
//! many events each applied batch holds, how many batches were applied again, whether this
//! dispatcher leads the event applier, and how many tasks went to a worker without a claim
//! (follow-ups and eager starts) or were handed back.
//!
//! Recorded by the service and registered by whoever serves them (the HTTP
//! API's `/metrics`): no global registry, so each dispatcher, and each test, has its own.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Bucket bounds of the claim latency, in seconds: 1 ms to about 16 s, doubling. A claim waits
/// for its batch's transaction, so tens of milliseconds are normal and seconds are not.
fn claim_latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 15)
}

/// Bucket bounds of the event batch size: 1 to 256 (the applier's largest batch), doubling.
fn event_batch_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(1.0, 2.0, 9)
}

/// The dispatcher's histograms and counters; clones share them (each is behind an `Arc`).
#[derive(Clone, Debug)]
pub struct DispatcherMetrics {
    claim_latency: Histogram,
    event_batch_size: Histogram,
    follow_ups: Counter,
    started_ahead: Counter,
    refills: Counter,
    eager_starts: Counter,
    hand_backs: Counter,
    batch_retries: Counter,
    leading: Gauge,
}

/// How many tasks went to workers without a claim, and came back, since the dispatcher started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectGrants {
    /// Children granted to the worker that reported their parent DONE.
    pub follow_ups: u64,
    /// Tasks a worker started as soon as their parent ended DONE on it, granted ahead
    /// (`TaskAssigned::speculative`) and confirmed with the parent's report.
    pub started_ahead: u64,
    /// Tasks waiting in their queue granted in the slot a worker's DONE report kept for one
    /// (`TaskStatusReport::awaits_work`).
    pub refills: u64,
    /// Tasks granted at their plan's submission to an idle worker.
    pub eager_starts: u64,
    /// Attempts a worker handed back (`CANCELED_BY_WORKER`): no free slot for an assignment,
    /// or the worker stopping.
    pub hand_backs: u64,
}

impl Default for DispatcherMetrics {
    fn default() -> Self {
        DispatcherMetrics::new()
    }
}

impl DispatcherMetrics {
    /// Empty histograms.
    pub fn new() -> DispatcherMetrics {
        DispatcherMetrics {
            claim_latency: Histogram::new(claim_latency_buckets()),
            event_batch_size: Histogram::new(event_batch_buckets()),
            follow_ups: Counter::default(),
            started_ahead: Counter::default(),
            refills: Counter::default(),
            eager_starts: Counter::default(),
            hand_backs: Counter::default(),
            batch_retries: Counter::default(),
            leading: Gauge::default(),
        }
    }

    /// Counts `tasks` granted as follow-ups.
    pub fn count_follow_ups(&self, tasks: usize) {
        self.follow_ups.inc_by(tasks as u64);
    }

    /// Counts `tasks` started ahead and confirmed.
    pub fn count_started_ahead(&self, tasks: usize) {
        self.started_ahead.inc_by(tasks as u64);
    }

    /// Counts `tasks` granted in slots kept by reports.
    pub fn count_refills(&self, tasks: usize) {
        self.refills.inc_by(tasks as u64);
    }

    /// Counts `tasks` started at their plan's submission.
    pub fn count_eager_starts(&self, tasks: usize) {
        self.eager_starts.inc_by(tasks as u64);
    }

    /// Counts `attempts` handed back by their workers.
    pub fn count_hand_backs(&self, attempts: usize) {
        self.hand_backs.inc_by(attempts as u64);
    }

    /// Counts a batch of events rolled back, to be applied again.
    pub fn count_batch_retry(&self) {
        self.batch_retries.inc();
    }

    /// How many batches of events were rolled back and applied again, so far.
    pub fn batch_retries(&self) -> u64 {
        self.batch_retries.get()
    }

    /// Records whether this dispatcher leads the event applier (`store::leadership`).
    pub fn set_leading(&self, leading: bool) {
        self.leading.set(i64::from(leading));
    }

    /// Whether this dispatcher leads the event applier, as last recorded.
    pub fn leading(&self) -> bool {
        self.leading.get() == 1
    }

    /// The counts of tasks granted without a claim and handed back, so far.
    pub fn direct_grants(&self) -> DirectGrants {
        DirectGrants {
            follow_ups: self.follow_ups.get(),
            started_ahead: self.started_ahead.get(),
            refills: self.refills.get(),
            eager_starts: self.eager_starts.get(),
            hand_backs: self.hand_backs.get(),
        }
    }

    /// Records a claim answered `elapsed` after the batch that carried it was received.
    pub fn observe_claim_latency(&self, elapsed: Duration) {
        self.claim_latency.observe(elapsed.as_secs_f64());
    }

    /// Records a batch of `events` deliveries applied in one transaction.
    pub fn observe_event_batch(&self, events: usize) {
        // Batches hold at most a few hundred events: exact as an f64.
        self.event_batch_size.observe(events as f64);
    }

    /// Registers the histograms and counters in `registry` (as `claim_latency_seconds`,
    /// `event_batch_size`, `follow_ups_total`, `started_ahead_total`, `refills_total`,
    /// `eager_starts_total`, `hand_backs_total`,
    /// `event_batch_retries_total` and `event_applier_leading`,
    /// under the registry's prefix); they keep being recorded into.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "claim_latency",
            "Time from receiving a batch holding a task claim to publishing the claim's answer",
            Unit::Seconds,
            self.claim_latency.clone(),
        );
        registry.register(
            "event_batch_size",
            "Events applied per transaction by the event applier",
            self.event_batch_size.clone(),
        );
        registry.register(
            "follow_ups",
            "Tasks granted without a claim to the worker whose DONE report made them ready",
            self.follow_ups.clone(),
        );
        registry.register(
            "started_ahead",
            "Tasks a worker started as soon as their parent ended DONE on it, granted ahead and \
             confirmed with the parent's report",
            self.started_ahead.clone(),
        );
        registry.register(
            "refills",
            "Tasks waiting in their queue granted without a claim in the slot a worker's DONE \
             report kept for one",
            self.refills.clone(),
        );
        registry.register(
            "eager_starts",
            "Tasks granted without a claim, at their plan's submission, to an idle worker",
            self.eager_starts.clone(),
        );
        registry.register(
            "hand_backs",
            "Attempts handed back by their worker (CANCELED_BY_WORKER), re-queued",
            self.hand_backs.clone(),
        );
        registry.register(
            "event_batch_retries",
            "Batches of events rolled back and applied again: a database error, or a plan \
             stored with a child of a task the batch ended",
            self.batch_retries.clone(),
        );
        registry.register(
            "event_applier_leading",
            "1 while this dispatcher leads the event applier, 0 while another does or none yet",
            self.leading.clone(),
        );
    }
}

#[cfg(test)]
mod tests;
