//! A task attempt's log: the lines its steps and the worker write, numbered, timestamped and
//! bounded per line and per attempt (SPEC.md §6), handed to the publisher over a channel.
//! Also [`next_batch`], which groups what the worker publishes (log lines, samples) into batches.
//!
//! This module does not publish anything: the receiving end of the channel does.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::SubsecRound;
use models::LogStream;
use models::wire::LogRecord;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// The longest UTF-8 encoding of one char, in bytes.
pub(crate) const MAX_CHAR_BYTES: usize = 4;

/// The bounds of one attempt's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLimits {
    /// The longest line kept, in bytes of UTF-8; longer lines are cut and marked truncated.
    pub max_line_bytes: usize,
    /// The most bytes an attempt's log may hold (each line counts its text plus one byte for
    /// its line ending); later lines are dropped.
    pub max_total_bytes: u64,
}

impl Default for LogLimits {
    /// 16 KiB per line, 8 MiB per attempt: room for stack traces and progress output, while a
    /// step printing in a loop cannot fill the broker or the database.
    fn default() -> Self {
        Self {
            max_line_bytes: 16 * 1024,
            max_total_bytes: 8 * 1024 * 1024,
        }
    }
}

/// The writer of one attempt's log, shared (by cloning) by the readers of a step's output and
/// the worker itself.
///
/// Records are numbered from 0 in the order they are sent on the channel.
#[derive(Clone, Debug)]
pub struct LogWriter {
    // A std `Mutex`, not tokio's: it is held only to number a record and push it on an
    // unbounded channel, never across an `.await`, so the order of `seq` is the channel's order.
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    limits: LogLimits,
    tx: UnboundedSender<LogRecord>,
    next_seq: u64,
    total_bytes: u64,
    /// The total bound was reached and its notice written: every later line is dropped.
    full: bool,
    dropped_lines: u64,
}

impl LogWriter {
    /// A writer whose records go to `tx`, starting at `seq` 0.
    pub fn new(limits: LogLimits, tx: UnboundedSender<LogRecord>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                limits,
                tx,
                next_seq: 0,
                total_bytes: 0,
                full: false,
                dropped_lines: 0,
            })),
        }
    }

    /// The bounds this writer applies.
    pub fn limits(&self) -> LogLimits {
        self.lock().limits
    }

    /// Writes one line a step printed on `stream`, without its line ending (a trailing `\r` is
    /// removed too); invalid UTF-8 is replaced with U+FFFD.
    pub fn line(&self, step: Option<u32>, stream: LogStream, text: &[u8]) {
        let text = text.strip_suffix(b"\n").unwrap_or(text);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        let max_line_bytes = self.lock().limits.max_line_bytes;
        // Decode no more than can be kept: a replaced byte only grows, so a raw prefix longer
        // than the bound always decodes to a text longer than the bound.
        let prefix = &text[..text
            .len()
            .min(max_line_bytes.saturating_add(MAX_CHAR_BYTES))];
        let text = String::from_utf8_lossy(prefix);
        self.write(step, stream, &text);
    }

    /// Writes one line of the worker's own (stream `SYSTEM`), such as a step's start or end.
    pub fn system(&self, step: Option<u32>, text: &str) {
        self.write(step, LogStream::System, text);
    }

    /// How many lines were dropped because the attempt's log was full.
    pub fn dropped_lines(&self) -> u64 {
        self.lock().dropped_lines
    }

    fn write(&self, step: Option<u32>, stream: LogStream, text: &str) {
        let mut inner = self.lock();
        if inner.full {
            inner.dropped_lines += 1;
            return;
        }
        let max_line_bytes = inner.limits.max_line_bytes;
        let (text, truncated) = if text.len() > max_line_bytes {
            (&text[..text.floor_char_boundary(max_line_bytes)], true)
        } else {
            (text, false)
        };
        let size = text.len() as u64 + 1;
        if inner.total_bytes + size > inner.limits.max_total_bytes {
            inner.full = true;
            inner.dropped_lines += 1;
            let notice = format!(
                "log truncated at {} bytes: later lines are dropped",
                inner.limits.max_total_bytes
            );
            inner.send(step, LogStream::System, notice, false);
            return;
        }
        inner.total_bytes += size;
        inner.send(step, stream, text.to_owned(), truncated);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock with the state half-updated, so a poisoned
        // lock still holds a consistent state.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn send(&mut self, step: Option<u32>, stream: LogStream, text: String, truncated: bool) {
        let record = LogRecord {
            seq: self.next_seq,
            step,
            stream,
            timestamp: chrono::Utc::now().trunc_subsecs(6),
            text,
            truncated,
        };
        self.next_seq += 1;
        // A closed receiver means nobody publishes this attempt's log any more (the attempt is
        // over or its publisher stopped): the line has nowhere to go, and the step goes on.
        let _ = self.tx.send(record);
    }
}

/// Waits for the next item of `rx`, then gathers more until `max` items are held or `linger`
/// has passed since the first arrived; `None` once the channel is closed and empty.
///
/// Used to publish log lines and samples in batches: one message per batch, not per line.
/// A `max` of 0 is taken as 1.
pub async fn next_batch<T>(
    rx: &mut UnboundedReceiver<T>,
    max: usize,
    linger: Duration,
) -> Option<Vec<T>> {
    let max = max.max(1);
    let first = rx.recv().await?;
    let deadline = tokio::time::Instant::now() + linger;
    let mut batch = Vec::with_capacity(max.min(1024));
    batch.push(first);
    while batch.len() < max {
        let limit = max - batch.len();
        // `timeout_at` polls the receiver before looking at the clock, so items already
        // queued are taken even when the deadline has passed.
        match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, limit)).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    Some(batch)
}

#[cfg(test)]
mod tests;
