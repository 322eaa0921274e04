//! Work that goes on in the background: a `watch` ([`Watch`]) and a read
//! replica ([`Follow`]). The package runs these in its worker process
//! (python/walsync/_worker.py: never in the application's process, whose
//! own SQLite would share locks with walsync's). Each runs the library's
//! loop on its own thread and is steered through its handle:
//! `stop()` cancels the loop and waits (without the GIL) until it returned,
//! so that nothing is left running: a watch ships what is committed first,
//! as SIGTERM makes the binary do. Dropping a handle stops it the same way.
//!
//! Starting waits until the loop is under way (every database open, or the
//! replica's first state in place), so a bad path or a missing replica is
//! an exception from the call that started it, not a silent thread.

use crate::client::Connection;
use crate::errors;
use crate::pylog::{self, PyLog};
use pyo3::prelude::*;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use walsync::resolve::{EngineFlags, Resolver};
use walsync::selection::SettingFlags;
use walsync::watch::{Board, Controls};
use walsync::{CancelToken, Error, EventSink, Storage};

/// How often a start that waits lets Python run its signal handlers.
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// `watch()`'s keyword arguments (python/walsync/__init__.py passes all),
/// in seconds where the CLI takes durations.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub struct WatchFlags {
    sync_interval: Option<f64>,
    snapshot_interval: Option<f64>,
    snapshot_max_changes: Option<u64>,
    snapshot_on_idle: Option<f64>,
    snapshot_max_interval: Option<f64>,
    min_checkpoint_pages: Option<u64>,
    truncate_checkpoint_pages: Option<u64>,
    validation_interval: Option<f64>,
    takeover: bool,
    pollers: Option<usize>,
    uploaders: Option<usize>,
    shutdown_timeout: Option<f64>,
    metrics_addr: Option<String>,
    socket: Option<PathBuf>,
}

/// Seconds from Python as a duration; negative or not a number: a usage
/// error.
pub fn seconds(value: Option<f64>, what: &str) -> walsync::Result<Option<Duration>> {
    value
        .map(|s| {
            Duration::try_from_secs_f64(s).map_err(|_| {
                Error::Usage(format!("{what} must be a number of seconds ≥ 0, not {s}"))
            })
        })
        .transpose()
}

impl WatchFlags {
    fn settings(&self) -> walsync::Result<SettingFlags> {
        Ok(SettingFlags {
            sync_interval: seconds(self.sync_interval, "sync_interval")?,
            snapshot_interval: seconds(self.snapshot_interval, "snapshot_interval")?,
            snapshot_max_changes: self.snapshot_max_changes,
            snapshot_on_idle: seconds(self.snapshot_on_idle, "snapshot_on_idle")?,
            snapshot_max_interval: seconds(self.snapshot_max_interval, "snapshot_max_interval")?,
            min_checkpoint_pages: self.min_checkpoint_pages,
            truncate_checkpoint_pages: self.truncate_checkpoint_pages,
            validation_interval: seconds(self.validation_interval, "validation_interval")?,
            takeover: self.takeover,
        })
    }

    fn engine(&self) -> walsync::Result<EngineFlags> {
        Ok(EngineFlags {
            pollers: self.pollers,
            uploaders: self.uploaders,
            shutdown_timeout: seconds(self.shutdown_timeout, "shutdown_timeout")?,
            socket: self.socket.clone(),
            metrics_addr: self.metrics_addr.clone(),
        })
    }
}

/// A loop on its own thread, its cancel token, and how it ended.
struct Background {
    cancel: CancelToken,
    thread: Mutex<Option<JoinHandle<walsync::Result<()>>>>,
}

impl Background {
    fn spawn(
        py: Python<'_>,
        cancel: CancelToken,
        name: &str,
        work: impl FnOnce() -> walsync::Result<()> + Send + 'static,
    ) -> PyResult<Background> {
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(work)
            .map_err(|e| errors::internal(py, format!("cannot start a thread: {e}")))?;
        Ok(Background {
            cancel,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Waits until `ready()` (true) or the loop ended (its error, or an
    /// error saying it ended). A signal handler's exception stops it.
    fn wait_until(&self, py: Python<'_>, ready: impl Fn() -> bool) -> PyResult<()> {
        loop {
            if ready() {
                return Ok(());
            }
            if !self.running() {
                self.stop(py)?;
                return Err(errors::internal(py, "stopped as it started".into()));
            }
            py.detach(|| std::thread::sleep(SIGNAL_CHECK));
            if let Err(raised) = py.check_signals() {
                let _ = self.stop(py);
                return Err(raised);
            }
        }
    }

    fn running(&self) -> bool {
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Cancels the loop and waits for it; its error, if it failed. Once
    /// stopped, stopping again does nothing.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        self.cancel.cancel();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(thread) = thread else { return Ok(()) };
        let ended = py.detach(|| thread.join());
        pylog::flush(py);
        match ended {
            Ok(result) => result.map_err(|e| errors::to_py(py, e)),
            Err(_) => Err(errors::internal(
                py,
                "the background thread stopped unexpectedly (a bug: please report it)".into(),
            )),
        }
    }
}

impl Drop for Background {
    /// A handle dropped without `stop()` still stops its loop.
    fn drop(&mut self) {
        self.cancel.cancel();
        let thread = self
            .thread
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

/// An in-app `watch`.
#[pyclass(module = "walsync._walsync", frozen)]
pub struct Watch {
    background: Background,
    board: Arc<Board>,
}

impl Watch {
    /// Opens the storage and the databases as `walsync watch` would, with
    /// no control socket unless `flags.socket` names one, and starts.
    pub fn start(
        py: Python<'_>,
        connection: &Connection,
        paths: Vec<PathBuf>,
        flags: WatchFlags,
    ) -> PyResult<Watch> {
        let prepared = prepare_watch(connection, paths, &flags);
        let (selection, storage, options) = prepared.map_err(|e| errors::to_py(py, e))?;
        let controls = Controls::default();
        let log: Arc<dyn EventSink> = Arc::new(PyLog::new(py));
        let watching = controls.clone();
        let background =
            Background::spawn(py, controls.stop.clone(), "walsync-watch", move || {
                walsync::watch(storage, selection, &options, &watching, log)
            })?;
        let started = || controls.started.take();
        let watch = Watch {
            background,
            board: Arc::clone(&controls.board),
        };
        watch.background.wait_until(py, started)?;
        Ok(watch)
    }
}

fn prepare_watch(
    connection: &Connection,
    paths: Vec<PathBuf>,
    flags: &WatchFlags,
) -> walsync::Result<(
    walsync::selection::Selection,
    Arc<dyn Storage>,
    walsync::WatchOptions,
)> {
    let target = connection.target();
    let mut resolver = Resolver::load(&target, flags.settings()?, paths)?;
    let storage = resolver.storage_for_watch(&target)?;
    let mut options = resolver.watch_options(&flags.engine()?)?;
    // In-app, no control socket unless one is asked for: several watches
    // in one process (or beside a `walsync watch`) would contend for it.
    if flags.socket.is_none() && resolver.selection.config().control.socket.is_none() {
        options.control_socket = None;
    }
    Ok((resolver.selection, storage, options))
}

#[pymethods]
impl Watch {
    /// Ships what is committed and stops; raises what stopped it early.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        self.background.stop(py)
    }

    /// Whether the watch is still running.
    fn running(&self) -> bool {
        self.background.running()
    }

    /// The status board as JSON (`walsync status --json`).
    fn status(&self, py: Python<'_>) -> PyResult<String> {
        let all = self.board.all(walsync::fsutil::now_ms());
        serde_json::to_string(&all).map_err(|e| errors::internal(py, format!("encoding JSON: {e}")))
    }
}

/// A read replica that follows a replica into a local database.
#[pyclass(module = "walsync._walsync", frozen)]
pub struct Follow {
    background: Background,
    status: Arc<walsync::replica::FollowStatus>,
}

impl Follow {
    /// Restores or resumes `local` and follows on; returns once the local
    /// database holds the replica's state.
    pub fn start(
        py: Python<'_>,
        storage: Arc<dyn Storage>,
        options: walsync::replica::FollowOptions,
    ) -> PyResult<Follow> {
        let status = options.status.clone();
        let log = PyLog::new(py);
        let background =
            Background::spawn(py, options.cancel.clone(), "walsync-follow", move || {
                walsync::replica::follow(storage.as_ref(), &options, &log)
            })?;
        let follow = Follow { background, status };
        let ready = || follow.status.get().0 > 0;
        follow.background.wait_until(py, ready)?;
        Ok(follow)
    }
}

#[pymethods]
impl Follow {
    /// Stops after the batch under way (the local database keeps its last
    /// whole state); raises what stopped it early.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        self.background.stop(py)
    }

    fn running(&self) -> bool {
        self.background.running()
    }

    /// (TXID, committed at, visible at): the state the local database
    /// holds, when the primary committed it and when it became visible
    /// (Unix ms).
    fn position(&self) -> (u64, i64, i64) {
        self.status.get()
    }
}
