//! `walsync._walsync`: the walsync library bound to Python, so that the
//! package behaves exactly like the binary and never becomes a second
//! implementation. The API users see (classes, datetimes, docstrings, the
//! exceptions) is the Python package around this module
//! (python/walsync/); this module only moves calls across:
//!
//! - [`client`]: a replica location and the one-shot commands;
//! - [`handles`]: a watch and a read replica on background threads (run by
//!   the package's worker process, python/walsync/_worker.py);
//! - [`blocking`]: every call runs without the GIL and stays interruptible;
//! - [`errors`]: walsync's errors as `walsync.errors` exceptions;
//! - [`pylog`]: log lines through Python's `logging`.
//!
//! Invariants: nothing here installs a signal handler (the library never
//! does; only [`main`], the `walsync` console script, runs the CLI, which
//! owns its process); nothing prints; no call holds the GIL while it waits
//! for I/O.

mod blocking;
mod client;
mod errors;
mod handles;
mod pylog;

use pyo3::prelude::*;

/// Runs the `walsync` command line (`args`, the program name first) in
/// this process and returns its exit code: the console script `walsync`
/// that `pip install` puts on the PATH. Like the binary it installs its
/// SIGINT/SIGTERM handlers and may exit the process (usage errors, a
/// second signal), so only a process that is the command calls it.
#[pyfunction]
fn main(py: Python<'_>, args: Vec<String>) -> i32 {
    py.detach(|| walsync::cli::main(&args))
}

/// Asks the `walsync watch` listening at `socket` (default as the CLI
/// finds it, `[control] socket` of `config` first) for its status board,
/// as JSON; None when no watch answers.
#[pyfunction]
#[pyo3(signature = (socket=None, config=None))]
fn status(
    py: Python<'_>,
    socket: Option<std::path::PathBuf>,
    config: Option<std::path::PathBuf>,
) -> PyResult<Option<String>> {
    blocking::run(py, None, move || {
        let none = None;
        let target = walsync::resolve::Target {
            bucket: &none,
            config: &config,
            endpoint: &none,
            region: &none,
            force_path_style: None,
        };
        let resolver = walsync::resolve::Resolver::load(
            &target,
            walsync::selection::SettingFlags::default(),
            Vec::new(),
        )?;
        let socket = resolver.socket(socket.as_deref());
        let request = walsync::watch::control::ClientRequest::Status;
        let Some(answer) = walsync::watch::control::ask(&socket, &request)? else {
            return Ok(None);
        };
        match (answer.ok, answer.databases) {
            (true, Some(dbs)) => serde_json::to_string(&dbs)
                .map(Some)
                .map_err(|e| walsync::Error::Other(format!("encoding JSON: {e}"))),
            _ => Err(walsync::Error::Other(format!(
                "the watch at {} answered: {}",
                socket.display(),
                answer.error.unwrap_or_default()
            ))),
        }
    })
}

#[pymodule]
fn _walsync(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<client::Client>()?;
    m.add_class::<handles::Watch>()?;
    m.add_class::<handles::Follow>()?;
    m.add_function(wrap_pyfunction!(main, m)?)?;
    m.add_function(wrap_pyfunction!(status, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
