//! Follows the measurements file of a running step (the path in its `BATON_MEASUREMENTS`
//! variable): the step appends JSON lines such as `{"channel": "loss", "t": 0.5, "value": 0.25}`,
//! and each complete line becomes a [`Sample`] for the publisher (SPEC.md §6).
//!
//! A bad line is reported in the attempt's log and skipped: measurements never fail a task.
//! This module does not publish anything, nor create or remove the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::SubsecRound;
use models::wire::Sample;
use serde_json::Value;
use tokio::fs::File;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::logs::LogWriter;

/// How often the file is read for new lines: often enough for live curves, rarely enough to
/// cost nothing while a step writes nothing.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The longest line read, in bytes without its newline; a longer one is reported and skipped,
/// so a step writing without newlines cannot fill the worker's memory.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// The longest channel name, in bytes.
pub const MAX_CHANNEL_BYTES: usize = 100;

/// The size of the reads from the file.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Reads `path` every [`POLL_INTERVAL`] (it may not exist yet) and sends each new complete line
/// as a [`Sample`] on `tx`, until `stop` is cancelled; then reads the file one last time,
/// including a last line without newline, and returns.
///
/// The file is opened and read (through the blocking pool) only once it has grown: a step that
/// writes no measurements, as most do, costs a `stat` per poll and none of the thread hand-offs,
/// and one that ends within the first poll interval costs a single `stat`.
///
/// Lines are numbered from 1 in problems written to `log` (`measurements line 3: …`); blank
/// lines are skipped silently and fields other than `channel`, `t` and `value` are ignored.
/// The file is expected to be append-only: what is rewritten before the read position is not
/// read again. A closed `tx` is not an error: samples nobody receives are dropped.
pub async fn follow(
    path: PathBuf,
    tx: UnboundedSender<Sample>,
    log: LogWriter,
    stop: CancellationToken,
) {
    let mut lines = Lines::new(tx, log);
    let mut file: Option<File> = None;
    loop {
        // A step that just started has written nothing yet.
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(POLL_INTERVAL) => {}
        }
        // Looked at before reading, so the last read comes after the stop and sees everything
        // the step wrote before it.
        let stopping = stop.is_cancelled();
        // A `stat` of a local file takes microseconds: done here rather than on the blocking
        // pool. A file that cannot be looked at is opened, which says why.
        let grown = std::fs::metadata(&path).map_or(true, |metadata| metadata.len() > lines.read);
        if grown {
            if file.is_none() {
                file = lines.open(&path).await;
            }
            if let Some(open) = &mut file {
                lines.read_new(open).await;
            }
        }
        if stopping {
            lines.finish();
            return;
        }
    }
}

/// The lines of the file as they come, split and parsed.
struct Lines {
    tx: UnboundedSender<Sample>,
    log: LogWriter,
    /// The number of the last complete line.
    line_no: u64,
    /// The start of the current line, not yet ended by a newline.
    pending: Vec<u8>,
    /// The current line is over [`MAX_LINE_BYTES`]: it was reported and is skipped up to its
    /// newline.
    skipping: bool,
    /// The last problem with the file itself, written to the log once rather than every poll.
    file_problem: Option<String>,
    /// Where reads from the file land, kept between polls (allocated at the first read).
    buffer: Vec<u8>,
    /// Bytes read from the file so far.
    read: u64,
}

impl Lines {
    fn new(tx: UnboundedSender<Sample>, log: LogWriter) -> Self {
        Self {
            tx,
            log,
            line_no: 0,
            pending: Vec::new(),
            skipping: false,
            file_problem: None,
            buffer: Vec::new(),
            read: 0,
        }
    }

    /// Opens the file, or says why it cannot be (a file not there yet is no problem).
    async fn open(&mut self, path: &Path) -> Option<File> {
        match File::open(path).await {
            Ok(file) => Some(file),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => {
                self.file_problem(format!("cannot open {}: {error}", path.display()));
                None
            }
        }
    }

    /// Reads what was appended since the last read.
    async fn read_new(&mut self, file: &mut File) {
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.resize(READ_BUFFER_BYTES, 0);
        loop {
            match file.read(&mut buffer).await {
                Ok(0) => break,
                Ok(n) => {
                    self.read += n as u64;
                    self.feed(&buffer[..n]);
                }
                Err(error) => {
                    self.file_problem(format!("cannot read: {error}"));
                    break;
                }
            }
        }
        self.buffer = buffer;
    }

    fn file_problem(&mut self, problem: String) {
        if self.file_problem.as_ref() != Some(&problem) {
            self.log
                .system(None, &format!("measurements file: {problem}"));
            self.file_problem = Some(problem);
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while let Some(newline) = bytes.iter().position(|&byte| byte == b'\n') {
            self.push(&bytes[..newline]);
            self.end_line();
            bytes = &bytes[newline + 1..];
        }
        self.push(bytes);
    }

    fn push(&mut self, part: &[u8]) {
        if self.skipping || part.is_empty() {
            return;
        }
        if self.pending.len() + part.len() > MAX_LINE_BYTES {
            self.skipping = true;
            self.pending = Vec::new();
            let line_no = self.line_no + 1;
            self.log.system(
                None,
                &format!(
                    "measurements line {line_no}: longer than {MAX_LINE_BYTES} bytes, skipped"
                ),
            );
            return;
        }
        self.pending.extend_from_slice(part);
    }

    fn end_line(&mut self) {
        self.line_no += 1;
        if self.skipping {
            self.skipping = false;
            return;
        }
        let line = std::mem::take(&mut self.pending);
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        match parse_sample(line) {
            Ok((channel, t, value)) => {
                let sample = Sample {
                    channel,
                    t,
                    value,
                    timestamp: chrono::Utc::now().trunc_subsecs(6),
                };
                // Nobody receives samples any more (the attempt is over): drop it.
                let _ = self.tx.send(sample);
            }
            Err(problem) => {
                let line_no = self.line_no;
                self.log
                    .system(None, &format!("measurements line {line_no}: {problem}"));
            }
        }
    }

    /// Takes a last line without newline as a complete one.
    fn finish(&mut self) {
        if !self.pending.is_empty() || self.skipping {
            self.end_line();
        }
    }
}

/// Reads one line as `(channel, t, value)`, or says everything that is wrong with it.
fn parse_sample(line: &[u8]) -> Result<(String, f64, f64), String> {
    let object = match serde_json::from_slice::<Value>(line) {
        Ok(Value::Object(object)) => object,
        Ok(_) => return Err("not a JSON object".to_owned()),
        Err(error) => return Err(format!("not JSON: {error}")),
    };
    let mut problems = Vec::new();
    let channel = match object.get("channel") {
        None => {
            problems.push("missing \"channel\"".to_owned());
            None
        }
        Some(Value::String(channel)) if channel.is_empty() => {
            problems.push("\"channel\" is empty".to_owned());
            None
        }
        Some(Value::String(channel)) if channel.len() > MAX_CHANNEL_BYTES => {
            problems.push(format!(
                "\"channel\" is longer than {MAX_CHANNEL_BYTES} bytes"
            ));
            None
        }
        Some(Value::String(channel)) => Some(channel.clone()),
        Some(_) => {
            problems.push("\"channel\" is not a string".to_owned());
            None
        }
    };
    let mut number = |field: &str| match object.get(field) {
        None => {
            problems.push(format!("missing \"{field}\""));
            None
        }
        Some(Value::Number(number)) => match number.as_f64() {
            Some(number) if number.is_finite() => Some(number),
            _ => {
                problems.push(format!("\"{field}\" is not a finite number"));
                None
            }
        },
        Some(_) => {
            problems.push(format!("\"{field}\" is not a number"));
            None
        }
    };
    let t = number("t");
    let value = number("value");
    match (channel, t, value) {
        (Some(channel), Some(t), Some(value)) => Ok((channel, t, value)),
        _ => Err(problems.join("; ")),
    }
}

#[cfg(test)]
mod tests;
