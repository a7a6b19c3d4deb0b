//! Catching a handler's panic with its message and backtrace, so a panicking
//! handler fails its run instead of taking the worker (or the process) down.
//!
//! A panic hook, installed once, captures the backtrace on the panicking
//! thread while a handler is being polled; [`CatchPanic`] polls the handler
//! inside `catch_unwind` on that same thread and picks the report up.

use std::backtrace::Backtrace;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Once;
use std::task::{Context, Poll};

thread_local! {
    static POLLING_HANDLER: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

static INSTALL: Once = Once::new();

/// Installs the hook (idempotent). Panics outside handlers still go to the
/// previous hook (normally: printed to stderr).
pub fn install_hook() {
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if POLLING_HANDLER.with(Cell::get) {
                let report = format!("{info}\n\nstack backtrace:\n{}", Backtrace::force_capture());
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(report));
            } else {
                previous(info);
            }
        }));
    });
}

/// A panic caught while running a handler.
#[derive(Debug, Clone)]
pub struct PanicReport {
    /// The panic message.
    pub message: String,
    /// Message, location and backtrace.
    pub traceback: String,
}

/// Polls the inner future, turning a panic into `Err(PanicReport)`.
pub struct CatchPanic<F: ?Sized> {
    inner: Pin<Box<F>>,
}

impl<F: Future + ?Sized> CatchPanic<F> {
    pub fn new(inner: Pin<Box<F>>) -> Self {
        install_hook();
        CatchPanic { inner }
    }
}

impl<F: Future + ?Sized> Future for CatchPanic<F> {
    type Output = Result<F::Output, PanicReport>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        POLLING_HANDLER.with(|p| p.set(true));
        let polled = catch_unwind(AssertUnwindSafe(|| self.inner.as_mut().poll(cx)));
        POLLING_HANDLER.with(|p| p.set(false));
        match polled {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic with a non-string payload".to_string());
                let traceback = LAST_PANIC
                    .with(|p| p.borrow_mut().take())
                    .unwrap_or_else(|| message.clone());
                Poll::Ready(Err(PanicReport {
                    message: format!("handler panicked: {message}"),
                    traceback,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_a_report_with_a_backtrace() {
        let fut: Pin<Box<dyn Future<Output = u32> + Send>> = Box::pin(async {
            tokio::task::yield_now().await;
            panic!("boom {}", 42);
        });
        let report = CatchPanic::new(fut).await.unwrap_err();
        assert_eq!(report.message, "handler panicked: boom 42");
        assert!(report.traceback.contains("boom 42"), "{}", report.traceback);
        assert!(
            report.traceback.contains("stack backtrace"),
            "{}",
            report.traceback
        );
    }

    #[tokio::test]
    async fn a_normal_future_passes_through() {
        let fut: Pin<Box<dyn Future<Output = u32> + Send>> = Box::pin(async { 7 });
        assert_eq!(CatchPanic::new(fut).await.unwrap(), 7);
    }
}
