use std::time::Duration;

use models::LogStream;
use models::wire::LogRecord;
use tokio::sync::mpsc;

use super::{LogLimits, LogWriter, next_batch};

fn writer(limits: LogLimits) -> (LogWriter, mpsc::UnboundedReceiver<LogRecord>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (LogWriter::new(limits, tx), rx)
}

fn drain(rx: &mut mpsc::UnboundedReceiver<LogRecord>) -> Vec<LogRecord> {
    let mut records = Vec::new();
    while let Ok(record) = rx.try_recv() {
        records.push(record);
    }
    records
}

#[test]
fn records_are_numbered_from_zero_across_clones_and_streams() {
    let (log, mut rx) = writer(LogLimits::default());
    let clone = log.clone();
    log.system(None, "starting");
    clone.line(Some(0), LogStream::Stdout, b"out");
    log.line(Some(0), LogStream::Stderr, b"err");
    clone.system(Some(1), "step 1");
    let records = drain(&mut rx);
    let seen: Vec<_> = records
        .iter()
        .map(|r| (r.seq, r.step, r.stream, r.text.as_str(), r.truncated))
        .collect();
    assert_eq!(
        seen,
        [
            (0, None, LogStream::System, "starting", false),
            (1, Some(0), LogStream::Stdout, "out", false),
            (2, Some(0), LogStream::Stderr, "err", false),
            (3, Some(1), LogStream::System, "step 1", false),
        ]
    );
    for record in &records {
        assert_eq!(record.timestamp.timestamp_subsec_nanos() % 1_000, 0);
    }
}

#[test]
fn a_long_line_is_cut_at_a_char_boundary_and_marked() {
    let limits = LogLimits {
        max_line_bytes: 10,
        ..LogLimits::default()
    };
    let (log, mut rx) = writer(limits);
    // 'a' then 'é' (2 bytes) x 6: the 10-byte bound falls in the middle of an 'é'.
    log.line(Some(0), LogStream::Stdout, "aéééééé".as_bytes());
    // Exactly at the bound: kept whole.
    log.line(Some(0), LogStream::Stdout, b"0123456789");
    // 4-byte chars: the cut falls back to 8 bytes.
    log.system(None, "😀😀😀");
    let records = drain(&mut rx);
    let seen: Vec<_> = records
        .iter()
        .map(|r| (r.text.as_str(), r.truncated))
        .collect();
    assert_eq!(
        seen,
        [("aéééé", true), ("0123456789", false), ("😀😀", true)]
    );
}

#[test]
fn crlf_endings_are_removed() {
    let (log, mut rx) = writer(LogLimits::default());
    log.line(None, LogStream::Stdout, b"windows\r");
    log.line(None, LogStream::Stdout, b"windows\r\n");
    log.line(None, LogStream::Stdout, b"inner\rkept");
    log.line(None, LogStream::Stdout, b"");
    let texts: Vec<_> = drain(&mut rx).into_iter().map(|r| r.text).collect();
    assert_eq!(texts, ["windows", "windows", "inner\rkept", ""]);
}

#[test]
fn invalid_utf8_is_replaced() {
    let limits = LogLimits {
        max_line_bytes: 8,
        ..LogLimits::default()
    };
    let (log, mut rx) = writer(limits);
    log.line(None, LogStream::Stderr, b"a\xffb");
    // Each invalid byte becomes 3 bytes of U+FFFD, so 4 raw bytes exceed the 8-byte bound.
    log.line(None, LogStream::Stderr, b"\xff\xfe\xfd\xfc");
    // A multi-byte char cut in the raw bytes is replaced, not a panic.
    log.line(None, LogStream::Stderr, &"é".as_bytes()[..1]);
    let seen: Vec<_> = drain(&mut rx)
        .into_iter()
        .map(|r| (r.text, r.truncated))
        .collect();
    assert_eq!(
        seen,
        [
            ("a\u{fffd}b".to_owned(), false),
            ("\u{fffd}\u{fffd}".to_owned(), true),
            ("\u{fffd}".to_owned(), false),
        ]
    );
}

#[test]
fn the_total_bound_writes_one_notice_then_drops_lines() {
    let limits = LogLimits {
        max_line_bytes: 100,
        max_total_bytes: 12,
    };
    let (log, mut rx) = writer(limits);
    log.line(Some(0), LogStream::Stdout, b"12345"); // 6 bytes with its line ending
    log.line(Some(0), LogStream::Stdout, b"abcde"); // 12: exactly at the bound
    log.line(Some(0), LogStream::Stdout, b""); // 13: over
    log.line(Some(0), LogStream::Stderr, b"x");
    log.system(None, "step 0 exited with code 0");
    let seen: Vec<_> = drain(&mut rx)
        .into_iter()
        .map(|r| (r.seq, r.stream, r.text))
        .collect();
    assert_eq!(
        seen,
        [
            (0, LogStream::Stdout, "12345".to_owned()),
            (1, LogStream::Stdout, "abcde".to_owned()),
            (
                2,
                LogStream::System,
                "log truncated at 12 bytes: later lines are dropped".to_owned()
            ),
        ]
    );
    assert_eq!(log.dropped_lines(), 3);
}

#[test]
fn a_closed_receiver_is_ignored() {
    let (log, rx) = writer(LogLimits::default());
    drop(rx);
    log.line(Some(0), LogStream::Stdout, b"nobody listens");
    log.system(None, "still fine");
    assert_eq!(log.dropped_lines(), 0);
}

#[tokio::test(start_paused = true)]
async fn next_batch_stops_at_max() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    for item in 0..5 {
        tx.send(item).expect("receiver is open");
    }
    let linger = Duration::from_secs(1);
    assert_eq!(next_batch(&mut rx, 2, linger).await, Some(vec![0, 1]));
    assert_eq!(next_batch(&mut rx, 2, linger).await, Some(vec![2, 3]));
    drop(tx);
    // The channel is closed: what is left comes without waiting for the linger.
    let started = tokio::time::Instant::now();
    assert_eq!(next_batch(&mut rx, 2, linger).await, Some(vec![4]));
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(next_batch(&mut rx, 2, linger).await, None);
}

#[tokio::test(start_paused = true)]
async fn next_batch_lingers_after_the_first_item() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sender = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send("first").expect("receiver is open");
        tokio::time::sleep(Duration::from_millis(30)).await;
        tx.send("within the linger").expect("receiver is open");
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.send("after the linger").expect("receiver is open");
        tx
    });
    let started = tokio::time::Instant::now();
    let batch = next_batch(&mut rx, 100, Duration::from_millis(80)).await;
    assert_eq!(batch, Some(vec!["first", "within the linger"]));
    // 50 ms waiting for the first item, then the 80 ms linger.
    assert_eq!(started.elapsed(), Duration::from_millis(130));
    let batch = next_batch(&mut rx, 100, Duration::from_millis(80)).await;
    assert_eq!(batch, Some(vec!["after the linger"]));
    drop(sender.await.expect("sender task ran"));
    assert_eq!(
        next_batch(&mut rx, 100, Duration::from_millis(80)).await,
        None
    );
}
