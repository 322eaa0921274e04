//! `walsync explain`: what `watch` would do with the same flags and config,
//! without starting it or reading the replica: each database with its
//! name and settings after overrides, the destination, the snapshot,
//! compaction and retention policy, the heartbeat and webhooks (their
//! hosts only, never a secret), the metrics address, the engine's threads,
//! and a monthly estimate of storage, requests and cost at the WAL rate
//! walsync recorded (see [`crate::estimate`]).

use crate::compact::policy::{Retention, SnapshotPolicy};
use crate::error::{Error, Result};
use crate::estimate::{self, Load};
use crate::names::NamedDb;
use crate::watch::{Settings, WatchOptions};
use serde_json::{json, Value};
use std::time::Duration;

/// `2h`, `5m`, `30s`, `250ms`, or `off` for zero.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "off".into(),
        ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

fn settings_json(s: &Settings) -> Value {
    json!({
        "sync_interval": human(s.sync_interval),
        "snapshot_interval": human(s.snapshot_interval),
        "snapshot_max_changes": s.snapshot_max_changes,
        "snapshot_on_idle": human(s.snapshot_on_idle),
        "snapshot_max_interval": human(s.snapshot_max_interval),
        "min_checkpoint_pages": s.min_checkpoint_pages,
        "truncate_checkpoint_pages": s.truncate_checkpoint_pages,
        "validation_interval": human(s.validation_interval),
    })
}

/// The monthly estimate of one database (see [`crate::estimate`]).
fn estimate_of(replica: &str, db: &NamedDb, s: &Settings, options: &WatchOptions) -> DbEstimate {
    let state = crate::watch::peek_local_state(&db.path, replica).filter(|st| st.name == db.name);
    let load = Load {
        db_bytes: std::fs::metadata(&db.path).map_or(0, |m| m.len()),
        page_size: state.as_ref().map_or(4096, |st| st.page_size),
        pages_per_second: state
            .as_ref()
            .and_then(|st| estimate::recorded_rate(st, crate::fsutil::now_ms())),
    };
    let e = estimate::monthly(&load, s, options.retention.as_ref());
    DbEstimate { load, month: e }
}

/// One database's load as known, and its month.
struct DbEstimate {
    load: Load,
    month: estimate::Estimate,
}

fn estimate_json(e: &estimate::Estimate) -> Value {
    let usd: serde_json::Map<String, Value> = estimate::PROVIDERS
        .iter()
        .map(|p| {
            (
                p.name.to_string(),
                json!((e.cost(p) * 100.0).round() / 100.0),
            )
        })
        .collect();
    json!({
        "uploaded_gb": (e.uploaded_bytes / 1e6).round() / 1e3,
        "stored_gb": (e.stored_bytes / 1e6).round() / 1e3,
        "write_requests": e.writes.round() as u64,
        "read_requests": e.reads.round() as u64,
        "usd": usd,
    })
}

fn retention_json(r: Option<&Retention>) -> Value {
    let Some(r) = r else {
        return Value::Null;
    };
    let snapshots = match &r.snapshots {
        SnapshotPolicy::Age(age) => json!({ "by_age": human(*age) }),
        SnapshotPolicy::Gfs {
            hourly,
            daily,
            weekly,
            monthly,
        } => json!({ "hourly": hourly, "daily": daily, "weekly": weekly, "monthly": monthly }),
    };
    json!({
        "pitr_window": human(r.pitr_window),
        "snapshots_kept": snapshots,
        "l0_retention": human(r.l0_retention),
        "compaction_levels": r.levels.iter().map(|d| human(*d)).collect::<Vec<_>>(),
    })
}

/// The plan as one JSON value.
pub fn plan(replica: &str, dbs: &[(NamedDb, Settings)], options: &WatchOptions) -> Value {
    let mut total = estimate::Estimate::default();
    let databases: Vec<Value> = dbs
        .iter()
        .map(|(db, s)| {
            let e = estimate_of(replica, db, s, options);
            total.add(&e.month);
            let mut month = estimate_json(&e.month);
            month["wal_pages_per_second"] = json!(e.load.pages_per_second);
            json!({
                "path": db.path.display().to_string(),
                "name": db.name,
                "settings": settings_json(s),
                "estimate_per_month": month,
            })
        })
        .collect();
    json!({
        "destination": replica,
        "databases": databases,
        "estimate_per_month": estimate_json(&total),
        "metrics_addr": options.metrics_addr.map(|a| a.to_string()),
        "webhooks": options.webhooks.iter().map(|w| json!({
            "host": w.url.host_str().unwrap_or("?"),
            "events": w.events.iter().map(|e| e.name()).collect::<Vec<_>>(),
            "signed": w.secret.is_some(),
        })).collect::<Vec<_>>(),
        "retention": retention_json(options.retention.as_ref()),
        "heartbeat": options.heartbeat.as_ref().map(|h| json!({
            "host": h.url.host_str().unwrap_or("?"),
            "interval": human(h.interval),
        })),
        "engine": {
            "pollers": options.pollers,
            "uploaders": options.uploaders,
            "discover_interval": human(options.discover_interval),
            "shutdown_timeout": human(options.shutdown_timeout),
            "control_socket": options.control_socket.as_ref().map(|p| p.display().to_string()),
        },
    })
}

/// Prints the plan, as text or JSON.
pub fn print(plan: &Value, as_json: bool) -> Result<()> {
    if as_json {
        let text = serde_json::to_string_pretty(plan)
            .map_err(|e| Error::Other(format!("encoding JSON: {e}")))?;
        println!("{text}");
        return Ok(());
    }
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!("destination: {}", s(&plan["destination"]));
    let dbs = plan["databases"].as_array().cloned().unwrap_or_default();
    println!("databases: {}", dbs.len());
    for db in &dbs {
        println!("  {} -> {}", s(&db["path"]), s(&db["name"]));
        let settings: Vec<String> = db["settings"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k} {}", s(v)))
            .collect();
        println!("    {}", settings.join(", "));
    }
    match plan["retention"].as_object() {
        None => println!("retention: none ([retention] is not set): every file is kept"),
        Some(r) => {
            let levels: Vec<String> = r["compaction_levels"]
                .as_array()
                .into_iter()
                .flatten()
                .map(s)
                .collect();
            let kept = &r["snapshots_kept"];
            let kept = match kept["by_age"].as_str() {
                Some(age) => format!("those younger than {age}"),
                None => format!(
                    "the newest of each of the last {} hours, {} days, {} weeks and {} months",
                    kept["hourly"], kept["daily"], kept["weekly"], kept["monthly"]
                ),
            };
            println!(
                "retention: every TXID of the last {} restores; snapshots kept beyond it: {kept} (and the newest two); level 0 kept {}; levels compact every {}",
                s(&r["pitr_window"]),
                s(&r["l0_retention"]),
                levels.join(", ")
            );
        }
    }
    print_monitoring(plan);
    print_estimate(plan);
    match plan["heartbeat"].as_object() {
        None => println!("heartbeat: off"),
        Some(h) => println!(
            "heartbeat: every {} to {} while caught up",
            s(&h["interval"]),
            s(&h["host"])
        ),
    }
    let e = &plan["engine"];
    println!(
        "engine: {} poller(s), {} uploader(s), discovery every {}, stop waits {}, control socket {}",
        e["pollers"],
        e["uploaders"],
        s(&e["discover_interval"]),
        s(&e["shutdown_timeout"]),
        s(&e["control_socket"])
    );
    Ok(())
}

fn print_monitoring(plan: &Value) {
    match plan["metrics_addr"].as_str() {
        None => println!("metrics: off (--metrics-addr or [monitoring] metrics_addr)"),
        Some(addr) => println!("metrics: http://{addr}/metrics"),
    }
    let hooks = plan["webhooks"].as_array().cloned().unwrap_or_default();
    if hooks.is_empty() {
        println!("webhooks: none");
    }
    for hook in hooks {
        let events: Vec<&str> = hook["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        println!(
            "webhook: POST to {} ({}) on {}",
            hook["host"].as_str().unwrap_or("?"),
            if hook["signed"] == true {
                "signed"
            } else {
                "unsigned"
            },
            events.join(", ")
        );
    }
}

fn print_estimate(plan: &Value) {
    let e = &plan["estimate_per_month"];
    let usd: Vec<String> = e["usd"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, v)| format!("{name} ${}", v))
        .collect();
    let unknown = plan["databases"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["estimate_per_month"]["wal_pages_per_second"].is_null())
        .count();
    println!(
        "estimate per month: uploads {} GB, stores {} GB, {} write and {} read requests; {} (list prices; egress not counted)",
        e["uploaded_gb"], e["stored_gb"], e["write_requests"], e["read_requests"], usd.join(", ")
    );
    if unknown > 0 {
        println!(
            "  {unknown} database(s) have no recorded WAL rate yet (walsync records it while it watches them): counted as idle"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::human;
    use std::time::Duration;

    #[test]
    fn durations_read_as_written() {
        assert_eq!(human(Duration::ZERO), "off");
        assert_eq!(human(Duration::from_secs(3600)), "1h");
        assert_eq!(human(Duration::from_secs(7 * 86400)), "7d");
        assert_eq!(human(Duration::from_secs(300)), "5m");
        assert_eq!(human(Duration::from_secs(90)), "90s");
        assert_eq!(human(Duration::from_millis(250)), "250ms");
    }
}
