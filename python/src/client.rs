//! `walsync._walsync.Client`: one replica location (a bucket URL, its
//! endpoint and region, and optionally a walsync.toml), and the commands
//! that reach it. Settings resolve exactly as the CLI's flags do
//! (`walsync::resolve`): an argument wins over the config file, which wins
//! over the environment (AWS_* variables) and the defaults.
//!
//! Reports cross into Python as JSON text (the library's report types
//! serialize); python/walsync/__init__.py makes objects of them.

use crate::blocking;
use crate::errors;
use crate::handles::{seconds, Follow, Watch, WatchFlags};
use crate::pylog::PyLog;
use pyo3::prelude::*;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use walsync::resolve::{Resolver, Target};
use walsync::selection::SettingFlags;
use walsync::{CancelToken, Error, RestoreOptions, RestoreOutcome, Storage};

/// The connection arguments, owned (the CLI borrows them from its flags).
#[derive(Clone)]
pub struct Connection {
    pub bucket: Option<String>,
    pub config: Option<PathBuf>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub force_path_style: Option<bool>,
}

impl Connection {
    pub fn target(&self) -> Target<'_> {
        Target {
            bucket: &self.bucket,
            config: &self.config,
            endpoint: &self.endpoint,
            region: &self.region,
            force_path_style: self.force_path_style,
        }
    }
}

/// A replica location and the commands that reach it.
#[pyclass(module = "walsync._walsync", frozen)]
pub struct Client {
    connection: Connection,
    resolver: Arc<Resolver>,
    storage: Arc<dyn Storage>,
}

fn to_json(value: &impl serde::Serialize) -> walsync::Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Other(format!("encoding JSON: {e}")))
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (bucket=None, endpoint=None, region=None, force_path_style=None, config=None))]
    fn new(
        py: Python<'_>,
        bucket: Option<String>,
        endpoint: Option<String>,
        region: Option<String>,
        force_path_style: Option<bool>,
        config: Option<PathBuf>,
    ) -> PyResult<Client> {
        let connection = Connection {
            bucket,
            config,
            endpoint,
            region,
            force_path_style,
        };
        let log = Arc::new(PyLog::new(py));
        let opened = {
            let target = connection.target();
            Resolver::load(&target, SettingFlags::default(), Vec::new()).and_then(|mut resolver| {
                let progress = Arc::new(move |line: &str| {
                    log.line(walsync::Level::Warn, "retrying", None, line.to_string())
                });
                let storage = resolver.storage(&target, progress)?;
                Ok((resolver, storage))
            })
        };
        let (resolver, storage) = opened.map_err(|e| errors::to_py(py, e))?;
        Ok(Client {
            connection,
            resolver: Arc::new(resolver),
            storage,
        })
    }

    /// The replica's URL, without credentials.
    fn describe(&self) -> String {
        self.storage.describe()
    }

    /// Stores a level-9 snapshot of the database at `path` (after
    /// shipping its WAL); returns the snapshot's TXID.
    #[pyo3(signature = (path, name=None))]
    fn snapshot(&self, py: Python<'_>, path: PathBuf, name: Option<String>) -> PyResult<u64> {
        let (resolver, storage, log) =
            (self.resolver.clone(), self.storage.clone(), PyLog::new(py));
        blocking::run(py, None, move || {
            let (db, settings) = resolver.database(&path, name.as_deref())?;
            let mut shipper =
                walsync::Shipper::open(&db.path, &db.name, storage, settings, Arc::new(log))?;
            let id = shipper.snapshot_now(walsync::fsutil::now_ms())?;
            shipper.close()?;
            Ok(id.max_txid)
        })
    }

    /// Every database in the replica, as JSON (`walsync list --json`).
    fn list(&self, py: Python<'_>) -> PyResult<String> {
        let storage = self.storage.clone();
        blocking::run(py, None, move || {
            to_json(&walsync::summaries(storage.as_ref())?)
        })
    }

    /// Restores `name` into `output`; returns JSON: `{"outcome":
    /// "restored", "txid", "committed_ms", "files", "bytes"}`, or the
    /// outcome `output_exists` / `no_backups` when told to skip.
    #[pyo3(signature = (name, output, txid=None, point_in_time=None, force=false, if_db_not_exists=false, if_replica_exists=false, parallelism=8))]
    #[allow(clippy::too_many_arguments)]
    fn restore(
        &self,
        py: Python<'_>,
        name: String,
        output: PathBuf,
        txid: Option<u64>,
        point_in_time: Option<String>,
        force: bool,
        if_db_not_exists: bool,
        if_replica_exists: bool,
        parallelism: usize,
    ) -> PyResult<String> {
        let (resolver, storage, log) =
            (self.resolver.clone(), self.storage.clone(), PyLog::new(py));
        let cancel = CancelToken::new();
        let token = cancel.clone();
        blocking::run(py, Some(cancel), move || {
            let point_in_time_ms = point_in_time
                .as_deref()
                .map(walsync::fsutil::parse_rfc3339_ms)
                .transpose()?;
            if txid.is_some() && point_in_time_ms.is_some() {
                return Err(Error::Usage("use txid or point_in_time, not both".into()));
            }
            // A database path is checked against the replica's recorded
            // source, as the CLI checks it.
            let (name, output) = resolver.restore_target(storage.as_ref(), &name, Some(output))?;
            let options = RestoreOptions {
                name,
                output,
                txid,
                point_in_time_ms,
                force,
                if_db_not_exists,
                if_replica_exists,
                parallelism: parallelism.max(1),
                cancel: token,
            };
            let outcome = walsync::restore(storage.as_ref(), &options, &log)?;
            Ok(match outcome {
                RestoreOutcome::Restored {
                    txid,
                    committed_ms,
                    files,
                    bytes,
                    ..
                } => serde_json::json!({"outcome": "restored", "txid": txid,
                    "committed_ms": committed_ms, "files": files, "bytes": bytes}),
                RestoreOutcome::OutputExists => serde_json::json!({"outcome": "output_exists"}),
                RestoreOutcome::NoBackups => serde_json::json!({"outcome": "no_backups"}),
            }
            .to_string())
        })
    }

    /// Verifies `names` (every database when None); returns the reports as
    /// JSON, one per database.
    #[pyo3(signature = (names=None, parallelism=8))]
    fn verify(
        &self,
        py: Python<'_>,
        names: Option<Vec<String>>,
        parallelism: usize,
    ) -> PyResult<String> {
        let (resolver, storage) = (self.resolver.clone(), self.storage.clone());
        let cancel = CancelToken::new();
        let token = cancel.clone();
        blocking::run(py, Some(cancel), move || {
            let names = replica_names(&resolver, storage.as_ref(), names)?;
            let mut reports = Vec::new();
            walsync::verify_each(storage.as_ref(), &names, parallelism.max(1), &token, |r| {
                reports.push(r.clone());
                Ok(())
            })?;
            to_json(&reports)
        })
    }

    /// Compacts `names` (every database when None) by the config's
    /// `[retention]` (or the defaults); deletes only with `force`. Returns
    /// one report per database as JSON.
    #[pyo3(signature = (names=None, force=false, pitr_window=None, even_if_active=false))]
    fn compact(
        &self,
        py: Python<'_>,
        names: Option<Vec<String>>,
        force: bool,
        pitr_window: Option<f64>,
        even_if_active: bool,
    ) -> PyResult<String> {
        let (resolver, storage) = (self.resolver.clone(), self.storage.clone());
        let cancel = CancelToken::new();
        let token = cancel.clone();
        blocking::run(py, Some(cancel), move || {
            let mut retention = match &resolver.selection.config().retention {
                Some(section) => section.policy()?,
                None => walsync::compact::policy::Retention::default(),
            };
            if let Some(window) = seconds(pitr_window, "pitr_window")? {
                retention.pitr_window = window;
            }
            let mode = if force {
                walsync::compact::Mode::Apply
            } else {
                walsync::compact::Mode::DryRun
            };
            let now_ms = walsync::fsutil::now_ms();
            let mut reports = Vec::new();
            for name in replica_names(&resolver, storage.as_ref(), names)? {
                let mut tracked = walsync::compact::Tracked::list(storage.as_ref(), &name)?;
                if force && !even_if_active {
                    walsync::compact::refuse_if_active(
                        storage.as_ref(),
                        &name,
                        &mut tracked,
                        &retention,
                        now_ms,
                    )?;
                }
                let report = walsync::compact::pass(
                    storage.as_ref(),
                    &name,
                    &mut tracked,
                    &retention,
                    now_ms,
                    mode,
                    &token,
                )?;
                reports.push(report.to_json(mode));
            }
            to_json(&reports)
        })
    }

    /// Starts replicating `paths` (or the config's `[[databases]]`) on
    /// background threads; returns once every database is open.
    #[pyo3(signature = (paths, flags))]
    fn watch(&self, py: Python<'_>, paths: Vec<PathBuf>, flags: WatchFlags) -> PyResult<Watch> {
        Watch::start(py, &self.connection, paths, flags)
    }

    /// Follows `name` into the local database `local` (a read replica)
    /// on a background thread; returns once `local` holds its state.
    #[pyo3(signature = (name, local, interval=1.0, force=false))]
    fn replicate(
        &self,
        py: Python<'_>,
        name: String,
        local: PathBuf,
        interval: f64,
        force: bool,
    ) -> PyResult<Follow> {
        let options = self
            .follow_options(name, local, interval, force, false)
            .map_err(|e| errors::to_py(py, e))?;
        Follow::start(py, self.storage.clone(), options)
    }

    /// Brings the read replica `local` up to date once; returns its TXID.
    #[pyo3(signature = (name, local, force=false))]
    fn replicate_once(
        &self,
        py: Python<'_>,
        name: String,
        local: PathBuf,
        force: bool,
    ) -> PyResult<u64> {
        let options = self
            .follow_options(name, local, 1.0, force, true)
            .map_err(|e| errors::to_py(py, e))?;
        let (storage, log, cancel) = (self.storage.clone(), PyLog::new(py), options.cancel.clone());
        blocking::run(py, Some(cancel), move || {
            walsync::replica::follow(storage.as_ref(), &options, &log)?;
            Ok(options.status.get().0)
        })
    }
}

impl Client {
    fn follow_options(
        &self,
        name: String,
        local: PathBuf,
        interval: f64,
        force: bool,
        once: bool,
    ) -> walsync::Result<walsync::replica::FollowOptions> {
        Ok(walsync::replica::FollowOptions {
            name: self.resolver.replica_name(&name)?,
            local,
            interval: seconds(Some(interval), "interval")?.unwrap_or(Duration::from_secs(1)),
            once,
            force,
            cancel: CancelToken::new(),
            status: Arc::default(),
        })
    }
}

/// The replica names `names` give, or every database in the replica.
fn replica_names(
    resolver: &Resolver,
    storage: &dyn Storage,
    names: Option<Vec<String>>,
) -> walsync::Result<Vec<String>> {
    match names {
        Some(names) => names.iter().map(|n| resolver.replica_name(n)).collect(),
        None => walsync::list::database_names(storage),
    }
}
