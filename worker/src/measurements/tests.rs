use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use models::LogStream;
use models::wire::{LogRecord, Sample};
use tokio::sync::mpsc::{self, UnboundedReceiver};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{MAX_LINE_BYTES, follow, parse_sample};
use crate::logs::{LogLimits, LogWriter};

/// A follower running on a file not created yet.
struct Following {
    _dir: tempfile::TempDir,
    path: PathBuf,
    samples: UnboundedReceiver<Sample>,
    log: UnboundedReceiver<LogRecord>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Following {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("measurements.jsonl");
        let (samples_tx, samples) = mpsc::unbounded_channel();
        let (log_tx, log) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        Self {
            _dir: dir,
            path,
            samples,
            log,
            stop,
            task: None,
        }
        .start(samples_tx, log_tx)
    }

    fn start(
        mut self,
        samples_tx: mpsc::UnboundedSender<Sample>,
        log_tx: mpsc::UnboundedSender<LogRecord>,
    ) -> Self {
        let log = LogWriter::new(LogLimits::default(), log_tx);
        self.task = Some(tokio::spawn(follow(
            self.path.clone(),
            samples_tx,
            log,
            self.stop.clone(),
        )));
        self
    }

    fn append(&self, text: &str) {
        append(&self.path, text);
    }

    async fn next(&mut self) -> (String, f64, f64) {
        let sample = tokio::time::timeout(Duration::from_secs(5), self.samples.recv())
            .await
            .expect("a sample within 5s")
            .expect("the follower is running");
        (sample.channel, sample.t, sample.value)
    }

    /// Stops the follower and returns the samples and log lines it had not handed over yet.
    async fn stop(mut self) -> (Vec<(String, f64, f64)>, Vec<String>) {
        self.stop.cancel();
        let task = self.task.take().expect("started");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the follower returns once stopped")
            .expect("the follower does not panic");
        let mut samples = Vec::new();
        while let Some(sample) = self.samples.recv().await {
            samples.push((sample.channel, sample.t, sample.value));
        }
        let mut problems = Vec::new();
        while let Ok(record) = self.log.try_recv() {
            assert_eq!(record.stream, LogStream::System);
            problems.push(record.text);
        }
        (samples, problems)
    }
}

fn append(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open the measurements file");
    file.write_all(text.as_bytes()).expect("append");
}

fn sample(channel: &str, t: f64, value: f64) -> (String, f64, f64) {
    (channel.to_owned(), t, value)
}

#[tokio::test]
async fn lines_appended_over_time_arrive_in_order() {
    let mut following = Following::new();
    // The file does not exist yet: the follower waits for it.
    tokio::time::sleep(Duration::from_millis(150)).await;
    following.append("{\"channel\": \"loss\", \"t\": 0, \"value\": 1.5}\n");
    assert_eq!(following.next().await, sample("loss", 0.0, 1.5));
    following.append(concat!(
        "{\"channel\": \"loss\", \"t\": 0.5, \"value\": 0.25}\n",
        "{\"channel\": \"acc\", \"t\": 0.5, \"value\": -3, \"unit\": \"%\"}\r\n",
    ));
    assert_eq!(following.next().await, sample("loss", 0.5, 0.25));
    assert_eq!(following.next().await, sample("acc", 0.5, -3.0));
    let (rest, problems) = following.stop().await;
    assert_eq!(rest, []);
    assert_eq!(problems, Vec::<String>::new());
}

#[tokio::test]
async fn a_partial_line_waits_for_its_newline() {
    let mut following = Following::new();
    following.append("{\"channel\": \"loss\", \"t\": 1,");
    // Several polls see the partial line.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(following.samples.try_recv().is_err());
    following.append(" \"value\": 2}\n{\"channel\": \"lo");
    assert_eq!(following.next().await, sample("loss", 1.0, 2.0));
    following.append("ss\", \"t\": 2, \"value\": 3}\n");
    assert_eq!(following.next().await, sample("loss", 2.0, 3.0));
    let (rest, problems) = following.stop().await;
    assert_eq!(rest, []);
    assert_eq!(problems, Vec::<String>::new());
}

#[tokio::test]
async fn bad_lines_are_reported_with_their_number_and_skipped() {
    let mut following = Following::new();
    let long_channel = "c".repeat(101);
    following.append(&format!(
        concat!(
            "{{\"channel\": \"ok\", \"t\": 1, \"value\": 1}}\n",
            "not json\n",
            "\n",
            "[1, 2]\n",
            "{{\"channel\": \"\", \"t\": 1, \"value\": 1}}\n",
            "{{\"channel\": \"{}\", \"t\": 1, \"value\": 1}}\n",
            "{{\"channel\": 7, \"t\": \"1\"}}\n",
            "{{\"channel\": \"x\", \"t\": 1e999, \"value\": 1}}\n",
            "\u{ff}\n",
            "{{\"channel\": \"ok\", \"t\": 2, \"value\": 2}}\n",
        ),
        long_channel
    ));
    assert_eq!(following.next().await, sample("ok", 1.0, 1.0));
    assert_eq!(following.next().await, sample("ok", 2.0, 2.0));
    let (rest, problems) = following.stop().await;
    assert_eq!(rest, []);
    assert_eq!(
        problems,
        [
            "measurements line 2: not JSON: expected ident at line 1 column 2",
            "measurements line 4: not a JSON object",
            "measurements line 5: \"channel\" is empty",
            "measurements line 6: \"channel\" is longer than 100 bytes",
            "measurements line 7: \"channel\" is not a string; \"t\" is not a number; missing \"value\"",
            "measurements line 8: not JSON: number out of range at line 1 column 27",
            "measurements line 9: not JSON: expected value at line 1 column 1",
        ]
    );
}

#[tokio::test]
async fn an_overlong_line_is_reported_and_skipped() {
    let mut following = Following::new();
    let long = format!("{{\"channel\": \"{}\"}}", "x".repeat(MAX_LINE_BYTES));
    following.append(&long[..1000]);
    tokio::time::sleep(Duration::from_millis(150)).await;
    following.append(&long[1000..]);
    following.append("\n{\"channel\": \"after\", \"t\": 1, \"value\": 1}\n");
    assert_eq!(following.next().await, sample("after", 1.0, 1.0));
    let (rest, problems) = following.stop().await;
    assert_eq!(rest, []);
    assert_eq!(
        problems,
        ["measurements line 1: longer than 65536 bytes, skipped"]
    );
}

#[tokio::test]
async fn a_stop_reads_what_remains_including_a_last_line_without_newline() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("measurements.jsonl");
    append(
        &path,
        concat!(
            "{\"channel\": \"a\", \"t\": 1, \"value\": 1}\n",
            "{\"channel\": \"a\", \"t\": 2, \"value\": 2}\n",
            "{\"channel\": \"a\", \"t\": 3, \"value\": 3}",
        ),
    );
    let (samples_tx, mut samples) = mpsc::unbounded_channel();
    let (log_tx, mut log) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    // Stopped before it ever ran: its one read is the last one.
    stop.cancel();
    follow(
        path,
        samples_tx,
        LogWriter::new(LogLimits::default(), log_tx),
        stop,
    )
    .await;
    let mut seen = Vec::new();
    while let Some(sample) = samples.recv().await {
        seen.push((sample.channel, sample.t, sample.value));
    }
    assert_eq!(
        seen,
        [
            sample("a", 1.0, 1.0),
            sample("a", 2.0, 2.0),
            sample("a", 3.0, 3.0)
        ]
    );
    assert!(log.recv().await.is_none());
}

#[tokio::test]
async fn a_stop_after_writes_reads_them_all() {
    let mut following = Following::new();
    following.append("{\"channel\": \"a\", \"t\": 1, \"value\": 1}\n");
    assert_eq!(following.next().await, sample("a", 1.0, 1.0));
    following.append("{\"channel\": \"a\", \"t\": 2, \"value\": 2}\n{\"channel\": \"a\", \"t\": 3, \"value\": 3}");
    let (rest, problems) = following.stop().await;
    assert_eq!(rest, [sample("a", 2.0, 2.0), sample("a", 3.0, 3.0)]);
    assert_eq!(problems, Vec::<String>::new());
}

#[tokio::test]
async fn a_file_that_never_appears_is_no_problem() {
    let following = Following::new();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (rest, problems) = following.stop().await;
    assert_eq!(rest, []);
    assert_eq!(problems, Vec::<String>::new());
}

#[test]
fn samples_are_parsed_with_every_problem_named() {
    assert_eq!(
        parse_sample(br#"{"channel": "loss", "t": 3, "value": 0.5}"#),
        Ok(("loss".to_owned(), 3.0, 0.5))
    );
    assert_eq!(
        parse_sample(br#"{"t": null, "value": true}"#),
        Err("missing \"channel\"; \"t\" is not a number; \"value\" is not a number".to_owned())
    );
    assert_eq!(
        parse_sample(r#"{"channel": "é", "t": -1e308, "value": 18446744073709551615}"#.as_bytes()),
        Ok(("é".to_owned(), -1e308, 18_446_744_073_709_551_615.0))
    );
    assert_eq!(parse_sample(b"42"), Err("not a JSON object".to_owned()));
}
