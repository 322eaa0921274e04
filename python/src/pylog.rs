//! Log lines through Python's `logging`, logger `walsync`: never straight
//! to stderr. The library reports what it does as events from its own
//! threads; those must not wait for the GIL (a poller blocked on a busy
//! interpreter would stop replicating), so a [`PyLog`] only queues each
//! line, and one forwarder thread per process takes the GIL to hand the
//! lines to `logging`, in order.
//!
//! Lines below the logger's effective level when the sink was made are
//! dropped before they are formatted. When the queue is full (the
//! interpreter busy for long) lines are dropped, not waited for.

use crossbeam_channel::{bounded, Sender};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::OnceLock;
use walsync::{Event, EventSink, Level};

/// What the forwarder thread is handed.
enum Item {
    Line {
        level: Level,
        kind: &'static str,
        database: Option<String>,
        message: String,
    },
    /// Answered once every line queued before it was handed to logging.
    Flush(Sender<()>),
}

/// Lines the forwarder can hold before new ones are dropped.
const QUEUE: usize = 4096;

/// The forwarder's queue; the thread starts with the first sink.
fn queue() -> Option<&'static Sender<Item>> {
    static QUEUE_TX: OnceLock<Option<Sender<Item>>> = OnceLock::new();
    QUEUE_TX
        .get_or_init(|| {
            let (tx, rx) = bounded::<Item>(QUEUE);
            let started = std::thread::Builder::new()
                .name("walsync-log".into())
                .spawn(move || {
                    for item in rx {
                        match item {
                            Item::Flush(done) => {
                                let _ = done.send(());
                            }
                            line => {
                                // Not at all once the interpreter is
                                // shutting down.
                                let _ = Python::try_attach(|py| hand_to_logging(py, line));
                            }
                        }
                    }
                });
            started.ok().map(|_| tx)
        })
        .as_ref()
}

/// Calls `logging.getLogger("walsync").log(level, "%s", message, extra=…)`.
fn hand_to_logging(py: Python<'_>, item: Item) -> PyResult<()> {
    let Item::Line {
        level,
        kind,
        database,
        message,
    } = item
    else {
        return Ok(());
    };
    let logger = logger(py)?;
    let extra = PyDict::new(py);
    extra.set_item("walsync_event", kind)?;
    extra.set_item("walsync_database", database)?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("extra", extra)?;
    logger.call_method("log", (python_level(level), "%s", message), Some(&kwargs))?;
    Ok(())
}

fn logger(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    py.import("logging")?
        .call_method1("getLogger", ("walsync",))
}

/// The `logging` level number of a walsync level.
fn python_level(level: Level) -> i32 {
    match level {
        Level::Debug => 10,
        Level::Info => 20,
        Level::Warn => 30,
        Level::Error => 40,
    }
}

/// An event sink that queues lines for Python's `logging`.
pub struct PyLog {
    /// The lowest level the `walsync` logger let through when this sink
    /// was made.
    min_level: Level,
}

impl PyLog {
    /// A sink at the `walsync` logger's effective level now.
    pub fn new(py: Python<'_>) -> PyLog {
        let effective = logger(py)
            .and_then(|l| l.call_method0("getEffectiveLevel"))
            .and_then(|n| n.extract::<i32>())
            .unwrap_or(20);
        let min_level = match effective {
            ..=10 => Level::Debug,
            11..=20 => Level::Info,
            21..=30 => Level::Warn,
            _ => Level::Error,
        };
        PyLog { min_level }
    }

    /// Queues one line.
    pub fn line(
        &self,
        level: Level,
        kind: &'static str,
        database: Option<String>,
        message: String,
    ) {
        if level < self.min_level {
            return;
        }
        let Some(tx) = queue() else { return };
        let item = Item::Line {
            level,
            kind,
            database,
            message,
        };
        // Full: dropped, never waited for (see the module's doc).
        let _ = tx.try_send(item);
    }
}

impl EventSink for PyLog {
    fn emit(&self, event: Event) {
        if event.level() < self.min_level {
            return;
        }
        let database = event.database().map(str::to_string);
        self.line(event.level(), event.kind(), database, event.to_string());
    }
}

/// Waits (without the GIL) until every line queued so far was handed to
/// `logging`, so that a call's lines come before it returns.
pub fn flush(py: Python<'_>) {
    let Some(tx) = queue() else { return };
    let (done_tx, done_rx) = bounded(1);
    // Without the GIL even to queue: the forwarder needs it to make room.
    py.detach(|| {
        if tx.send(Item::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv_timeout(std::time::Duration::from_secs(5));
        }
    });
}
