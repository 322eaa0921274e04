//! Webhooks (`[[webhooks]] url, events, secret`): the events an operator
//! wants pushed to a chat or a pager, POSTed as JSON.
//!
//! [`Alerting`] is an [`EventSink`] in front of the caller's: it passes
//! every event on, and turns the few that call for an alert into a
//! [`Notice`] queued for one delivery thread. Invariants:
//! - Replication never waits for a webhook: the queue is bounded and a
//!   notice that does not fit is dropped and counted
//!   (`walsync_webhook_deliveries_total{outcome="dropped"}`).
//! - Notices are delivered in the order they were queued, each to every
//!   webhook that asked for its event, with [`ATTEMPTS`] tries.
//! - `sync_failed` is sent once per outage of a database (when its first
//!   summary line is), and `recovered` only for a database that had one.
//! - `auth_failure` and `corruption_detected` of one database are sent at
//!   most once per [`REPEAT_AFTER`]: a failing poll retried every few
//!   seconds raises one alert, not one per retry.
//! - With a secret, `X-Walsync-Signature: sha256=<hex>` is the HMAC-SHA256
//!   of the exact body under the secret. Neither secret nor URL is logged.

use super::metrics::{Delivery, Metrics};
use super::outbound;
use crate::cancel::CancelToken;
use crate::config::Secret;
use crate::error::ErrorClass;
use crate::event::{Event, EventSink};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An event a webhook can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alert {
    /// A database's uploads kept failing past the first summary interval.
    SyncFailed,
    /// Storage refused the credentials.
    AuthFailure,
    /// Stored or local bytes are not what they should be.
    CorruptionDetected,
    /// A periodic validation found a problem.
    ValidationFailed,
    /// A database with a `sync_failed` is caught up.
    Recovered,
    /// A database appeared while `watch` runs.
    DatabaseDiscovered,
    /// A database is no longer replicated.
    DatabaseRemoved,
    /// Storage failed for every database: the circuit opened.
    CircuitBreakerOpen,
}

impl Alert {
    pub const ALL: [Alert; 8] = [
        Alert::SyncFailed,
        Alert::AuthFailure,
        Alert::CorruptionDetected,
        Alert::ValidationFailed,
        Alert::Recovered,
        Alert::DatabaseDiscovered,
        Alert::DatabaseRemoved,
        Alert::CircuitBreakerOpen,
    ];

    /// Its name in the config and in the payload's `event`.
    pub fn name(self) -> &'static str {
        match self {
            Alert::SyncFailed => "sync_failed",
            Alert::AuthFailure => "auth_failure",
            Alert::CorruptionDetected => "corruption_detected",
            Alert::ValidationFailed => "validation_failed",
            Alert::Recovered => "recovered",
            Alert::DatabaseDiscovered => "database_discovered",
            Alert::DatabaseRemoved => "database_removed",
            Alert::CircuitBreakerOpen => "circuit_breaker_open",
        }
    }

    pub fn parse(name: &str) -> Option<Alert> {
        Alert::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// One webhook, as configured.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: url::Url,
    pub events: Vec<Alert>,
    pub secret: Option<Secret>,
}

/// An alert to deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub alert: Alert,
    pub database: Option<String>,
    pub error: Option<String>,
    pub attempts: Option<u32>,
    pub timestamp_ms: i64,
}

impl Notice {
    /// The JSON body: event, database, error, attempts, timestamp, version.
    pub fn body(&self) -> String {
        let timestamp = jiff::Timestamp::from_millisecond(self.timestamp_ms)
            .map_or_else(|_| self.timestamp_ms.to_string(), |t| format!("{t:.3}"));
        serde_json::json!({
            "event": self.alert.name(),
            "database": self.database,
            "error": self.error,
            "attempts": self.attempts,
            "timestamp": timestamp,
            "version": env!("CARGO_PKG_VERSION"),
        })
        .to_string()
    }
}

/// The `X-Walsync-Signature` value of `body` under `secret`.
pub fn signature(secret: &Secret, body: &str) -> String {
    use hmac::{KeyInit, Mac};
    // HMAC takes a key of any length; this cannot fail.
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.0.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(body.as_bytes());
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// How many notices wait for delivery at most.
pub const QUEUE: usize = 256;
/// Tries of one delivery, and the waits between them.
pub const ATTEMPTS: usize = 3;
const RETRY_AFTER: [Duration; ATTEMPTS - 1] = [Duration::from_secs(1), Duration::from_secs(4)];

/// The least time between two alerts of one kind about one database
/// (`auth_failure`, `corruption_detected`).
pub const REPEAT_AFTER: Duration = Duration::from_secs(600);

/// The event sink that raises alerts: see the module doc.
pub struct Alerting {
    inner: Arc<dyn EventSink>,
    queue: Sender<Notice>,
    /// The databases a `sync_failed` was queued for and no `recovered` yet.
    failing: Mutex<HashSet<String>>,
    /// When each (database, alert) that repeats was last raised.
    raised: Mutex<HashMap<(String, &'static str), Instant>>,
    metrics: Arc<Metrics>,
}

impl Alerting {
    /// Starts the delivery thread. It delivers until `finish` is cancelled
    /// and then what is queued, one try each.
    pub fn start(
        hooks: Vec<Webhook>,
        inner: Arc<dyn EventSink>,
        metrics: Arc<Metrics>,
        finish: CancelToken,
    ) -> (Arc<Alerting>, std::thread::JoinHandle<()>) {
        let (tx, rx) = bounded(QUEUE);
        let sink = Arc::new(Alerting {
            inner: Arc::clone(&inner),
            queue: tx,
            failing: Mutex::new(HashSet::new()),
            raised: Mutex::new(HashMap::new()),
            metrics: Arc::clone(&metrics),
        });
        let thread = std::thread::spawn(move || deliver(&rx, &hooks, &metrics, &finish, &inner));
        (sink, thread)
    }

    /// The alert `event` calls for, if any.
    fn notice(&self, event: &Event) -> Option<Notice> {
        let (alert, error, attempts) = match event {
            Event::UploadFailed {
                db, error, class, ..
            }
            | Event::PollFailed {
                db, error, class, ..
            } => {
                let alert = class_alert(*class)?;
                if !self.first_in_a_while(db, alert) {
                    return None;
                }
                (alert, Some(error.clone()), None)
            }
            Event::StillFailing {
                db,
                error,
                class,
                failures,
                ..
            } => {
                let first = self.failing().insert(db.clone());
                let alert = class_alert(*class).unwrap_or(Alert::SyncFailed);
                if !first || alert != Alert::SyncFailed {
                    return None;
                }
                (alert, Some(error.clone()), Some(*failures))
            }
            Event::Recovered { db, failures, .. } => {
                if !self.failing().remove(db) {
                    return None;
                }
                (Alert::Recovered, None, Some(*failures))
            }
            Event::SnapshotRebased { db } => {
                if !self.first_in_a_while(db, Alert::CorruptionDetected) {
                    return None;
                }
                let error = Some(event.message().to_string());
                (Alert::CorruptionDetected, error, None)
            }
            Event::ValidationFailed { problems, .. } => {
                (Alert::ValidationFailed, Some(problems.clone()), None)
            }
            Event::Discovered { .. } => (Alert::DatabaseDiscovered, None, None),
            Event::Released { reason, .. } => (Alert::DatabaseRemoved, Some(reason.clone()), None),
            Event::StorageDown { failures } => (Alert::CircuitBreakerOpen, None, Some(*failures)),
            _ => return None,
        };
        Some(Notice {
            alert,
            database: event.database().map(str::to_string),
            error,
            attempts,
            timestamp_ms: crate::fsutil::now_ms(),
        })
    }

    /// Whether `alert` about `db` was not raised in the last
    /// [`REPEAT_AFTER`]; records it as raised now.
    fn first_in_a_while(&self, db: &str, alert: Alert) -> bool {
        let now = Instant::now();
        let mut raised = self.raised.lock().unwrap_or_else(|e| e.into_inner());
        raised.retain(|_, at| now.duration_since(*at) < REPEAT_AFTER);
        let key = (db.to_string(), alert.name());
        if raised.contains_key(&key) {
            return false;
        }
        raised.insert(key, now);
        true
    }

    fn failing(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.failing.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The alert an error of `class` raises at once, whatever the outage.
fn class_alert(class: ErrorClass) -> Option<Alert> {
    match class {
        ErrorClass::Credentials => Some(Alert::AuthFailure),
        ErrorClass::Integrity => Some(Alert::CorruptionDetected),
        _ => None,
    }
}

impl EventSink for Alerting {
    fn emit(&self, event: Event) {
        if let Some(notice) = self.notice(&event) {
            if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
                self.queue.try_send(notice)
            {
                self.metrics.delivered(Delivery::Dropped);
            }
        }
        self.inner.emit(event);
    }
}

/// The delivery thread: every notice to every webhook that wants it.
fn deliver(
    queue: &Receiver<Notice>,
    hooks: &[Webhook],
    metrics: &Metrics,
    finish: &CancelToken,
    events: &Arc<dyn EventSink>,
) {
    let agent = outbound::agent();
    loop {
        let notice = match queue.recv_timeout(Duration::from_millis(100)) {
            Ok(notice) => notice,
            Err(RecvTimeoutError::Timeout) if !finish.is_cancelled() => continue,
            Err(_) => return,
        };
        let body = notice.body();
        for hook in hooks.iter().filter(|h| h.events.contains(&notice.alert)) {
            let outcome = post(&agent, hook, &notice, &body, finish);
            metrics.delivered(if outcome.is_ok() {
                Delivery::Sent
            } else {
                Delivery::Failed
            });
            if let Err(error) = outcome {
                events.emit(Event::WebhookFailed {
                    host: outbound::host(&hook.url),
                    event: notice.alert.name(),
                    error,
                });
            }
        }
    }
}

/// POSTs `body` to `hook`, tried up to [`ATTEMPTS`] times (once when
/// `finish` is cancelled: walsync is stopping).
fn post(
    agent: &ureq::Agent,
    hook: &Webhook,
    notice: &Notice,
    body: &str,
    finish: &CancelToken,
) -> Result<(), String> {
    let mut headers = vec![("X-Walsync-Event", notice.alert.name().to_string())];
    if let Some(secret) = &hook.secret {
        headers.push(("X-Walsync-Signature", signature(secret, body)));
    }
    let mut attempt = 0;
    loop {
        let result = outbound::send(agent, &hook.url, Some((body, &headers)));
        if result.is_ok() || attempt == RETRY_AFTER.len() || finish.is_cancelled() {
            return result;
        }
        let until = Instant::now() + RETRY_AFTER[attempt];
        while Instant::now() < until && !finish.is_cancelled() {
            std::thread::sleep(Duration::from_millis(50));
        }
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        let secret = Secret("Jefe".into());
        assert_eq!(
            signature(&secret, "what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn sync_failed_once_per_outage_and_recovered_only_after_it() {
        let (inner, _) = (Arc::new(|_: Event| {}) as Arc<dyn EventSink>, ());
        let (tx, rx) = bounded(QUEUE);
        let sink = Alerting {
            inner,
            queue: tx,
            failing: Mutex::new(HashSet::new()),
            raised: Mutex::new(HashMap::new()),
            metrics: Arc::new(Metrics::default()),
        };
        let failing = |failures| Event::StillFailing {
            db: "a".into(),
            error: "storage error: down".into(),
            class: ErrorClass::Storage,
            failures,
            lasted: Duration::from_secs(30),
            oldest_unstored: None,
        };
        let recovered = Event::Recovered {
            db: "a".into(),
            after: Duration::from_secs(40),
            failures: 9,
            shipped: 2,
        };
        sink.emit(recovered.clone());
        sink.emit(failing(5));
        sink.emit(failing(9));
        sink.emit(recovered.clone());
        sink.emit(recovered);
        let alerts: Vec<_> = rx.try_iter().map(|n| (n.alert, n.attempts)).collect();
        assert_eq!(
            alerts,
            [(Alert::SyncFailed, Some(5)), (Alert::Recovered, Some(9))]
        );
        // A poll failing on damage every few seconds: one alert.
        let damaged = |db: &str| Event::PollFailed {
            db: db.into(),
            error: "integrity error: bad WAL".into(),
            class: ErrorClass::Integrity,
            retry_in: Duration::from_secs(5),
        };
        sink.emit(damaged("a"));
        sink.emit(damaged("a"));
        sink.emit(damaged("b"));
        let alerts: Vec<_> = rx
            .try_iter()
            .map(|n| (n.alert, n.database.unwrap_or_default()))
            .collect();
        assert_eq!(
            alerts,
            [
                (Alert::CorruptionDetected, "a".to_string()),
                (Alert::CorruptionDetected, "b".to_string())
            ]
        );
    }
}
