//! Runs the library's blocking calls as a good citizen of the interpreter:
//! the work runs on its own thread while the calling thread waits without
//! the GIL, waking every 50 ms to let Python run its signal handlers. When
//! one raises (Ctrl-C: `KeyboardInterrupt`), the work's [`CancelToken`] is
//! cancelled, the work is waited for (a cancelled restore removes what it
//! wrote) and the exception is raised. Work without a token cannot be
//! stopped part-way; it finishes on its own thread and only the wait ends.
//!
//! walsync installs no signal handler here: Python's stay in place.

use crate::errors;
use crossbeam_channel::{bounded, RecvTimeoutError};
use pyo3::prelude::*;
use std::time::Duration;
use walsync::CancelToken;

/// How often a waiting call lets Python run its signal handlers.
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// Runs `work` off the interpreter and returns its result, its error as a
/// `walsync.errors` exception, or the exception a signal handler raised.
pub fn run<T: Send + 'static>(
    py: Python<'_>,
    cancel: Option<CancelToken>,
    work: impl FnOnce() -> walsync::Result<T> + Send + 'static,
) -> PyResult<T> {
    let (tx, rx) = bounded(1);
    let worker = std::thread::Builder::new()
        .name("walsync-call".into())
        .spawn(move || {
            let _ = tx.send(work());
        })
        .map_err(|e| errors::internal(py, format!("cannot start a thread: {e}")))?;
    let finished = loop {
        match py.detach(|| rx.recv_timeout(SIGNAL_CHECK)) {
            Ok(result) => break Some(result),
            Err(RecvTimeoutError::Disconnected) => break None,
            Err(RecvTimeoutError::Timeout) => {}
        }
        if let Err(raised) = py.check_signals() {
            if let Some(token) = cancel {
                token.cancel();
                let _ = py.detach(|| worker.join());
            }
            crate::pylog::flush(py);
            return Err(raised);
        }
    };
    let _ = py.detach(|| worker.join());
    crate::pylog::flush(py);
    match finished {
        Some(result) => result.map_err(|e| errors::to_py(py, e)),
        None => Err(errors::internal(
            py,
            "the call stopped unexpectedly (a bug: please report it)".into(),
        )),
    }
}
