//! How a running `watch` shows its state to machines: Prometheus metrics
//! (the process counters in [`metrics`], kept by the [`metered`] storage,
//! written out by [`exposition`] and served by [`endpoint`]) and webhooks
//! ([`webhook`]). People read the log (see [`crate::event`]); the
//! dead-man's-switch heartbeat lives with the engine
//! ([`crate::watch::heartbeat`]), and both it and the webhooks send through
//! [`outbound`].

pub mod endpoint;
pub mod exposition;
pub mod metered;
pub mod metrics;
pub mod outbound;
pub mod webhook;

pub use metrics::Metrics;
