//! The metrics in Prometheus's text exposition format (version 0.0.4):
//! every family with its `# HELP` and `# TYPE`, per-database families
//! labelled `db`, process families after them. The README's "Monitoring"
//! section lists the same names; keep the two in step.

use super::metrics::{Delivery, Metrics, Op, UPLOAD_BUCKETS_MS};
use crate::error::ErrorClass;
use crate::watch::status::MetricsRow;
use std::io::{self, Write};

/// What the process figures are read from, besides [`Metrics`].
#[derive(Debug, Clone, Copy)]
pub struct Process {
    /// Built batches waiting for an uploader.
    pub queue_depth: usize,
    pub resident_bytes: Option<u64>,
}

/// Writes every metric.
pub fn write(
    out: &mut dyn Write,
    rows: &[MetricsRow],
    metrics: &Metrics,
    process: Process,
) -> io::Result<()> {
    write_databases(out, rows)?;
    write_process(out, rows.len(), metrics, process)
}

/// A per-database gauge or counter: one sample per database.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
}

fn header(out: &mut dyn Write, f: &Family) -> io::Result<()> {
    writeln!(out, "# HELP {} {}", f.name, f.help)?;
    writeln!(out, "# TYPE {} {}", f.name, f.kind)
}

/// A gauge family of one sample: its header, then `name{labels} value`
/// (`labels` empty or written with its braces).
fn gauge(
    out: &mut dyn Write,
    name: &'static str,
    help: &'static str,
    labels: &str,
    value: f64,
) -> io::Result<()> {
    let kind = "gauge";
    header(out, &Family { name, kind, help })?;
    writeln!(out, "{name}{labels} {value}")
}

/// `walsync_uptime_seconds`, of `watch` and `replicate` alike.
fn uptime(out: &mut dyn Write, metrics: &Metrics) -> io::Result<()> {
    let help = "Seconds since the command started.";
    gauge(
        out,
        "walsync_uptime_seconds",
        help,
        "",
        metrics.uptime().as_secs_f64(),
    )
}

fn write_databases(out: &mut dyn Write, rows: &[MetricsRow]) -> io::Result<()> {
    type Value = fn(&MetricsRow) -> Option<f64>;
    let simple: [(Family, Value); 9] = [
        (
            Family { name: "walsync_db_txid", kind: "gauge", help: "The TXID the replica durably holds." },
            |r| Some(r.txid as f64),
        ),
        (
            Family { name: "walsync_db_lag_seconds", kind: "gauge", help: "Age of the oldest commit walsync has seen and not yet stored; 0 when caught up." },
            |r| Some(r.lag_ms as f64 / 1000.0),
        ),
        (
            Family { name: "walsync_db_last_ship_timestamp_seconds", kind: "gauge", help: "Unix time of the last file stored (absent until one is)." },
            |r| r.last_shipped_ms.map(|t| t as f64 / 1000.0),
        ),
        (
            Family { name: "walsync_db_wal_bytes", kind: "gauge", help: "Size of the WAL at the last poll." },
            |r| Some(r.wal_bytes as f64),
        ),
        (
            Family { name: "walsync_db_shipped_bytes_total", kind: "counter", help: "Bytes of LTX files stored since start." },
            |r| Some(r.tally.bytes_shipped as f64),
        ),
        (
            Family { name: "walsync_db_shipped_files_total", kind: "counter", help: "LTX files stored since start." },
            |r| Some(r.tally.files_shipped as f64),
        ),
        (
            Family { name: "walsync_db_snapshots_total", kind: "counter", help: "Level-9 snapshots stored since start." },
            |r| Some(r.tally.snapshots as f64),
        ),
        (
            Family { name: "walsync_db_validation_ok", kind: "gauge", help: "1 when the last periodic validation passed, 0 when it found a problem (absent until one ran)." },
            |r| r.checks.validated.map(|(ok, _)| if ok { 1.0 } else { 0.0 }),
        ),
        (
            Family { name: "walsync_db_validation_timestamp_seconds", kind: "gauge", help: "Unix time of the last periodic validation." },
            |r| r.checks.validated.map(|(_, t)| t as f64 / 1000.0),
        ),
    ];
    for (family, value) in &simple {
        header(out, family)?;
        for r in rows {
            if let Some(v) = value(r) {
                writeln!(out, "{}{{db=\"{}\"}} {v}", family.name, Escaped(&r.name))?;
            }
        }
    }
    header(
        out,
        &Family {
            name: "walsync_db_checkpoints_total",
            kind: "counter",
            help: "walsync's own checkpoints since start, by mode.",
        },
    )?;
    for r in rows {
        for (mode, n) in ["passive", "truncate"].iter().zip(r.tally.checkpoints) {
            writeln!(
                out,
                "walsync_db_checkpoints_total{{db=\"{}\",mode=\"{mode}\"}} {n}",
                Escaped(&r.name)
            )?;
        }
    }
    header(out, &Family { name: "walsync_db_errors_total", kind: "counter", help: "Failures since start (uploads, polls, checkpoints, compaction, validation), by class." })?;
    for r in rows {
        for class in ErrorClass::ALL {
            let n = r.tally.errors[class.index()] + r.checks.errors[class.index()];
            writeln!(
                out,
                "walsync_db_errors_total{{db=\"{}\",class=\"{}\"}} {n}",
                Escaped(&r.name),
                class.label()
            )?;
        }
    }
    Ok(())
}

/// Storage requests by kind and outcome (watch and replicate alike).
fn write_requests(out: &mut dyn Write, metrics: &Metrics) -> io::Result<()> {
    header(
        out,
        &Family {
            name: "walsync_storage_requests_total",
            kind: "counter",
            help: "Storage requests (each with its retries) by kind and outcome.",
        },
    )?;
    for op in Op::ALL {
        for (outcome, ok) in [("ok", true), ("error", false)] {
            let n = metrics.requests(op, ok);
            writeln!(
                out,
                "walsync_storage_requests_total{{op=\"{}\",outcome=\"{outcome}\"}} {n}",
                op.label()
            )?;
        }
    }
    Ok(())
}

fn write_process(
    out: &mut dyn Write,
    databases: usize,
    metrics: &Metrics,
    process: Process,
) -> io::Result<()> {
    write_requests(out, metrics)?;
    header(
        out,
        &Family {
            name: "walsync_upload_duration_seconds",
            kind: "histogram",
            help: "Time to store one file (a PUT with its retries).",
        },
    )?;
    let (counts, sum) = metrics.upload_latency();
    let mut cumulative = 0u64;
    for (bound, n) in UPLOAD_BUCKETS_MS.iter().zip(counts) {
        cumulative += n;
        writeln!(
            out,
            "walsync_upload_duration_seconds_bucket{{le=\"{}\"}} {cumulative}",
            *bound as f64 / 1000.0
        )?;
    }
    cumulative += counts[UPLOAD_BUCKETS_MS.len()];
    writeln!(
        out,
        "walsync_upload_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
    )?;
    writeln!(out, "walsync_upload_duration_seconds_sum {sum}")?;
    writeln!(out, "walsync_upload_duration_seconds_count {cumulative}")?;
    header(
        out,
        &Family {
            name: "walsync_webhook_deliveries_total",
            kind: "counter",
            help: "Webhook deliveries by outcome (dropped: the queue was full).",
        },
    )?;
    for outcome in Delivery::ALL {
        writeln!(
            out,
            "walsync_webhook_deliveries_total{{outcome=\"{}\"}} {}",
            outcome.label(),
            metrics.deliveries(outcome)
        )?;
    }
    let gauges = [
        (
            "walsync_upload_queue_depth",
            "Built files waiting for an uploader.",
            Some(process.queue_depth as f64),
        ),
        (
            "walsync_databases_watched",
            "Databases replicated now.",
            Some(databases as f64),
        ),
        (
            "walsync_resident_memory_bytes",
            "Resident memory of the process.",
            process.resident_bytes.map(|b| b as f64),
        ),
    ];
    for (name, help, value) in gauges {
        if let Some(v) = value {
            gauge(out, name, help, "", v)?;
        }
    }
    uptime(out, metrics)?;
    let version = format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
    let help = "Always 1; the version is a label.";
    gauge(out, "walsync_build_info", help, &version, 1.0)
}

/// The metrics of `walsync replicate` following `db`.
pub fn write_replica(
    out: &mut dyn Write,
    db: &str,
    status: &crate::replica::FollowStatus,
    metrics: &Metrics,
) -> io::Result<()> {
    let (txid, committed_ms, applied_ms) = status.get();
    let families = [
        ("walsync_replica_txid", "The TXID the local database holds.", txid as f64),
        (
            "walsync_replica_lag_seconds",
            "Time from the primary's commit of the newest TXID applied to it being visible locally.",
            (applied_ms - committed_ms).max(0) as f64 / 1000.0,
        ),
        (
            "walsync_replica_applied_timestamp_seconds",
            "Unix time the last batch became visible.",
            applied_ms as f64 / 1000.0,
        ),
        (
            "walsync_replica_committed_timestamp_seconds",
            "Unix time the primary committed the TXID held.",
            committed_ms as f64 / 1000.0,
        ),
    ];
    let labels = format!("{{db=\"{}\"}}", Escaped(db));
    for (name, help, value) in families {
        gauge(out, name, help, &labels, value)?;
    }
    write_requests(out, metrics)?;
    uptime(out, metrics)
}

/// A label value with `\`, `"` and newlines escaped.
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => write!(f, "{c}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(Escaped("a\"b\\c\nd").to_string(), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn every_family_has_help_and_type_and_histogram_buckets_add_up() {
        let m = Metrics::default();
        m.upload_took(std::time::Duration::from_millis(7));
        m.upload_took(std::time::Duration::from_secs(40));
        let row = MetricsRow {
            name: "t1".into(),
            txid: 5,
            last_shipped_ms: None,
            lag_ms: 1500,
            wal_bytes: 0,
            tally: Default::default(),
            checks: Default::default(),
        };
        let mut out = Vec::new();
        let process = Process {
            queue_depth: 2,
            resident_bytes: Some(1 << 20),
        };
        write(&mut out, &[row], &m, process).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("walsync_db_lag_seconds{db=\"t1\"} 1.5\n"),
            "{text}"
        );
        assert!(
            !text.contains("walsync_db_last_ship_timestamp_seconds{"),
            "{text}"
        );
        assert!(
            text.contains("walsync_upload_duration_seconds_bucket{le=\"0.01\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("walsync_upload_duration_seconds_bucket{le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("walsync_upload_queue_depth 2\n"), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(text.contains(&format!("# TYPE {family} ")), "{line}");
        }
    }
}
