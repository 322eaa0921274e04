//! walsync.toml parsing of arbitrary text: `ConfigFile::parse` (with the
//! durations it parses through `DurationValue`), then what walsync does
//! with a parsed file without touching the filesystem: the replica URL
//! (`parse_url`, `redact_url`, `S3Storage::open`, which sends nothing), the
//! `[[databases]]` globs (`Glob::new`, `captures`, `wildcard_match`) and
//! names (`names::assign`, `validate`, name templates). Also
//! `parse_duration` on each line of the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use walsync::config::{parse_duration, wildcard_match, ConfigFile, Glob};
use walsync::names::{self, Candidate, Naming};
use walsync::storage::s3::{parse_url, redact_url, S3Options, S3Storage};

/// A path the glob matches: each `*` / `?` replaced by a letter.
fn instance(pattern: &str, fill: &str) -> String {
    let mut out = String::new();
    for c in pattern.chars() {
        match c {
            '*' => out.push_str(fill),
            '?' => out.push('q'),
            c => out.push(c),
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    // Durations as a user types them (flags and config values).
    // "It must be positive" (parse_duration's doc): no zero Duration.
    for line in text.lines().take(16) {
        if let Ok(d) = parse_duration(line) {
            assert!(!d.is_zero(), "parse_duration({line:?}) is a zero duration");
        }
    }
    let _ = parse_duration(text);

    let Ok(config) = ConfigFile::parse(text) else {
        return;
    };

    // The replica URL.
    if let Some(bucket) = &config.s3.bucket {
        let _ = redact_url(bucket);
        if let Ok((b, prefix)) = parse_url(bucket) {
            assert!(!b.is_empty());
            assert!(!prefix.starts_with('/') && !prefix.ends_with('/'));
            let options = S3Options {
                endpoint: config.s3.endpoint.clone(),
                region: config.s3.region.clone(),
                force_path_style: config.s3.force_path_style,
                ..S3Options::default()
            };
            let _ = S3Storage::open(bucket, &options);
        }
    }
    if let Some(e) = &config.s3.endpoint {
        let _ = redact_url(e);
    }

    // The databases and their names.
    let mut candidates = Vec::new();
    for (i, entry) in config.databases.iter().take(32).enumerate() {
        let glob = Glob::new(&entry.path);
        let _ = glob.pattern();
        let fill = format!("t{i}");
        let path = PathBuf::from(instance(&entry.path, &fill));
        let captures = if glob.has_wildcards() {
            let caps = glob.captures(&path);
            for part in entry.path.split('/') {
                if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                    let _ = wildcard_match(part, name);
                }
            }
            caps
        } else {
            None
        };
        if let Some(name) = &entry.name {
            let _ = names::validate(name);
        }
        let naming = match (&entry.name, captures) {
            (Some(name), captures) => Naming::Given {
                name: name.clone(),
                captures,
            },
            (None, Some(c)) => Naming::Glob(c),
            (None, None) => Naming::Path,
        };
        candidates.push(Candidate {
            path: std::path::Path::new("/").join(&path),
            naming,
            kept: None,
        });
    }
    if let Ok(assigned) = names::assign(&candidates) {
        assert_eq!(assigned.len(), candidates.len());
    }
});
