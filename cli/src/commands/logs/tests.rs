use models::{Attempt, LogLine, LogStream, TaskKey};

use super::TaskLog;
use crate::OutputFormat;
use crate::output::Output;

fn line(attempt: u32, seq: u64) -> LogLine {
    LogLine {
        task_key: TaskKey(uuid::Uuid::nil()),
        attempt: Attempt(attempt),
        seq,
        step: Some(0),
        stream: LogStream::Stdout,
        timestamp: chrono::DateTime::UNIX_EPOCH,
        text: format!("a{attempt} l{seq}"),
        truncated: false,
    }
}

/// The texts printed, without the attempt headings.
fn printed(out: &Output) -> Vec<String> {
    out.captured()
        .lines()
        .filter(|text| !text.starts_with("──"))
        .map(|text| {
            text.rsplit(' ')
                .take(2)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[test]
fn each_line_is_printed_once_in_order_whether_stored_or_live() {
    let out = Output::buffer();
    let mut log = TaskLog::new(&out, OutputFormat::Table, TaskKey(uuid::Uuid::nil()));
    log.stored(line(1, 0)).unwrap();
    log.stored(line(1, 1)).unwrap();
    // Live lines already read from storage are dropped.
    log.live(line(1, 1)).unwrap();
    // A live line ahead of one not seen waits for it.
    log.live(line(1, 3)).unwrap();
    assert_eq!(printed(&out), ["a1 l0", "a1 l1"]);
    log.stored(line(1, 2)).unwrap();
    log.stored(line(1, 3)).unwrap();
    log.live(line(1, 4)).unwrap();
    assert_eq!(printed(&out), ["a1 l0", "a1 l1", "a1 l2", "a1 l3", "a1 l4"]);
}

#[test]
fn once_storage_is_read_a_new_attempt_releases_the_lines_of_the_previous_one() {
    let out = Output::buffer();
    let mut log = TaskLog::new(&out, OutputFormat::Table, TaskKey(uuid::Uuid::nil()));
    log.live(line(1, 0)).unwrap();
    log.live(line(1, 5)).unwrap();
    assert_eq!(printed(&out), ["a1 l0"]);
    log.live(line(2, 0)).unwrap();
    // Storage may still bring lines 1 to 4.
    assert_eq!(printed(&out), ["a1 l0"]);
    log.stored(line(1, 1)).unwrap();
    assert_eq!(printed(&out), ["a1 l0", "a1 l1"]);
    // Storage had all it will ever have of attempt 1.
    log.release(true).unwrap();
    assert_eq!(printed(&out), ["a1 l0", "a1 l1", "a1 l5", "a2 l0"]);
    assert!(out.captured().contains("── attempt 2 ──"));
}

#[test]
fn flushing_prints_what_waits_in_order() {
    let out = Output::buffer();
    let mut log = TaskLog::new(&out, OutputFormat::Table, TaskKey(uuid::Uuid::nil()));
    log.live(line(1, 7)).unwrap();
    log.live(line(1, 3)).unwrap();
    assert!(printed(&out).is_empty());
    log.flush().unwrap();
    assert_eq!(printed(&out), ["a1 l3", "a1 l7"]);
    // What was flushed is not printed again.
    log.stored(line(1, 3)).unwrap();
    log.stored(line(1, 8)).unwrap();
    assert_eq!(printed(&out), ["a1 l3", "a1 l7", "a1 l8"]);
}
