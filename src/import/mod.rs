//! `walsync import-litestream litestream.yml`: a Litestream config turned
//! into the equivalent `walsync.toml`, printed for the operator to read and
//! keep. Every key walsync has an equivalent for is carried over; every
//! other key is listed at the end as a comment saying why it was left out.
//! Secrets are never copied or printed: walsync takes credentials from the
//! environment only.
//!
//! Replica locations: Litestream gives each database its own replica URL;
//! walsync has one replica location per config (`[s3] bucket`, with the
//! S3 endpoint, region and addressing) and a name per database under it.
//! The location is the longest path the replicas share, and each name is
//! the rest of its replica's path, so every database keeps the keys it has
//! now (`<path>/ltx/…`) and walsync restores what Litestream wrote. A
//! database replicated somewhere else (another bucket, endpoint or
//! region) is listed, commented out, with what to do.
//!
//! The output always parses as a walsync config (the tests check it).

pub mod yaml;

use crate::error::{Error, Result};
use yaml::Node;

/// Translates the text of a Litestream config; `source` names it in the
/// header.
pub fn translate(text: &str, source: &str) -> Result<String> {
    let root = yaml::parse(text).map_err(|e| Error::Usage(format!("{source}: {e}")))?;
    let Node::Map(entries) = &root else {
        return Err(Error::Usage(format!(
            "{source}: a Litestream config is a YAML mapping (dbs:, ...)"
        )));
    };
    let mut out = Translation::default();
    for (key, value) in entries {
        out.global(key, value);
    }
    out.note_expansions("", &root);
    Ok(out.render(source))
}

/// A database's replica location, split into the shared part and its name.
#[derive(Clone, PartialEq)]
struct Location {
    /// `s3://bucket` or `file://`.
    root: String,
    /// The path under the root, in segments.
    segments: Vec<String>,
    endpoint: Option<String>,
    region: Option<String>,
    force_path_style: Option<bool>,
}

impl Location {
    fn same_place(&self, other: &Location) -> bool {
        (
            &self.root,
            &self.endpoint,
            &self.region,
            self.force_path_style,
        ) == (
            &other.root,
            &other.endpoint,
            &other.region,
            other.force_path_style,
        )
    }
}

/// A database walsync can replicate where its replica is.
struct Database {
    path: String,
    /// A `dir:` entry: one name per file it matches, by template.
    per_file: bool,
    location: Location,
    settings: Vec<(String, String)>,
}

#[derive(Default)]
struct Translation {
    exec: Option<String>,
    sync: Vec<(String, String)>,
    retention: Vec<(String, String)>,
    monitoring: Vec<(String, String)>,
    databases: Vec<Database>,
    notes: Vec<String>,
}

/// A TOML basic string holding `text` (written by hand: the toml crate's
/// serializer would add tens of kilobytes to the static binary for this).
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A Litestream duration as a walsync one, if walsync reads it.
fn duration(text: &str) -> Option<String> {
    crate::config::parse_duration(text).ok()?;
    Some(quoted(text))
}

impl Translation {
    fn note(&mut self, key: &str, why: &str) {
        self.notes.push(format!("{key}: {why}"));
    }

    /// Notes why `key` is left out; nothing comes of it.
    fn skip<T>(&mut self, key: &str, why: &str) -> Option<T> {
        self.note(key, why);
        None
    }

    /// Litestream expands `$VAR` and `${VAR}` anywhere in its config;
    /// walsync expands nothing: every value holding a `$` is named.
    fn note_expansions(&mut self, at: &str, node: &Node) {
        match node {
            Node::Map(entries) => {
                for (k, v) in entries {
                    let here = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                    self.note_expansions(&here, v);
                }
            }
            Node::List(items) => {
                for (i, v) in items.iter().enumerate() {
                    self.note_expansions(&format!("{at}[{i}]"), v);
                }
            }
            Node::Scalar(text) if text.contains('$') => self.note(
                at,
                "Litestream expands $VAR and ${VAR} here; walsync does not: the value is copied as written (put the value itself, or the variable walsync reads)",
            ),
            _ => {}
        }
    }

    fn global(&mut self, key: &str, value: &Node) {
        match key {
            "access-key-id" | "secret-access-key" => self.note(
                key,
                "not copied: walsync reads AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from its environment",
            ),
            // Litestream's ":9090" listens on every interface; walsync's
            // ":9090" means loopback, so the host is written out.
            "addr" => match value.text() {
                Some(a) if a.starts_with(':') => self
                    .monitoring
                    .push(("metrics_addr".into(), quoted(&format!("0.0.0.0{a}")))),
                Some(a) => self.monitoring.push(("metrics_addr".into(), quoted(a))),
                None => self.note(key, "not a host:port"),
            },
            "exec" => match value.text() {
                Some(c) => self.exec = Some(c.to_string()),
                None => self.note(key, "not a command line"),
            },
            "snapshot" => self.snapshot(value),
            "levels" => self.levels(value),
            "l0-retention" => self.duration_into(key, value, Section::Retention, "l0_retention"),
            "l0-retention-check-interval" => self.note(
                key,
                "walsync applies retention as files are stored, not on a timer",
            ),
            "logging" => self.note(
                key,
                "use --log-level / WALSYNC_LOG and --log-format json / WALSYNC_LOG_FORMAT",
            ),
            "dbs" => match value {
                Node::List(dbs) => {
                    for (i, db) in dbs.iter().enumerate() {
                        self.database(i, db);
                    }
                }
                _ => self.note(key, "not a list of databases"),
            },
            "mcp-addr" | "socket" => self.note(
                key,
                "walsync has no MCP server; `walsync status` reads its own control socket ([control] socket)",
            ),
            _ => self.note(key, "not a Litestream key walsync knows"),
        }
    }

    /// Sets a database's `key` (a later setting of it wins), or notes
    /// that `here` holds no value walsync reads.
    fn put(
        &mut self,
        here: &str,
        settings: &mut Vec<(String, String)>,
        key: &str,
        value: Option<String>,
    ) {
        match value {
            Some(v) => {
                settings.retain(|(k, _)| k != key);
                settings.push((key.into(), v));
            }
            None => self.note(
                here,
                "not a value walsync reads (a duration like 10s, or a whole number)",
            ),
        }
    }

    fn duration_into(&mut self, key: &str, value: &Node, section: Section, to: &str) {
        match value.text().and_then(duration) {
            Some(d) => {
                let list = match section {
                    Section::Sync => &mut self.sync,
                    Section::Retention => &mut self.retention,
                };
                list.push((to.into(), d));
            }
            None => self.note(key, "not a duration walsync reads (like 10s, 5m, 24h)"),
        }
    }

    fn snapshot(&mut self, value: &Node) {
        let Node::Map(entries) = value else {
            return self.note("snapshot", "not a mapping");
        };
        for (key, v) in entries {
            match key.as_str() {
                "interval" => {
                    self.duration_into("snapshot.interval", v, Section::Sync, "snapshot_interval")
                }
                "retention" => self.duration_into(
                    "snapshot.retention",
                    v,
                    Section::Retention,
                    "snapshot_retention",
                ),
                other => self.note(&format!("snapshot.{other}"), "not a key walsync knows"),
            }
        }
    }

    fn levels(&mut self, value: &Node) {
        let Node::List(levels) = value else {
            return self.note("levels", "not a list");
        };
        let intervals: Option<Vec<String>> = levels
            .iter()
            .map(|l| l.get("interval").and_then(Node::text).and_then(duration))
            .collect();
        match intervals {
            Some(i) if !i.is_empty() && i.len() <= 8 => self
                .retention
                .push(("compaction_levels".into(), format!("[{}]", i.join(", ")))),
            _ => self.note(
                "levels",
                "walsync takes 1 to 8 levels, each with an interval (like 5m)",
            ),
        }
    }

    fn database(&mut self, index: usize, db: &Node) {
        let at = format!("dbs[{index}]");
        let Node::Map(entries) = db else {
            return self.note(&at, "not a mapping");
        };
        let (mut path, mut per_file, mut settings, mut location) =
            (String::new(), false, Vec::new(), None);
        let (mut dir, mut pattern) = (None, None);
        for (key, value) in entries {
            let here = format!("{at}.{key}");
            match (key.as_str(), value.text()) {
                ("path", Some(p)) => path = p.to_string(),
                ("dir", Some(d)) => dir = Some(d.to_string()),
                ("pattern", Some(p)) => pattern = Some(p.to_string()),
                ("recursive", Some("true")) => self.note(
                    &here,
                    "walsync globs match one folder level per `*`: list deeper levels as more [[databases]] entries",
                ),
                ("recursive", _) => {}
                ("monitor-interval", d) => self.put(&here, &mut settings, "sync_interval", d.and_then(duration)),
                ("min-checkpoint-page-count", n) => self.put(&here, &mut settings, "min_checkpoint_pages", n.and_then(number)),
                ("truncate-page-n" | "max-checkpoint-page-count", n) => {
                    self.put(&here, &mut settings, "truncate_checkpoint_pages", n.and_then(number))
                }
                ("checkpoint-interval", _) => self.note(
                    &here,
                    "walsync checkpoints by WAL size (min_checkpoint_pages, truncate_checkpoint_pages), not by time",
                ),
                ("busy-timeout", _) => self.note(&here, "walsync's own connections wait for locks as needed"),
                ("meta-path", _) => self.note(
                    &here,
                    "walsync keeps its local state beside each database (.<file>-walsync)",
                ),
                ("replica", _) => location = self.replica(&here, value, &mut settings),
                // After the other keys (below): its first replica.
                ("replicas", _) => {}
                _ => self.note(&here, "not a key walsync knows"),
            }
        }
        if let Some(Node::List(replicas)) = db.get("replicas") {
            if let Some(first) = replicas.first() {
                location = self.replica(&format!("{at}.replicas[0]"), first, &mut settings);
            }
            if replicas.len() > 1 {
                self.note(
                    &format!("{at}.replicas[1..]"),
                    "walsync replicates each database to one place: run a second walsync with its own config for another",
                );
            }
        }
        if let (Some(dir), true) = (&dir, path.is_empty()) {
            let pattern = pattern.as_deref().unwrap_or("*");
            path = format!("{}/{pattern}", dir.trim_end_matches('/'));
            per_file = true;
            self.note(
                &format!("{at}.dir"),
                "each database gets the name <replica path>/{1} ({1}: what the pattern's first * matched); check them against Litestream's with `walsync list -b URL` before the first watch",
            );
        }
        if path.is_empty() {
            return self.note(&at, "no path (or dir): nothing to replicate");
        }
        let Some(location) = location else {
            return self.note(
                &at,
                "no replica walsync can write (see the notes on its replica): not translated",
            );
        };
        self.databases.push(Database {
            path,
            per_file,
            location,
            settings,
        });
    }

    /// The location of a replica walsync can write (its interval settings
    /// go to `settings`), or None, with a note saying why not.
    fn replica(
        &mut self,
        at: &str,
        replica: &Node,
        settings: &mut Vec<(String, String)>,
    ) -> Option<Location> {
        let Node::Map(entries) = replica else {
            self.note(at, "not a mapping");
            return None;
        };
        let text = |key: &str| replica.get(key).and_then(Node::text).map(str::to_string);
        let kind = text("type").unwrap_or_else(|| {
            text("url")
                .and_then(|u| u.split_once("://").map(|(s, _)| s.to_string()))
                .unwrap_or_else(|| "s3".into())
        });
        let mut query: Vec<(String, String)> = Vec::new();
        let (root, path) = match (kind.as_str(), text("url")) {
            ("s3", Some(url)) => {
                let (url, params) = url.split_once('?').unwrap_or((&url, ""));
                query = params
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                match url.strip_prefix("s3://").map(|r| r.split_once('/').unwrap_or((r, ""))) {
                    Some((bucket, path)) => (format!("s3://{bucket}"), path.to_string()),
                    None => return self.skip(&format!("{at}.url"), "not an s3:// URL"),
                }
            }
            ("s3", None) => match text("bucket") {
                Some(bucket) => (format!("s3://{bucket}"), text("path").unwrap_or_default()),
                None => return self.skip(at, "an s3 replica without bucket or url"),
            },
            ("file", url) => match url.and_then(|u| u.strip_prefix("file://").map(str::to_string)).or_else(|| text("path")) {
                Some(path) if path.starts_with('/') => ("file://".to_string(), path),
                _ => return self.skip(at, "a file replica needs an absolute path"),
            },
            (other, _) => {
                return self.skip(
                    at,
                    &format!("type {other}: walsync writes S3-compatible storage and folders (s3, file) only"),
                )
            }
        };
        let segments: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if segments.is_empty() {
            return self.skip(
                at,
                "the replica is at the bucket's root: walsync keeps each database under a name; move it under a path, or restore it with `walsync restore \"\" -b URL`",
            );
        }
        if root.starts_with("s3://") && root[5..].contains('.') {
            return self.skip(
                at,
                "an S3 URL with a provider's host as its bucket (bucket.host): not translated; write the bucket and the endpoint apart (bucket:, endpoint:) and import again",
            );
        }
        let param = |names: &[&str]| {
            query
                .iter()
                .find(|(k, _)| names.contains(&k.as_str()))
                .map(|(_, v)| v.clone())
        };
        for (k, _) in &query {
            if !["endpoint", "region", "forcePathStyle", "force-path-style"].contains(&k.as_str()) {
                self.note(
                    &format!("{at}.url ?{k}"),
                    "not a URL parameter walsync knows",
                );
            }
        }
        let mut endpoint = text("endpoint").or_else(|| param(&["endpoint"]));
        if let Some(e) = endpoint.as_mut().filter(|e| !e.contains("://")) {
            *e = format!("https://{e}");
            self.note(
                &format!("{at}.endpoint"),
                "given without a scheme: written as https://, as Litestream reads it",
            );
        }
        let location = Location {
            root,
            segments,
            endpoint,
            region: text("region").or_else(|| param(&["region"])),
            force_path_style: text("force-path-style")
                .or_else(|| param(&["forcePathStyle", "force-path-style"]))
                .map(|v| v == "true"),
        };
        for (key, value) in entries {
            let here = format!("{at}.{key}");
            match (key.as_str(), value.text()) {
                ("type" | "url" | "bucket" | "path" | "endpoint" | "region" | "force-path-style", _) => {}
                ("sync-interval", d) => self.put(&here, settings, "sync_interval", d.and_then(duration)),
                ("validation-interval", d) => self.put(&here, settings, "validation_interval", d.and_then(duration)),
                ("snapshot-interval", d) => self.put(&here, settings, "snapshot_interval", d.and_then(duration)),
                ("access-key-id" | "secret-access-key", _) => self.note(
                    &here,
                    "not copied: walsync reads AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from its environment",
                ),
                ("retention", _) => self.note(
                    &here,
                    "walsync's retention is per config: see [retention] snapshot_retention and pitr_window",
                ),
                ("age", _) => self.note(
                    &here,
                    "walsync does not encrypt replicas: keep Litestream for encrypted replicas, or use the provider's server-side encryption",
                ),
                ("skip-verify", _) => self.note(&here, "walsync always verifies TLS certificates"),
                _ => self.note(&here, "not a key walsync knows"),
            }
        }
        Some(location)
    }

    /// The shared location: the first database's place, and the longest
    /// path every database there shares (each keeps at least its last
    /// segment as its name).
    fn shared(&self) -> Option<(Location, usize)> {
        let first = self.databases.first()?.location.clone();
        let here: Vec<&Location> = self
            .databases
            .iter()
            .map(|d| &d.location)
            .filter(|l| l.same_place(&first))
            .collect();
        let mut common = here.iter().map(|l| l.segments.len() - 1).min().unwrap_or(0);
        for l in &here {
            common = common.min(
                l.segments
                    .iter()
                    .zip(&first.segments)
                    .take_while(|(a, b)| a == b)
                    .count(),
            );
        }
        Some((first, common))
    }

    fn render(mut self, source: &str) -> String {
        let mut out = format!(
            "# walsync.toml, translated from {source} by `walsync import-litestream`.\n# Credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in walsync's environment.\n"
        );
        if let Some(exec) = &self.exec {
            out.push_str(&format!("exec = {}\n", quoted(exec)));
        }
        let shared = self.shared();
        if let Some((place, common)) = &shared {
            let prefix = place.segments[..*common].join("/");
            let url = match (place.root.as_str(), prefix.is_empty()) {
                ("file://", _) => format!("file:///{prefix}"),
                (root, true) => root.to_string(),
                (root, false) => format!("{root}/{prefix}"),
            };
            out.push_str(&format!("\n[s3]\nbucket = {}\n", quoted(&url)));
            if let Some(e) = &place.endpoint {
                out.push_str(&format!("endpoint = {}\n", quoted(e)));
            }
            if let Some(r) = &place.region {
                out.push_str(&format!("region = {}\n", quoted(r)));
            }
            if let Some(f) = place.force_path_style {
                out.push_str(&format!("force_path_style = {f}\n"));
            }
        }
        for (title, keys) in [
            ("sync", &self.sync),
            ("retention", &self.retention),
            ("monitoring", &self.monitoring),
        ] {
            if !keys.is_empty() {
                out.push_str(&format!("\n[{title}]\n"));
                for (k, v) in keys {
                    out.push_str(&format!("{k} = {v}\n"));
                }
            }
        }
        let mut elsewhere = Vec::new();
        for db in &self.databases {
            let l = &db.location;
            let name = match &shared {
                Some((place, common)) if l.same_place(place) => l.segments[*common..].join("/"),
                _ => {
                    elsewhere.push(format!(
                        "{}: replicated to {}/{} (another bucket, endpoint or region): walsync takes one replica location per config; give it a config of its own",
                        db.path,
                        l.root,
                        l.segments.join("/")
                    ));
                    continue;
                }
            };
            out.push_str(&format!("\n[[databases]]\npath = {}\n", quoted(&db.path)));
            let name = if db.per_file {
                format!("{name}/{{1}}")
            } else {
                name
            };
            out.push_str(&format!("name = {}\n", quoted(&name)));
            for (k, v) in &db.settings {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        self.notes.extend(elsewhere);
        if !self.notes.is_empty() {
            out.push_str("\n# Not translated:\n");
            for note in &self.notes {
                out.push_str(&format!("# - {note}\n"));
            }
        }
        out
    }
}

#[derive(Clone, Copy)]
enum Section {
    Sync,
    Retention,
}

/// A whole number as walsync writes it, if it is one.
fn number(text: &str) -> Option<String> {
    text.parse::<u64>().ok().map(|n| n.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoted_strings_read_back_as_written() {
        for s in [
            "plain",
            "a \"quoted\" \\ path",
            "tab\there",
            "line\nbreak",
            "\u{1}",
        ] {
            let v: toml::Value = toml::from_str(&format!("k = {}", super::quoted(s))).unwrap();
            assert_eq!(v["k"].as_str(), Some(s));
        }
    }
}
