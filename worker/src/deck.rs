//! How many tasks a worker's deck holds a slot (docs/broker.md, "Refills"): as many as its
//! attempts end while the dispatcher answers a report, so that a slot whose attempt ends finds
//! its next task on the deck rather than waiting for the answer.
//!
//! A report's answer takes as long as the report's way to the dispatcher, its batch and the
//! answer's way back (5–25 ms on a 2-core machine); a no-op attempt takes 1–3 ms. A deck of a
//! fixed three tasks a slot left a fan-in's 8 slots busy a third of the time, while for tasks
//! that take longer than an answer it held two more tasks a slot than it needs, tasks another
//! worker could run. Sized by the two durations it covers, the deck holds about one answer's
//! worth of work a slot, whatever the tasks' length.

use std::time::Duration;

/// Tasks a slot before both durations were measured: what a fixed deck held.
const DEFAULT_PER_SLOT: usize = 3;

/// The fewest tasks a slot: one, for tasks that take longer than an answer.
const MIN_PER_SLOT: usize = 1;

/// The most tasks a slot, however short the tasks: with the running one, a worker of 8 slots
/// holds at most 136 tasks.
pub(crate) const MAX_PER_SLOT: usize = 16;

/// How much a new measurement weighs in the running averages.
const WEIGHT: f64 = 1.0 / 8.0;

/// The running averages that size the deck.
#[derive(Debug, Default)]
pub(crate) struct DeckSizing {
    /// How long an attempt takes, from its start to its end, in seconds.
    attempt: Option<f64>,
    /// How long the dispatcher takes to answer a report that asked for tasks, from the
    /// report's queueing to the first task granted for it (or its `released` order), in seconds.
    answer: Option<f64>,
}

impl DeckSizing {
    /// Counts an attempt that took `took`.
    pub(crate) fn attempt_ended(&mut self, took: Duration) {
        average(&mut self.attempt, took);
    }

    /// Counts an answer to a report that came `took` after the report was queued.
    pub(crate) fn answered(&mut self, took: Duration) {
        average(&mut self.answer, took);
    }

    /// How many tasks the deck holds, or has asked for, a slot: the attempts that end during
    /// one answer, between [`MIN_PER_SLOT`] and [`MAX_PER_SLOT`].
    pub(crate) fn per_slot(&self) -> usize {
        let (Some(attempt), Some(answer)) = (self.attempt, self.answer) else {
            return DEFAULT_PER_SLOT;
        };
        if attempt <= 0.0 {
            return MAX_PER_SLOT;
        }
        let ratio = (answer / attempt).ceil();
        if ratio >= MAX_PER_SLOT as f64 {
            MAX_PER_SLOT
        } else {
            // `ratio` is a whole number below MAX_PER_SLOT, and not negative.
            (ratio as usize).max(MIN_PER_SLOT)
        }
    }
}

/// Folds `took` into the running average `mean`.
fn average(mean: &mut Option<f64>, took: Duration) {
    let took = took.as_secs_f64();
    *mean = Some(match *mean {
        None => took,
        Some(mean) => mean + WEIGHT * (took - mean),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn a_deck_holds_three_tasks_a_slot_until_both_durations_are_measured() {
        let mut sizing = DeckSizing::default();
        assert_eq!(sizing.per_slot(), DEFAULT_PER_SLOT);
        sizing.attempt_ended(ms(1));
        assert_eq!(sizing.per_slot(), DEFAULT_PER_SLOT);
        let mut sizing = DeckSizing::default();
        sizing.answered(ms(20));
        assert_eq!(sizing.per_slot(), DEFAULT_PER_SLOT);
    }

    #[test]
    fn a_deck_holds_the_attempts_that_end_during_one_answer() {
        let mut sizing = DeckSizing::default();
        sizing.attempt_ended(ms(2));
        sizing.answered(ms(19));
        assert_eq!(sizing.per_slot(), 10);
        // Part of an attempt counts as one.
        let mut sizing = DeckSizing::default();
        sizing.attempt_ended(ms(3));
        sizing.answered(ms(10));
        assert_eq!(sizing.per_slot(), 4);
    }

    #[test]
    fn tasks_longer_than_an_answer_keep_one_task_a_slot_on_the_deck() {
        let mut sizing = DeckSizing::default();
        sizing.attempt_ended(Duration::from_secs(60));
        sizing.answered(ms(20));
        assert_eq!(sizing.per_slot(), MIN_PER_SLOT);
    }

    #[test]
    fn however_short_the_tasks_a_slot_holds_at_most_sixteen() {
        let mut sizing = DeckSizing::default();
        sizing.attempt_ended(Duration::from_micros(10));
        sizing.answered(ms(30));
        assert_eq!(sizing.per_slot(), MAX_PER_SLOT);
        let mut sizing = DeckSizing::default();
        sizing.attempt_ended(Duration::ZERO);
        sizing.answered(ms(30));
        assert_eq!(sizing.per_slot(), MAX_PER_SLOT);
    }

    #[test]
    fn one_slow_answer_moves_the_size_by_an_eighth_of_its_difference() {
        let mut sizing = DeckSizing::default();
        sizing.attempt_ended(ms(10));
        sizing.answered(ms(10));
        assert_eq!(sizing.per_slot(), 1);
        // 10 + (82 - 10) / 8 = 19 ms: two attempts.
        sizing.answered(ms(82));
        assert_eq!(sizing.per_slot(), 2);
        // Tasks that got long bring it back down.
        for _ in 0..40 {
            sizing.attempt_ended(Duration::from_secs(1));
        }
        assert_eq!(sizing.per_slot(), 1);
    }
}
