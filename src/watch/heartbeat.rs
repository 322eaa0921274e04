//! The dead-man's-switch heartbeat (`[monitoring] heartbeat_url`): a GET
//! every `heartbeat_interval`, sent only while every database is caught up
//! to within that interval (no commit has waited longer to be stored, no
//! error has lasted longer). A service that expects the GET (healthchecks,
//! Cronitor, Better Uptime…) then alerts when walsync stops, hangs, or
//! falls behind, which no log line can say.
//!
//! The URL often holds a token: it is never logged; messages name its
//! host only.

use super::status::Board;
use crate::cancel::CancelToken;
use crate::event::{Event, EventSink};
use crate::monitor::outbound;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatSettings {
    pub url: url::Url,
    pub interval: Duration,
}

/// Sends heartbeats until `stop` is cancelled.
pub(super) fn run(
    settings: &HeartbeatSettings,
    board: &Board,
    stop: &CancelToken,
    events: &Arc<dyn EventSink>,
) {
    let agent = outbound::agent();
    let host = outbound::host(&settings.url);
    let mut held = false;
    let mut next = Instant::now() + settings.interval;
    while !stop.is_cancelled() {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(100).min(next - Instant::now()));
            continue;
        }
        next += settings.interval;
        match behind(board, settings.interval) {
            Some(why) => {
                if !held {
                    events.emit(Event::HeartbeatHeld { why });
                }
                held = true;
            }
            None => {
                held = false;
                if let Err(error) = outbound::send(&agent, &settings.url, None) {
                    events.emit(Event::HeartbeatFailed {
                        host: host.clone(),
                        error,
                    });
                }
            }
        }
    }
}

/// Why the heartbeat is held back: the first database behind by more
/// than `interval`, if one is.
fn behind(board: &Board, interval: Duration) -> Option<String> {
    let now = crate::fsutil::now_ms();
    let limit = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
    board.all(now).into_iter().find_map(|db| {
        if db.lag_ms > limit {
            return Some(format!(
                "{}: a commit has waited {:.0}s to be stored",
                db.name,
                db.lag_ms as f64 / 1000.0
            ));
        }
        let since = db
            .error_since
            .as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())?;
        let lasted = now.saturating_sub(since.as_millisecond());
        (u64::try_from(lasted).unwrap_or(0) > limit).then(|| {
            format!(
                "{}: failing for {:.0}s: {}",
                db.name,
                lasted as f64 / 1000.0,
                db.last_error.as_deref().unwrap_or("?")
            )
        })
    })
}
