//! What the `walsync` binary prints: events as log lines on standard error
//! (a restore's progress as one updating line on a terminal), and the
//! reports of `list` and `verify` on standard output.

use crate::apply::Fault;
use crate::error::{Error, Result};
use crate::event::{Event, EventSink, Level};
use crate::list::{self, DbSummary};
use crate::verify::{self, Counts, Kind, Report};
use crate::{cancel::CancelToken, plan::txid_hex, storage::Storage};
use std::io::{self, IsTerminal, Write};
use std::sync::Mutex;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `2026-12-02T13:17:00.123Z INFO walsync: app: message`
    #[default]
    Text,
    /// One JSON object a line: `time`, `level`, `event`, `db`, `msg`.
    Json,
}

/// The binary's event sink: one line per event on standard error, with
/// its time (RFC 3339, UTC), level and database, from `min_level` up;
/// restore progress as an updating line on a terminal (nothing otherwise).
pub struct StderrLog {
    min_level: Level,
    format: LogFormat,
    tty: bool,
    /// Whether a progress line is on screen (and must be cleared first).
    progress_shown: Mutex<bool>,
}

impl StderrLog {
    pub fn new(min_level: Level, format: LogFormat) -> StderrLog {
        StderrLog {
            min_level,
            format,
            tty: io::stderr().is_terminal(),
            progress_shown: Mutex::new(false),
        }
    }
}

impl EventSink for StderrLog {
    fn emit(&self, event: Event) {
        let mut shown = self
            .progress_shown
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut err = io::stderr().lock();
        if let Event::RestoreProgress {
            db,
            files_done,
            files_total,
            bytes,
        } = &event
        {
            if self.tty {
                let _ = write!(
                    err,
                    "\rrestoring {db}: {files_done}/{files_total} files, {:.1} MB\x1b[K",
                    *bytes as f64 / 1e6
                );
                *shown = true;
            }
            return;
        }
        if *shown {
            let _ = write!(err, "\r\x1b[K");
            *shown = false;
        }
        if event.level() >= self.min_level {
            let _ = writeln!(
                err,
                "{}",
                log_line(&event, self.format, crate::fsutil::now_ms())
            );
        }
    }
}

/// One log line of `event` at `now_ms`, without its newline.
pub fn log_line(event: &Event, format: LogFormat, now_ms: i64) -> String {
    let time = jiff::Timestamp::from_millisecond(now_ms)
        .map_or_else(|_| now_ms.to_string(), |t| format!("{t:.3}"));
    let level = event.level().name();
    match format {
        LogFormat::Text => format!("{time} {level} walsync: {event}"),
        LogFormat::Json => serde_json::json!({
            "time": time,
            "level": level.to_ascii_lowercase(),
            "event": event.kind(),
            "db": event.database(),
            "msg": event.message().to_string(),
        })
        .to_string(),
    }
}

/// `walsync status`: a table, or JSON for scripts.
pub fn status(dbs: &[crate::watch::DbStatus], json: bool) -> Result<()> {
    if json {
        let text = serde_json::to_string_pretty(dbs)
            .map_err(|e| Error::Other(format!("encoding JSON: {e}")))?;
        println!("{text}");
        return Ok(());
    }
    let header = ["NAME", "TXID", "LAST SHIPPED", "LAG", "WAL", "LAST ERROR"];
    let rows: Vec<Vec<String>> = dbs
        .iter()
        .map(|d| {
            vec![
                d.name.clone(),
                txid_hex(d.txid),
                d.last_shipped.clone().unwrap_or_else(|| "-".into()),
                format!("{:.1}s", d.lag_ms as f64 / 1000.0),
                human_bytes(d.wal_bytes),
                match (&d.last_error, &d.error_since) {
                    (Some(e), Some(since)) => format!("{e} (since {since})"),
                    _ => "-".into(),
                },
            ]
        })
        .collect();
    print!("{}", aligned(&header, &rows));
    Ok(())
}

/// Columns padded to their widest cell.
fn aligned(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(&format!("{c:<w$}"));
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// `walsync list`: a table, or JSON for scripts.
pub fn list(storage: &dyn Storage, json: bool) -> Result<()> {
    let rows = list::summaries(storage)?;
    if json {
        let text = serde_json::to_string_pretty(&rows)
            .map_err(|e| Error::Other(format!("encoding JSON: {e}")))?;
        println!("{text}");
        return Ok(());
    }
    if rows.is_empty() {
        println!("no databases in {}", storage.describe());
        return Ok(());
    }
    print!("{}", table(&rows));
    Ok(())
}

/// The human table, columns aligned.
fn table(rows: &[DbSummary]) -> String {
    let header = [
        "NAME",
        "TXID",
        "LAST CHANGE",
        "SNAPSHOTS",
        "FILES",
        "SIZE",
        "BY LEVEL",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                if r.name.is_empty() {
                    "\"\"".to_string()
                } else {
                    r.name.clone()
                },
                r.txid_hex.clone(),
                r.last_change
                    .as_deref()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .map_or_else(|| "-".to_string(), |t| format!("{t:.0}")),
                r.snapshots.to_string(),
                r.files.to_string(),
                human_bytes(r.bytes),
                levels_cell(&r.levels),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cols: &[&str]| -> String {
        let mut s = String::new();
        for (i, (c, w)) in cols.iter().zip(widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            // Text left-aligned, numbers right-aligned.
            if (3..=5).contains(&i) {
                s.push_str(&format!("{c:>w$}"));
            } else {
                s.push_str(&format!("{c:<w$}"));
            }
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(&header);
    for row in &cells {
        let cols: Vec<&str> = row.iter().map(String::as_str).collect();
        out.push_str(&line(&cols));
    }
    out
}

/// `L0 31/42.1 KB, L1 4/9.8 KB, …`: files and bytes per level.
fn levels_cell(levels: &[list::LevelSummary]) -> String {
    levels
        .iter()
        .map(|l| format!("L{} {}/{}", l.level, l.files, human_bytes(l.bytes)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints `walsync list NAME`.
pub fn list_one(storage: &dyn Storage, name: &str, json: bool) -> Result<()> {
    let d = list::detail(storage, name)?;
    if json {
        let text = serde_json::to_string_pretty(&d)
            .map_err(|e| Error::Other(format!("encoding JSON: {e}")))?;
        println!("{text}");
        return Ok(());
    }
    let at = |p: &list::Point| match p
        .time
        .as_deref()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    {
        Some(t) => format!("{} ({t:.3})", p.txid_hex),
        None => p.txid_hex.clone(),
    };
    println!("{}", if d.name.is_empty() { "\"\"" } else { &d.name });
    println!(
        "  every TXID restores from {} to {}",
        at(&d.oldest),
        at(&d.newest)
    );
    if d.snapshots_before.is_empty() {
        println!("  no snapshot before that");
    } else {
        println!("  snapshots before that:");
        for p in &d.snapshots_before {
            println!("    {}", at(p));
        }
    }
    if d.other_points_before > 0 {
        println!(
            "  and {} other TXID(s) before it that restore (compacted boundaries)",
            d.other_points_before
        );
    }
    println!("  {} files, {}", d.files, human_bytes(d.bytes));
    for l in &d.levels {
        println!(
            "    level {}: {} files, {}",
            l.level,
            l.files,
            human_bytes(l.bytes)
        );
    }
    Ok(())
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Verifies `names` in `storage`; prints the results (human lines or JSON
/// Lines) and returns the error whose exit code sums them up.
pub fn verify(
    storage: &dyn Storage,
    names: &[String],
    parallelism: usize,
    json: bool,
    cancel: &CancelToken,
) -> Result<()> {
    if names.is_empty() {
        let url = storage.describe();
        return Err(Error::Restore(format!(
            "no databases in {url}: nothing to verify; check the URL (and prefix) with `walsync list -b {url}`"
        )));
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let mut counts = Counts::default();
    verify::verify_each(storage, names, parallelism, cancel, |report| {
        counts.add(report);
        let written = if json {
            serde_json::to_string(report)
                .map_err(|e| io::Error::other(e.to_string()))
                .and_then(|line| writeln!(out, "{line}"))
        } else {
            write_verify_line(&mut out, report)
        };
        written.map_err(|e| Error::Other(format!("writing the verify report: {e}")))
    })?;
    if !json {
        let _ = writeln!(
            out,
            "verified {} database(s) in {}: {} ok, {} damaged, {} not restorable",
            counts.total,
            storage.describe(),
            counts.ok,
            counts.integrity,
            counts.unrestorable
        );
    }
    let _ = out.flush();
    counts.verdict(storage)
}

fn write_verify_line(out: &mut impl Write, r: &Report) -> io::Result<()> {
    for p in &r.problems {
        writeln!(
            out,
            "{}: {} {}: {}",
            r.name,
            kind_label(p.kind),
            p.key,
            p.message
        )?;
    }
    if r.ok {
        writeln!(
            out,
            "{}: ok: {} file(s) checked from snapshot {} to TXID {}",
            r.name,
            r.files_checked,
            r.snapshot.as_deref().unwrap_or("?"),
            txid_hex(r.latest_txid)
        )
    } else {
        writeln!(
            out,
            "{}: FAILED: {} problem(s), {} file(s) checked, latest TXID {}",
            r.name,
            r.problems.len(),
            r.files_checked,
            txid_hex(r.latest_txid)
        )
    }
}

fn kind_label(k: Kind) -> String {
    match k {
        Kind::Object(Fault::Sha256Mismatch) => "SHA-256 MISMATCH".to_string(),
        _ => k.name().replace('_', " ").to_uppercase(),
    }
}

/// Prints what a compaction and retention pass did (or would do).
pub fn compaction(r: &crate::compact::PassReport, mode: crate::compact::Mode) {
    let (write, delete) = match mode {
        crate::compact::Mode::Apply => ("wrote", "deleted"),
        crate::compact::Mode::DryRun => ("would write", "would delete"),
    };
    for c in &r.compacted {
        println!(
            "{}: {write} level {} TXIDs {}..{} from {} file(s) ({})",
            r.name,
            c.id.level,
            crate::plan::txid_hex(c.id.min_txid),
            crate::plan::txid_hex(c.id.max_txid),
            c.inputs,
            human_bytes(c.input_bytes)
        );
    }
    let deleted_bytes: u64 = r.deleted.iter().map(|(_, n)| n).sum();
    println!(
        "{}: {write} {} file(s), {delete} {} file(s) ({}); {} file(s) ({}) remain; every TXID from {} on restores; {} older snapshot(s) kept{}",
        r.name,
        r.compacted.len(),
        r.deleted.len(),
        human_bytes(deleted_bytes),
        r.files_after,
        human_bytes(r.bytes_after),
        r.window_starts_at.map_or("-".to_string(), crate::plan::txid_hex),
        r.snapshots_kept.len(),
        if mode == crate::compact::Mode::DryRun {
            " (dry run: add --force to do it)"
        } else {
            ""
        }
    );
}

/// The passes of `compact --json`, one JSON object per database.
pub fn compactions_json(reports: &[crate::compact::PassReport], mode: crate::compact::Mode) {
    for r in reports {
        println!("{}", r.to_json(mode));
    }
}

/// Prints what `delete` removed (or would remove).
pub fn deletion(name: &str, objects: &[(String, u64)], mode: crate::compact::Mode, json: bool) {
    let bytes: u64 = objects.iter().map(|(_, n)| n).sum();
    let dry = mode == crate::compact::Mode::DryRun;
    if json {
        let line = serde_json::json!({
            "name": name,
            "dry_run": dry,
            "objects": objects.len(),
            "bytes": bytes,
            "keys": objects.iter().map(|(k, _)| k).collect::<Vec<_>>(),
        });
        println!("{line}");
        return;
    }
    let verb = if dry { "would delete" } else { "deleted" };
    println!(
        "{name}: {verb} {} object(s) ({}){}",
        objects.len(),
        human_bytes(bytes),
        if dry {
            " (dry run: add --force to do it)"
        } else {
            ""
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::list::DbSummary;

    #[test]
    fn log_lines_carry_time_level_and_database() {
        let e = Event::CheckpointFailed {
            db: "acme/app".into(),
            error: "busy".into(),
        };
        let ms = 1_764_680_220_123;
        assert_eq!(
            log_line(&e, LogFormat::Text, ms),
            "2025-12-02T12:57:00.123Z WARN walsync: acme/app: checkpoint: busy"
        );
        let v: serde_json::Value =
            serde_json::from_str(&log_line(&e, LogFormat::Json, ms)).unwrap();
        assert_eq!(v["time"], "2025-12-02T12:57:00.123Z");
        assert_eq!(v["level"], "warn");
        assert_eq!(v["event"], "checkpoint_failed");
        assert_eq!(v["db"], "acme/app");
        assert_eq!(v["msg"], "checkpoint: busy");
    }

    #[test]
    fn table_aligns() {
        let rows = vec![
            DbSummary {
                name: "app".into(),
                txid: 255,
                txid_hex: txid_hex(255),
                last_change: Some("2026-01-02T03:04:05.123000000Z".into()),
                snapshots: 2,
                files: 10,
                bytes: 123_456,
                levels: vec![list::LevelSummary {
                    level: 0,
                    files: 10,
                    bytes: 123_456,
                }],
            },
            DbSummary {
                name: "smiths/app".into(),
                txid: 3,
                txid_hex: txid_hex(3),
                last_change: None,
                snapshots: 1,
                files: 3,
                bytes: 999,
                levels: Vec::new(),
            },
        ];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].starts_with("app         0x00000000000000ff  2026-01-02T03:04:05Z"));
        assert!(lines[1].ends_with("123.5 KB  L0 10/123.5 KB"), "{t}");
        assert!(lines[2].ends_with("999 B"), "{t}");
    }
}
