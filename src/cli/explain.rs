//! `walsync explain`: what `watch` would do with the same flags and config,
//! without starting it or reading the replica: each database with its
//! name and settings after overrides, the destination, the snapshot,
//! compaction and retention policy, the heartbeat (its host only), and the
//! engine's threads.

use crate::compact::policy::{Retention, SnapshotPolicy};
use crate::error::{Error, Result};
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
    json!({
        "destination": replica,
        "databases": dbs.iter().map(|(db, s)| json!({
            "path": db.path.display().to_string(),
            "name": db.name,
            "settings": settings_json(s),
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
