//! Periodic validation (`validation_interval`, off by default, per
//! database): in the background, `watch` runs the checks of `walsync
//! verify` on a replica every interval and says what it found in the log,
//! the metrics (`walsync_db_validation_ok`) and the `validation_failed`
//! webhook.
//!
//! It never delays shipping: one thread validates one database at a time,
//! reading storage only (no lock a poller takes but the board's, briefly),
//! and rests at least as long as the last validation took (and at least
//! [`LEAST_REST`]) before the next, so it uses at most half of one core and
//! its requests come in a trickle.
//! A validation that could not finish (storage failing, or a file deleted
//! by compaction while it was read) is not a verdict: it is said as such
//! and tried again at the next interval.

use super::status::Board;
use crate::cancel::CancelToken;
use crate::event::{Event, EventSink};
use crate::storage::Storage;
use crate::verify::{Counts, Report};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the board is looked at when no database is due.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// The least rest between two validations: at most ten a second.
const LEAST_REST: Duration = Duration::from_millis(100);

/// Validates the databases due until `stop` is cancelled.
pub(super) fn run(
    storage: &dyn Storage,
    board: &Board,
    stop: &CancelToken,
    events: &Arc<dyn EventSink>,
) {
    let since_ms = crate::fsutil::now_ms();
    let mut rest = LOOK_EVERY;
    while !stop.is_cancelled() {
        let until = Instant::now() + rest;
        while Instant::now() < until && !stop.is_cancelled() {
            std::thread::sleep(Duration::from_millis(100));
        }
        rest = LOOK_EVERY;
        let Some(db) = board.take_due_validation(crate::fsutil::now_ms(), since_ms) else {
            continue;
        };
        let started = Instant::now();
        validate(storage, board, &db, stop, events.as_ref());
        rest = LEAST_REST.max(started.elapsed());
    }
}

/// Validates one database and reports the verdict.
fn validate(
    storage: &dyn Storage,
    board: &Board,
    db: &str,
    stop: &CancelToken,
    events: &dyn EventSink,
) {
    let mut found: Option<Report> = None;
    let names = [db.to_string()];
    let run = crate::verify::verify_each(storage, &names, 1, stop, |report| {
        found = Some(report.clone());
        Ok(())
    });
    let now_ms = crate::fsutil::now_ms();
    let db = db.to_string();
    let report = match (run, found) {
        (Ok(()), Some(report)) => report,
        (Err(crate::Error::Cancelled), _) => return,
        (Err(e), _) => {
            board.background_failed(&db, e.error_class());
            let error = e.to_string();
            return events.emit(Event::ValidationIncomplete { db, error });
        }
        (Ok(()), None) => return,
    };
    let mut counts = Counts::default();
    counts.add(&report);
    if counts.ok == 1 {
        board.validated(&db, true, now_ms);
        events.emit(Event::Validated {
            db,
            txid: report.latest_txid,
            files: report.files_checked,
        });
    } else if counts.integrity + counts.unrestorable > 0 {
        board.validated(&db, false, now_ms);
        events.emit(Event::ValidationFailed {
            db,
            problems: summary(&report),
        });
    } else {
        board.background_failed(&db, crate::error::ErrorClass::Storage);
        events.emit(Event::ValidationIncomplete {
            db,
            error: summary(&report),
        });
    }
}

/// The first problems of a report, on one line.
fn summary(report: &Report) -> String {
    const SHOWN: usize = 3;
    let mut text: Vec<String> = report
        .problems
        .iter()
        .take(SHOWN)
        .map(|p| format!("{} ({}): {}", p.key, p.kind.name(), p.message))
        .collect();
    if report.problems.len() > SHOWN {
        text.push(format!("and {} more", report.problems.len() - SHOWN));
    }
    text.join("; ")
}
