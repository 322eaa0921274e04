//! walsync's errors as Python exceptions: each [`walsync::Error`] becomes
//! the class of `walsync.errors` that mirrors its exit code, carrying the
//! message the CLI prints (without the `walsync: ` prefix) and the code.
//! The classes are defined in Python (python/walsync/errors.py), where
//! their docstrings are; this module only picks one and raises it.

use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError};
use pyo3::prelude::*;
use walsync::Error;

/// The `walsync.errors` class for `error`.
fn class_name(error: &Error) -> &'static str {
    match error {
        Error::Usage(_) => "ConfigError",
        Error::Database(_) => "DatabaseError",
        Error::Credentials(_) => "CredentialsError",
        Error::Storage(_) => "StorageError",
        Error::Integrity(_) => "IntegrityError",
        Error::Restore(_) => "RestoreError",
        Error::Local(_) => "LocalFileError",
        Error::Other(_) | Error::Cancelled => "WalSyncError",
    }
}

/// `error` as the Python exception to raise. A cancelled call was
/// interrupted (Ctrl-C): that is Python's `KeyboardInterrupt`.
pub fn to_py(py: Python<'_>, error: Error) -> PyErr {
    if matches!(error, Error::Cancelled) {
        return PyKeyboardInterrupt::new_err(error.message().to_string());
    }
    raise(py, class_name(&error), error.to_string())
}

/// An error of the binding itself (a thread that could not start, a
/// worker that panicked): the base class, exit code 1.
pub fn internal(py: Python<'_>, message: String) -> PyErr {
    raise(py, "WalSyncError", format!("error: {message}"))
}

/// An instance of `walsync.errors.<class>(message)`, as an error to raise.
fn raise(py: Python<'_>, class: &str, message: String) -> PyErr {
    let made = py
        .import("walsync.errors")
        .and_then(|module| module.getattr(class))
        .and_then(|class| class.call1((message.clone(),)));
    match made {
        Ok(instance) => PyErr::from_value(instance),
        // Only when the package around the module is broken.
        Err(_) => PyRuntimeError::new_err(message),
    }
}
