//! One place where flags, the config file, the environment and the
//! defaults become what a command works on: the replica storage, the
//! databases with their replica names, and each database's settings.
//!
//! Precedence, everywhere: a command-line flag wins over the config file,
//! which wins over the environment and the built-in defaults
//! ([`WatchOptions::default`]; per-database settings in
//! [`crate::selection`]). `watch`, `snapshot`, `restore` and `verify` all
//! name databases through [`Selection`], so a database has the same replica
//! name whichever command reaches it.

use crate::error::{Error, Result};
use crate::names::NamedDb;
use crate::selection::{Selection, SettingFlags};
use crate::storage::{self, s3, s3::S3Options, Storage};
use crate::watch::{CircuitSettings, Settings, WatchOptions};
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

/// The process-wide flags of `watch`.
#[derive(Debug, Default)]
pub struct EngineFlags {
    pub pollers: Option<usize>,
    pub uploaders: Option<usize>,
    pub shutdown_timeout: Option<Duration>,
    pub socket: Option<PathBuf>,
    pub metrics_addr: Option<String>,
}

/// A command's view of its configuration.
pub struct Resolver {
    pub selection: Selection,
    /// The replica URL (without credentials), once the storage is opened.
    replica: String,
}

impl Resolver {
    /// Reads the config file the flags name (none: an empty one).
    pub fn load(target: &Target, flags: SettingFlags, paths: Vec<PathBuf>) -> Result<Resolver> {
        let selection = Selection::load(target.config.as_deref(), flags, paths)?;
        Ok(Resolver {
            selection,
            replica: String::new(),
        })
    }

    /// Opens the replica storage for a one-shot command: each retry of a
    /// request is said to `progress` ("still trying …"; the CLI prints it
    /// on stderr, the Python package logs it).
    pub fn storage(
        &mut self,
        target: &Target,
        progress: s3::RetryProgress,
    ) -> Result<Arc<dyn Storage>> {
        self.open(target, Some(progress))
    }

    /// Opens the replica storage for `watch`, which reports failed uploads
    /// itself, per database.
    pub fn storage_for_watch(&mut self, target: &Target) -> Result<Arc<dyn Storage>> {
        self.open(target, None)
    }

    fn open(
        &mut self,
        target: &Target,
        progress: Option<s3::RetryProgress>,
    ) -> Result<Arc<dyn Storage>> {
        let storage = self.open_storage(target, progress)?;
        self.replica = storage.describe();
        Ok(storage)
    }

    fn open_storage(
        &self,
        target: &Target,
        progress: Option<s3::RetryProgress>,
    ) -> Result<Arc<dyn Storage>> {
        let cfg = self.selection.config();
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
            progress,
            ..S3Options::default()
        }
        .with_env_defaults();
        Ok(Arc::from(storage::open(&url, &options)?))
    }

    /// How `watch` runs: flags, then the config file, then the defaults.
    pub fn watch_options(&self, flags: &EngineFlags) -> Result<WatchOptions> {
        let defaults = WatchOptions::default();
        let config = self.selection.config();
        let sync = &config.sync;
        let retention = match &config.retention {
            Some(section) => Some(section.policy()?),
            None => None,
        };
        Ok(WatchOptions {
            pollers: flags
                .pollers
                .or(sync.pollers)
                .unwrap_or(defaults.pollers)
                .max(1),
            uploaders: flags
                .uploaders
                .or(sync.uploaders)
                .unwrap_or(defaults.uploaders)
                .max(1),
            shutdown_timeout: flags.shutdown_timeout.unwrap_or(defaults.shutdown_timeout),
            discover_interval: sync
                .discover_interval
                .map_or(defaults.discover_interval, |d| d.0),
            control_socket: Some(self.socket(flags.socket.as_deref())),
            upload_retry: self.upload_retry(defaults.upload_retry),
            circuit: self.circuit(defaults.circuit),
            retention,
            heartbeat: config.monitoring.heartbeat()?,
            metrics_addr: flags
                .metrics_addr
                .as_deref()
                .or(config.monitoring.metrics_addr.as_deref())
                .map(crate::monitor::endpoint::parse_addr)
                .transpose()?,
            webhooks: config
                .webhooks
                .iter()
                .enumerate()
                .map(|(i, w)| w.webhook(i))
                .collect::<Result<_>>()?,
        })
    }

    /// `[retry] base_delay_ms` and `max_delay_ms` over the defaults.
    fn upload_retry(&self, (base, max): (Duration, Duration)) -> (Duration, Duration) {
        let retry = &self.selection.config().retry;
        let base = retry.base_delay_ms.map_or(base, Duration::from_millis);
        let max = retry.max_delay_ms.map_or(max, Duration::from_millis);
        (base.max(Duration::from_millis(1)), max.max(base))
    }

    /// `[retry] circuit_breaker_*` over the defaults.
    fn circuit(&self, defaults: CircuitSettings) -> CircuitSettings {
        let retry = &self.selection.config().retry;
        CircuitSettings {
            enabled: retry.circuit_breaker_enabled.unwrap_or(defaults.enabled),
            threshold: retry
                .circuit_breaker_threshold
                .unwrap_or(defaults.threshold)
                .max(1),
            cooldown: retry
                .circuit_breaker_cooldown_ms
                .map_or(defaults.cooldown, Duration::from_millis),
        }
    }

    /// The control channel's socket: the flag, then `[control] socket`,
    /// then the default.
    pub fn socket(&self, flag: Option<&Path>) -> PathBuf {
        flag.map(Path::to_path_buf)
            .or_else(|| self.selection.config().control.socket.clone())
            .unwrap_or_else(crate::watch::control::default_socket)
    }

    /// The databases to replicate now (see [`Selection::resolve`]).
    pub fn databases(&self) -> Result<Vec<(NamedDb, Settings)>> {
        self.selection.resolve(&self.replica)
    }

    /// The one database `path`, named as `watch` names it (or `name`).
    pub fn database(&self, path: &Path, name: Option<&str>) -> Result<(NamedDb, Settings)> {
        self.selection.database(path, name, &self.replica)
    }

    /// A replica name or a database path, as a replica name.
    pub fn replica_name(&self, arg: &str) -> Result<String> {
        self.selection.replica_name(arg, &self.replica)
    }

    /// What a database argument names: a path (and its name) or a name.
    pub fn database_arg(&self, arg: &str) -> Result<crate::selection::DatabaseArg> {
        self.selection.database_arg(arg, &self.replica)
    }

    /// The replica name and output of `restore NAME|PATH [-o OUT]`. A path
    /// names its database as `watch` would and is the default output; its
    /// replica must not record another database as its source (a name two
    /// databases could share by their stems is not guessed).
    pub fn restore_target(
        &self,
        storage: &dyn Storage,
        arg: &str,
        output: Option<PathBuf>,
    ) -> Result<(String, PathBuf)> {
        use crate::selection::DatabaseArg;
        match (self.database_arg(arg)?, output) {
            (DatabaseArg::Name(name), Some(out)) => Ok((name, out)),
            (DatabaseArg::Name(name), None) => Err(Error::Usage(format!(
                "restore '{name}' needs -o OUT (the output file); give the database's path instead of its name to restore it in place"
            ))),
            (DatabaseArg::Path { name, path }, out) => {
                let key = crate::selection::absolute(&path).into_owned();
                if let Some(record) = crate::watch::identity::source_of(storage, &name)? {
                    if std::path::Path::new(&record.path) != key {
                        return Err(Error::Restore(format!(
                            "the replica '{name}' is the replica of {} (on {}), not of {}; restore it by name with -o",
                            record.path,
                            record.host,
                            key.display()
                        )));
                    }
                }
                Ok((name, out.unwrap_or(path)))
            }
        }
    }
}
