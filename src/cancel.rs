//! A cancel token: how a caller (the CLI on a signal, or an embedding
//! application) asks long work in the library to stop.
//!
//! The library never installs signal handlers itself; it polls the token at
//! the points where stopping is safe and answers with [`crate::Error::Cancelled`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A shared flag; cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    /// Asks every holder of the token to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// `Err(Cancelled)` once cancelled.
    pub fn check(&self) -> crate::error::Result<()> {
        if self.is_cancelled() {
            Err(crate::error::Error::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// A request that can be made again: set by one side, taken (and cleared)
/// by the other. `watch` takes its reload trigger to read the config again.
#[derive(Debug, Clone, Default)]
pub struct Trigger(Arc<AtomicBool>);

impl Trigger {
    pub fn new() -> Trigger {
        Trigger::default()
    }

    /// Makes the request.
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether the request was made since the last take; clears it.
    pub fn take(&self) -> bool {
        self.0.swap(false, Ordering::SeqCst)
    }
}
