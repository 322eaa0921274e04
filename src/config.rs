//! The `walsync.toml` configuration file, duration parsing and path globs.
//!
//! The file is parsed strictly: an unknown section or key is a usage error
//! (exit 2) rather than a setting silently ignored. Command-line flags win
//! over the file; the file wins over built-in defaults.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `watch` runs this command as its child (see `--exec`).
    pub exec: Option<String>,
    #[serde(default)]
    pub s3: S3Section,
    #[serde(default)]
    pub sync: SyncSection,
    #[serde(default)]
    pub retry: RetrySection,
    #[serde(default)]
    pub control: ControlSection,
    /// `None` without a `[retention]` section: nothing is ever deleted.
    pub retention: Option<RetentionSection>,
    #[serde(default)]
    pub monitoring: MonitoringSection,
    #[serde(default)]
    pub webhooks: Vec<WebhookEntry>,
    #[serde(default)]
    pub databases: Vec<DatabaseEntry>,
}

/// One `[[webhooks]]` entry: where to POST which events, and the secret
/// that signs them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEntry {
    pub url: String,
    /// Event names (see [`crate::monitor::webhook::Alert`]); all when absent.
    pub events: Option<Vec<String>>,
    pub secret: Option<Secret>,
}

impl WebhookEntry {
    /// The webhook, checked. Neither the URL (it may hold a token) nor the
    /// secret is quoted in an error.
    pub fn webhook(&self, index: usize) -> Result<crate::monitor::webhook::Webhook> {
        use crate::monitor::webhook::{Alert, Webhook};
        let n = index + 1;
        let url = url::Url::parse(&self.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| {
                Error::Usage(format!(
                    "[[webhooks]] entry {n}: url is not an http:// or https:// URL with a host"
                ))
            })?;
        let events = match &self.events {
            None => Alert::ALL.to_vec(),
            Some(names) => names
                .iter()
                .map(|name| {
                    Alert::parse(name).ok_or_else(|| {
                        Error::Usage(format!(
                            "[[webhooks]] entry {n}: unknown event '{name}'; known: {}",
                            Alert::ALL.map(Alert::name).join(", ")
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        };
        Ok(Webhook {
            url,
            events,
            secret: self.secret.clone(),
        })
    }
}

/// A secret from the config file: never shown by `Debug`, never printed.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// `[retention]`: what a replica keeps, and how often levels compact (see
/// [`crate::compact::policy`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    pub pitr_window: Option<DurationValue>,
    /// Keep snapshots younger than this (instead of the GFS counts).
    pub snapshot_retention: Option<DurationValue>,
    pub hourly: Option<u32>,
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
    pub monthly: Option<u32>,
    pub l0_retention: Option<DurationValue>,
    /// Compaction intervals of levels 1, 2, … (at most 8).
    pub compaction_levels: Option<Vec<DurationValue>>,
}

impl RetentionSection {
    /// The policy, defaults filled in.
    pub fn policy(&self) -> Result<crate::compact::policy::Retention> {
        use crate::compact::policy::{Retention, SnapshotPolicy};
        let d = Retention::default();
        let gfs_given = [self.hourly, self.daily, self.weekly, self.monthly]
            .iter()
            .any(Option::is_some);
        let snapshots = match (self.snapshot_retention, gfs_given) {
            (Some(_), true) => {
                return Err(Error::Usage(
                    "[retention] takes snapshot_retention (by age) or hourly/daily/weekly/monthly (GFS counts), not both".into(),
                ))
            }
            (Some(age), false) => SnapshotPolicy::Age(age.0),
            (None, _) => match d.snapshots {
                SnapshotPolicy::Gfs {
                    hourly,
                    daily,
                    weekly,
                    monthly,
                } => SnapshotPolicy::Gfs {
                    hourly: self.hourly.unwrap_or(hourly),
                    daily: self.daily.unwrap_or(daily),
                    weekly: self.weekly.unwrap_or(weekly),
                    monthly: self.monthly.unwrap_or(monthly),
                },
                age => age,
            },
        };
        let levels = match &self.compaction_levels {
            Some(levels) if levels.len() > 8 => {
                return Err(Error::Usage(format!(
                    "[retention] compaction_levels has {} intervals; levels 1 to 8 take at most 8",
                    levels.len()
                )))
            }
            Some(levels) => levels.iter().map(|l| l.0).collect(),
            None => d.levels,
        };
        Ok(Retention {
            pitr_window: self.pitr_window.map_or(d.pitr_window, |v| v.0),
            snapshots,
            l0_retention: self.l0_retention.map_or(d.l0_retention, |v| v.0),
            levels,
        })
    }
}

/// `[monitoring]`: how `watch` tells the world it is alive.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitoringSection {
    /// GET this URL every `heartbeat_interval` while every database is
    /// caught up (a dead-man's switch).
    pub heartbeat_url: Option<String>,
    /// Default 1 minute.
    pub heartbeat_interval: Option<DurationValue>,
    /// Serve Prometheus metrics here: `HOST:PORT`, or `:PORT` for
    /// loopback. Off when absent.
    pub metrics_addr: Option<String>,
}

impl MonitoringSection {
    /// The heartbeat, if one is set. The URL (it often holds a token) is
    /// never quoted in an error.
    pub fn heartbeat(&self) -> Result<Option<crate::watch::heartbeat::HeartbeatSettings>> {
        let Some(text) = &self.heartbeat_url else {
            if self.heartbeat_interval.is_some() {
                return Err(Error::Usage(
                    "[monitoring] heartbeat_interval without heartbeat_url".into(),
                ));
            }
            return Ok(None);
        };
        let url = url::Url::parse(text)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| {
                Error::Usage(
                    "[monitoring] heartbeat_url is not an http:// or https:// URL with a host"
                        .into(),
                )
            })?;
        Ok(Some(crate::watch::heartbeat::HeartbeatSettings {
            url,
            interval: self
                .heartbeat_interval
                .map_or(std::time::Duration::from_secs(60), |v| v.0),
        }))
    }
}

/// `[s3]`: where replicas go and how to reach it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Section {
    /// Replica URL: `s3://bucket/prefix` or `file:///path`.
    pub bucket: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub force_path_style: Option<bool>,
}

/// `[sync]`: timing and checkpoint thresholds (also per database).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncSection {
    /// How often each WAL is polled, e.g. "1s", "50ms" or seconds as a number.
    pub sync_interval: Option<DurationValue>,
    /// How often a full level-9 snapshot is taken, e.g. "1h" or seconds
    /// (0: never by time).
    pub snapshot_interval: Option<TriggerValue>,
    /// Snapshot once this many WAL pages were shipped since the last one.
    pub snapshot_max_changes: Option<u64>,
    /// Snapshot once no change was shipped for this long, after changes.
    pub snapshot_on_idle: Option<TriggerValue>,
    /// Snapshot once this long passed since the first change after one.
    pub snapshot_max_interval: Option<TriggerValue>,
    /// WAL size in pages past which walsync runs a PASSIVE checkpoint.
    pub min_checkpoint_pages: Option<u64>,
    /// WAL size in pages past which walsync runs a TRUNCATE checkpoint.
    pub truncate_checkpoint_pages: Option<u64>,
    /// How often each replica is verified in the background (0: never).
    pub validation_interval: Option<TriggerValue>,
    /// Number of poller threads (whole process; ignored per database).
    pub pollers: Option<usize>,
    /// Number of uploader threads (whole process; ignored per database).
    pub uploaders: Option<usize>,
    /// How often `[[databases]]` globs are looked at again for new files.
    pub discover_interval: Option<DurationValue>,
}

/// `[control]`: the control channel of a running `watch`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    /// The Unix socket `walsync status` and `walsync snapshot` reach.
    pub socket: Option<PathBuf>,
}

/// `[retry]`: how storage requests and failed uploads are retried.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    /// Retries of one request after its first attempt.
    pub max_retries: Option<u32>,
    /// The first delay before a failed upload is retried, doubling…
    pub base_delay_ms: Option<u64>,
    /// …up to this.
    pub max_delay_ms: Option<u64>,
    pub circuit_breaker_enabled: Option<bool>,
    /// Failed uploads in a row (over all databases) that open the circuit.
    pub circuit_breaker_threshold: Option<u32>,
    /// How long the circuit stays open before one probe.
    pub circuit_breaker_cooldown_ms: Option<u64>,
}

/// One `[[databases]]` entry: a path or glob, an optional name and overrides.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseEntry {
    pub path: String,
    pub name: Option<String>,
    pub sync_interval: Option<DurationValue>,
    pub snapshot_interval: Option<TriggerValue>,
    pub snapshot_max_changes: Option<u64>,
    pub snapshot_on_idle: Option<TriggerValue>,
    pub snapshot_max_interval: Option<TriggerValue>,
    pub min_checkpoint_pages: Option<u64>,
    pub truncate_checkpoint_pages: Option<u64>,
    pub validation_interval: Option<TriggerValue>,
}

/// A duration written as a string with a unit ("50ms", "1s", "5m", "1h") or
/// as a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationValue(pub Duration);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = duration_text(d)?;
        parse_duration(&text)
            .map(DurationValue)
            .map_err(serde::de::Error::custom)
    }
}

/// A snapshot trigger's duration: as [`DurationValue`], or 0 (any unit)
/// to turn the trigger off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TriggerValue(pub Duration);

impl<'de> Deserialize<'de> for TriggerValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = duration_text(d)?;
        parse_trigger(&text)
            .map(TriggerValue)
            .map_err(serde::de::Error::custom)
    }
}

/// A duration as written in the file: a number of seconds or a string.
fn duration_text<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Float(f64),
        Text(String),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::Int(n) => n.to_string(),
        Raw::Float(f) => f.to_string(),
        Raw::Text(s) => s,
    })
}

/// Parses a snapshot trigger's duration: 0 (`0`, `0s`, `0m`…) is off,
/// anything else as [`parse_duration`].
pub fn parse_trigger(text: &str) -> std::result::Result<Duration, String> {
    let digits = text
        .trim()
        .trim_end_matches(|c: char| c.is_ascii_alphabetic());
    if !digits.is_empty() && digits.chars().all(|c| c == '0' || c == '.') {
        return Ok(Duration::ZERO);
    }
    parse_duration(text)
}

impl ConfigFile {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<ConfigFile> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Usage(format!(
                "cannot read config file {}: {e}; check the --config path",
                path.display()
            ))
        })?;
        ConfigFile::parse(&text).map_err(|e| e.context(path.display()))
    }

    /// Parses config text. An error says where (line and column) and what,
    /// but never quotes the line or a value: a config file holds secrets,
    /// and a value in the wrong place may be one.
    pub fn parse(text: &str) -> Result<ConfigFile> {
        toml::from_str(text).map_err(|e| {
            let place = e
                .span()
                .map(|span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!(" at line {line}, column {column}")
                })
                .unwrap_or_default();
            let yaml = text.lines().any(|l| l.trim_start().starts_with("dbs:"));
            let hint = if yaml {
                "this looks like a Litestream YAML config: walsync reads TOML; `walsync import-litestream FILE` prints the equivalent walsync.toml"
            } else {
                "see README \"Config file\" for the keys walsync knows"
            };
            Error::Usage(format!(
                "bad config file{place}: {}; {hint}",
                without_quoted_values(e.message().trim())
            ))
        })
    }
}

/// `message` with every quoted value ('…' or "…") blanked out, and every
/// name in backticks that does not look like a config key (lowercase words
/// with `_` or `-`): a secret typed where a key goes is not shown either.
fn without_quoted_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(['"', '\'', '`']) {
        out.push_str(&rest[..start]);
        let quote = &rest[start..start + 1];
        let after = &rest[start + 1..];
        let Some(len) = after.find(quote) else {
            // An unclosed quote (the parser's own text, like expected `"`):
            // nothing after it is shown.
            out.push_str(quote);
            rest = "";
            break;
        };
        let inner = &after[..len];
        let shown = quote == "`" && looks_like_a_key(inner);
        out.push_str(quote);
        out.push_str(if shown { inner } else { "…" });
        out.push_str(quote);
        rest = &after[len + 1..];
    }
    out.push_str(rest);
    out
}

fn looks_like_a_key(name: &str) -> bool {
    name.len() <= 32
        && name.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '=' | '.')
        })
}

/// Parses a duration as people type one: a bare number of seconds (`2`,
/// `0.5`), or amounts with units (`500ms`, `90s`, `5m`, `1h30m`, `7d`,
/// `2w`, also spelled out: `3 days`). Days are 24 hours and weeks 7 days.
/// It must be positive.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    use jiff::{SpanTotal, Unit};
    let t = text.trim();
    let seconds = match t.parse::<f64>() {
        Ok(seconds) => seconds,
        Err(_) => t
            .parse::<jiff::Span>()
            .and_then(|span| span.total(SpanTotal::from(Unit::Second).days_are_24_hours()))
            .map_err(|_| {
                format!("'{text}' is not a duration (try 500ms, 90s, 5m, 1h30m, 7d or 2w)")
            })?,
    };
    // Below a millisecond is zero to every timer walsync runs (found by
    // fuzzing: ".0000000002" parsed as a zero duration).
    if !seconds.is_finite() || !(0.001..=1e10).contains(&seconds) {
        return Err(format!(
            "'{text}' must be a duration of at least 1 ms (and at most 300 years)"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trigger_of_zero_is_off() {
        for off in ["0", "0s", "0m", "0.0"] {
            assert_eq!(parse_trigger(off), Ok(Duration::ZERO), "{off}");
        }
        assert_eq!(parse_trigger("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_trigger("soon").is_err());
        assert!(parse_trigger("").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("50ms").unwrap(), Duration::from_millis(50));
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(
            parse_duration("2w").unwrap(),
            Duration::from_secs(14 * 86_400)
        );
        assert_eq!(
            parse_duration("3 days").unwrap(),
            Duration::from_secs(3 * 86_400)
        );
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        // Found by fuzzing (fuzz/regressions/config_parse): positive, but
        // zero once a Duration.
        assert!(parse_duration(".0000000002").is_err());
        assert_eq!(parse_duration("1ms").unwrap(), Duration::from_millis(1));
    }

    #[test]
    fn config_parses_and_rejects_unknown_keys() {
        let c = ConfigFile::parse(
            r#"
            [s3]
            bucket = "s3://b/p"
            endpoint = "http://127.0.0.1:9000"
            [sync]
            sync_interval = "50ms"
            snapshot_interval = 600
            [[databases]]
            path = "/data/*/app.db"
            [[databases]]
            path = "/data/main.db"
            name = "main"
            sync_interval = 2
            "#,
        )
        .unwrap();
        assert_eq!(c.s3.bucket.as_deref(), Some("s3://b/p"));
        assert_eq!(
            c.sync.sync_interval,
            Some(DurationValue(Duration::from_millis(50)))
        );
        assert_eq!(c.databases.len(), 2);
        let err = ConfigFile::parse("[sync]\nsync_intervall = 1").unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("sync_intervall"));
    }
}
