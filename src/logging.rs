//! Logs to stderr that can never take the service down.
//!
//! The reader of jobsd's stderr may go away (a log collector restarts,
//! `jobsd serve | head`). Rust ignores SIGPIPE, so every later write fails
//! with EPIPE; `eprintln!` panics on that, and so did tracing-subscriber's
//! own report of a failed write (it `eprintln!`s it), which took down
//! whichever task was logging: a request answered with an empty reply, a
//! run failed, and the task that turns SIGTERM into shutdown died before
//! shutdown began.
//!
//! Rules:
//! - Log lines go through [`LossyStderr`]: a line that cannot be written is
//!   dropped and counted in [`dropped_lines`], never retried, never a panic.
//!   Writes are unbuffered, one `write_all` per line, as before.
//! - tracing-subscriber's internal error reports are off (they print with
//!   `eprintln!`).
//! - Nothing prints with `println!`/`eprintln!` while serving; the CLI's
//!   own messages use [`print_stdout`] and [`print_stderr`], which ignore a
//!   closed pipe.
//!
//! A reader that stays connected but stops reading still blocks a write
//! once the pipe's buffer is full (as with any synchronous logger); this
//! module only makes failed writes harmless.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogFormat;

/// Log lines dropped because stderr could not be written (closed pipe,
/// full disk, …) since the process started. Read with [`dropped_lines`];
/// to be exported as a metric.
static DROPPED_LINES: AtomicU64 = AtomicU64::new(0);

/// How many log lines could not be written to stderr and were dropped.
pub fn dropped_lines() -> u64 {
    DROPPED_LINES.load(Ordering::Relaxed)
}

/// Installs the global tracing subscriber: `RUST_LOG` filters (default
/// `info,sqlx=warn,tower_http=warn`), lines go to stderr through
/// [`LossyStderr`], colours only on a terminal.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(LossyStderr)
        .log_internal_errors(false)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// A [`MakeWriter`] for stderr whose writers drop, and count, what they
/// cannot write.
#[derive(Debug, Clone, Copy, Default)]
pub struct LossyStderr;

impl<'a> MakeWriter<'a> for LossyStderr {
    type Writer = Lossy<io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        Lossy::new(io::stderr(), &DROPPED_LINES)
    }
}

/// Wraps a writer so that a failed write is dropped and counted instead of
/// reported: each `write` writes all of its buffer (one log line) or counts
/// one dropped line, and always answers `Ok`.
#[derive(Debug)]
pub struct Lossy<W> {
    inner: W,
    dropped: &'static AtomicU64,
}

impl<W: Write> Lossy<W> {
    pub fn new(inner: W, dropped: &'static AtomicU64) -> Self {
        Lossy { inner, dropped }
    }
}

impl<W: Write> Write for Lossy<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !buf.is_empty() && self.inner.write_all(buf).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.inner.flush();
        Ok(())
    }
}

/// Writes `text` to stdout; a closed or failing stdout is ignored (unlike
/// `print!`, which panics).
pub fn print_stdout(text: &str) {
    let mut out = io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Writes one line to stderr; a closed or failing stderr is ignored (unlike
/// `eprintln!`, which panics).
pub fn print_stderr(line: &str) {
    let _ = writeln!(io::stderr().lock(), "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose reader went away.
    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }

        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
    }

    #[test]
    fn failed_writes_are_dropped_and_counted() {
        static DROPPED: AtomicU64 = AtomicU64::new(0);
        let mut w = Lossy::new(ClosedPipe, &DROPPED);
        assert_eq!(w.write(b"one line\n").ok(), Some(9));
        assert!(w.write_all(b"another line\n").is_ok());
        assert!(w.flush().is_ok());
        assert_eq!(DROPPED.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn written_lines_pass_through_uncounted() {
        static DROPPED: AtomicU64 = AtomicU64::new(0);
        let mut w = Lossy::new(Vec::new(), &DROPPED);
        assert!(w.write_all(b"a line\n").is_ok());
        assert!(w.write_all(b"").is_ok());
        assert_eq!(w.inner, b"a line\n");
        assert_eq!(DROPPED.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_subscriber_writing_to_a_closed_pipe_neither_panics_nor_fails() {
        static DROPPED: AtomicU64 = AtomicU64::new(0);
        let subscriber = tracing_subscriber::fmt()
            .with_writer(|| Lossy::new(ClosedPipe, &DROPPED))
            .log_internal_errors(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("nobody reads this");
            tracing::error!(code = 7, "nor this");
        });
        assert_eq!(DROPPED.load(Ordering::Relaxed), 2);
    }
}
