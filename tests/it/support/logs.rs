//! The logs of a test, captured: a global tracing subscriber writing to memory, for tests that
//! assert what baton logs. A test that installs it needs a process of its own, as nextest
//! gives each test.

use std::sync::{Arc, Mutex};

/// Where the captured logs are written.
#[derive(Clone, Default)]
pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Installs the process's subscriber, with `filter` (`RUST_LOG` syntax), writing to a new
    /// capture.
    pub(crate) fn install(filter: &str) -> Captured {
        use tracing_subscriber::util::SubscriberInitExt;
        let captured = Captured::default();
        let writer = captured.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish()
            .try_init()
            .expect("this test runs in a process of its own (cargo nextest)");
        captured
    }

    /// Everything written so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(
            &self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_owned()
    }
}
