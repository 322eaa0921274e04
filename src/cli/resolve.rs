//! One place where flags, the config file, the environment and the
//! defaults become what a command works on: the replica storage, the
//! databases with their replica names, and each database's settings.
//!
//! Precedence, everywhere: a command-line flag wins over a `[[databases]]`
//! entry, which wins over `[sync]`/`[s3]` of the config file, which wins
//! over the environment and the built-in defaults ([`Settings::default`],
//! [`WatchOptions::default`]). `watch`, `snapshot`, `restore` and `verify`
//! all name databases through [`Resolver::databases`], so a database has
//! the same replica name whichever command reaches it.

use crate::config::{ConfigFile, DatabaseEntry, SyncSection};
use crate::error::{Error, Result};
use crate::names::{self, NamedDb};
use crate::storage::{self, s3::S3Options, Storage};
use crate::watch::{Settings, WatchOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The connection flags every replica command has.
pub struct Target<'a> {
    pub bucket: &'a Option<String>,
    pub config: &'a Option<PathBuf>,
    pub endpoint: &'a Option<String>,
    pub region: &'a Option<String>,
    pub force_path_style: Option<bool>,
}

/// Per-database settings given on the command line (`watch` only).
#[derive(Debug, Default, Clone)]
pub struct SettingFlags {
    pub sync_interval: Option<Duration>,
    pub snapshot_interval: Option<Duration>,
    pub min_checkpoint_pages: Option<u64>,
    pub truncate_checkpoint_pages: Option<u64>,
}

/// A command's view of its configuration.
pub struct Resolver {
    config: ConfigFile,
    flags: SettingFlags,
}

impl Resolver {
    /// Reads the config file the flags name (none: an empty one).
    pub fn load(target: &Target, flags: SettingFlags) -> Result<Resolver> {
        let config = match target.config {
            Some(p) => ConfigFile::load(p)?,
            None => ConfigFile::default(),
        };
        Ok(Resolver { config, flags })
    }

    /// Opens the replica storage.
    pub fn storage(&self, target: &Target) -> Result<Arc<dyn Storage>> {
        let cfg = &self.config;
        let url = target.bucket.clone().or_else(|| cfg.s3.bucket.clone()).ok_or_else(|| {
            Error::Usage(
                "no replica URL: pass -b s3://bucket/prefix (or file:///path), or set bucket in [s3] of the config file".into(),
            )
        })?;
        let options = S3Options {
            endpoint: target.endpoint.clone().or_else(|| cfg.s3.endpoint.clone()),
            region: target.region.clone().or_else(|| cfg.s3.region.clone()),
            force_path_style: target.force_path_style.or(cfg.s3.force_path_style),
            max_retries: cfg.retry.max_retries,
            ..S3Options::default()
        }
        .with_env_defaults();
        Ok(Arc::from(storage::open(&url, &options)?))
    }

    /// How `watch` runs: flags, then `[sync]`, then the defaults.
    pub fn watch_options(
        &self,
        pollers: Option<usize>,
        uploaders: Option<usize>,
        shutdown_timeout: Option<Duration>,
    ) -> WatchOptions {
        let defaults = WatchOptions::default();
        let sync = &self.config.sync;
        WatchOptions {
            pollers: pollers.or(sync.pollers).unwrap_or(defaults.pollers).max(1),
            uploaders: uploaders
                .or(sync.uploaders)
                .unwrap_or(defaults.uploaders)
                .max(1),
            shutdown_timeout: shutdown_timeout.unwrap_or(defaults.shutdown_timeout),
        }
    }

    /// The settings of a database: flags, then its `[[databases]]` entry,
    /// then `[sync]`, then the defaults.
    fn settings(&self, entry: Option<&DatabaseEntry>) -> Settings {
        let d = Settings::default();
        let sync: &SyncSection = &self.config.sync;
        let f = &self.flags;
        let pick_d = |flag: Option<Duration>, e: Option<Duration>, s: Option<Duration>, d| {
            flag.or(e).or(s).unwrap_or(d)
        };
        Settings {
            sync_interval: pick_d(
                f.sync_interval,
                entry.and_then(|e| e.sync_interval).map(|v| v.0),
                sync.sync_interval.map(|v| v.0),
                d.sync_interval,
            ),
            snapshot_interval: pick_d(
                f.snapshot_interval,
                entry.and_then(|e| e.snapshot_interval).map(|v| v.0),
                sync.snapshot_interval.map(|v| v.0),
                d.snapshot_interval,
            ),
            min_checkpoint_pages: f
                .min_checkpoint_pages
                .or(entry.and_then(|e| e.min_checkpoint_pages))
                .or(sync.min_checkpoint_pages)
                .unwrap_or(d.min_checkpoint_pages),
            truncate_checkpoint_pages: f
                .truncate_checkpoint_pages
                .or(entry.and_then(|e| e.truncate_checkpoint_pages))
                .or(sync.truncate_checkpoint_pages)
                .unwrap_or(d.truncate_checkpoint_pages),
        }
    }

    /// The databases to replicate: `paths` from the command line plus the
    /// config file's entries (globs expanded), each once, named by
    /// [`names::assign`] over the whole set, with its settings.
    pub fn databases(&self, paths: &[PathBuf]) -> Result<Vec<(NamedDb, Settings)>> {
        let mut found: Vec<Found> = Vec::new();
        for path in paths {
            found.push(Found::new(path.clone(), None, self.settings(None)));
        }
        for entry in &self.config.databases {
            for path in self.expand(entry)? {
                let found_entry = Found::new(path, entry.name.clone(), self.settings(Some(entry)));
                // A file named on the command line and in the config is one
                // database, with the entry's name and settings.
                match found.iter_mut().find(|f| f.key == found_entry.key) {
                    Some(seen) => *seen = found_entry,
                    None => found.push(found_entry),
                }
            }
        }
        let named = names::assign(
            &found
                .iter()
                .map(|f| (f.key.clone(), f.name.clone()))
                .collect::<Vec<_>>(),
        )?;
        Ok(named
            .into_iter()
            .zip(found)
            .map(|(mut db, f)| {
                db.path = f.path;
                (db, f.settings)
            })
            .collect())
    }

    /// The files a `[[databases]]` entry names.
    fn expand(&self, entry: &DatabaseEntry) -> Result<Vec<PathBuf>> {
        let matched = crate::config::expand_glob(&entry.path)?;
        if matched.is_empty() {
            return Err(Error::Database(format!(
                "config entry path '{}' matches no database file",
                entry.path
            )));
        }
        if entry.name.is_some() && matched.len() > 1 {
            return Err(Error::Usage(format!(
                "config entry '{}' sets a name but matches {} files; a name fits one database only",
                entry.path,
                matched.len()
            )));
        }
        Ok(matched)
    }

    /// The one database `path` (the `snapshot` command): named as `watch`
    /// with the same config would name it, unless `name` is given.
    pub fn database(&self, path: &Path, name: Option<&str>) -> Result<(NamedDb, Settings)> {
        if let Some(n) = name {
            names::validate(n)?;
        }
        let key = absolute(path);
        let (mut db, settings) = self
            .databases(&[path.to_path_buf()])?
            .into_iter()
            .find(|(db, _)| absolute(&db.path) == key)
            .ok_or_else(|| Error::Other(format!("{} was not resolved", path.display())))?;
        if let Some(n) = name {
            db.name = n.to_string();
        }
        Ok((db, settings))
    }

    /// A replica name given to `restore` or `verify`: a database file (as
    /// `watch` with the same config names it) or a name.
    pub fn replica_name(&self, arg: &str) -> Result<String> {
        let path = Path::new(arg);
        if path.is_file() {
            return Ok(self.database(path, None)?.0.name);
        }
        // The empty name is a database at the replica's root.
        if !arg.is_empty() {
            names::validate(arg)?;
        }
        Ok(arg.to_string())
    }
}

/// A database found on the command line or in the config file.
struct Found {
    path: PathBuf,
    /// The absolute path: what identifies the file.
    key: PathBuf,
    name: Option<String>,
    settings: Settings,
}

impl Found {
    fn new(path: PathBuf, name: Option<String>, settings: Settings) -> Found {
        Found {
            key: absolute(&path),
            path,
            name,
            settings,
        }
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}
