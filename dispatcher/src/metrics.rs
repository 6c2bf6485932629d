//! What the dispatcher's loops measure for operators: how long a claim waits for its answer and
//! how many events each applied batch holds.
//!
//! Histograms only, recorded by the service and registered by whoever serves them (the HTTP
//! API's `/metrics`): no global registry, so each dispatcher, and each test, has its own.

use std::time::Duration;

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

/// The dispatcher's histograms; clones share them (each histogram is behind an `Arc`).
#[derive(Clone, Debug)]
pub struct DispatcherMetrics {
    claim_latency: Histogram,
    event_batch_size: Histogram,
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

    /// Registers the histograms in `registry` (as `claim_latency_seconds` and
    /// `event_batch_size`, under the registry's prefix); they keep being recorded into.
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
    }
}

#[cfg(test)]
mod tests;
