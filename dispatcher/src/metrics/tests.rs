use std::time::Duration;

use prometheus_client::registry::Registry;

use super::DispatcherMetrics;

fn render(metrics: &DispatcherMetrics) -> String {
    let mut registry = Registry::with_prefix("baton");
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encoding to a String");
    text
}

#[test]
fn clones_record_into_the_same_histograms() {
    let metrics = DispatcherMetrics::new();
    let clone = metrics.clone();
    clone.observe_claim_latency(Duration::from_millis(3));
    clone.observe_event_batch(7);
    metrics.observe_event_batch(1);
    let text = render(&metrics);
    assert!(
        text.contains("baton_claim_latency_seconds_count 1"),
        "{text}"
    );
    assert!(text.contains("baton_event_batch_size_count 2"), "{text}");
    assert!(text.contains("baton_event_batch_size_sum 8.0"), "{text}");
}

#[test]
fn direct_grants_are_counted_and_rendered_as_totals() {
    let metrics = DispatcherMetrics::new();
    metrics.count_follow_ups(1);
    metrics.count_started_ahead(2);
    metrics.count_refills(4);
    metrics.clone().count_eager_starts(3);
    metrics.count_hand_backs(1);
    metrics.count_hand_backs(1);
    assert_eq!(
        metrics.direct_grants(),
        super::DirectGrants {
            follow_ups: 1,
            started_ahead: 2,
            refills: 4,
            eager_starts: 3,
            hand_backs: 2,
        }
    );
    let text = render(&metrics);
    for line in [
        "baton_follow_ups_total 1",
        "baton_started_ahead_total 2",
        "baton_refills_total 4",
        "baton_eager_starts_total 3",
        "baton_hand_backs_total 2",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
}

#[test]
fn batch_retries_are_counted_and_rendered_as_a_total() {
    let metrics = DispatcherMetrics::new();
    assert_eq!(metrics.batch_retries(), 0);
    metrics.count_batch_retry();
    metrics.clone().count_batch_retry();
    assert_eq!(metrics.batch_retries(), 2);
    let text = render(&metrics);
    assert!(text.contains("baton_event_batch_retries_total 2"), "{text}");
}

#[test]
fn leading_is_a_gauge_that_follows_the_last_record() {
    let metrics = DispatcherMetrics::new();
    assert!(!metrics.leading());
    assert!(render(&metrics).contains("baton_event_applier_leading 0"));
    metrics.clone().set_leading(true);
    assert!(metrics.leading());
    assert!(render(&metrics).contains("baton_event_applier_leading 1"));
    metrics.set_leading(false);
    assert!(render(&metrics).contains("baton_event_applier_leading 0"));
}
