//! Which databases to replicate, with their replica names and settings:
//! the paths given on the command line and the `[[databases]]` entries of
//! the config file (globs expanded), resolved by one rule for every
//! command and for every rediscovery while `watch` runs.
//!
//! Precedence of settings: a command-line flag wins over a `[[databases]]`
//! entry, which wins over `[sync]` of the config file, which wins over the
//! built-in defaults ([`Settings::default`]). Names follow [`crate::names`].

use crate::config::{ConfigFile, DatabaseEntry, Glob};
use crate::error::{Error, Result};
use crate::names::{self, Candidate, NamedDb, Naming};
use crate::watch::Settings;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Per-database settings given on the command line (`watch` only).
#[derive(Debug, Default, Clone)]
pub struct SettingFlags {
    pub sync_interval: Option<Duration>,
    pub snapshot_interval: Option<Duration>,
    pub min_checkpoint_pages: Option<u64>,
    pub truncate_checkpoint_pages: Option<u64>,
    /// `--takeover`: the databases named become their replicas' sources.
    pub takeover: bool,
}

/// The databases a configuration names.
#[derive(Debug)]
pub struct Selection {
    config: ConfigFile,
    config_path: Option<PathBuf>,
    flags: SettingFlags,
    paths: Vec<PathBuf>,
}

/// One database found, before naming.
struct Found {
    path: PathBuf,
    /// The absolute path: what identifies the file.
    key: PathBuf,
    naming: Naming,
    settings: Settings,
}

impl Selection {
    /// The config file at `config_path` (none: an empty configuration), the
    /// command line's setting flags and database paths.
    pub fn load(
        config_path: Option<&Path>,
        flags: SettingFlags,
        paths: Vec<PathBuf>,
    ) -> Result<Selection> {
        let config = match config_path {
            Some(p) => ConfigFile::load(p)?,
            None => ConfigFile::default(),
        };
        Ok(Selection {
            config,
            config_path: config_path.map(Path::to_path_buf),
            flags,
            paths,
        })
    }

    /// Reads the config file again (on SIGHUP). On an error the selection
    /// stays as it was.
    pub fn reload(&mut self) -> Result<()> {
        if let Some(p) = &self.config_path {
            self.config = ConfigFile::load(p)?;
        }
        Ok(())
    }

    pub fn config(&self) -> &ConfigFile {
        &self.config
    }

    /// The paths given on the command line: they must be usable at start.
    pub fn given_paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// The settings of a database: flags, then its entry, then `[sync]`,
    /// then the defaults.
    pub fn settings(&self, entry: Option<&DatabaseEntry>) -> Settings {
        let d = Settings::default();
        let sync = &self.config.sync;
        let f = &self.flags;
        let duration = |flag: Option<Duration>, e: Option<Duration>, s: Option<Duration>, d| {
            flag.or(e).or(s).unwrap_or(d)
        };
        Settings {
            sync_interval: duration(
                f.sync_interval,
                entry.and_then(|e| e.sync_interval).map(|v| v.0),
                sync.sync_interval.map(|v| v.0),
                d.sync_interval,
            ),
            snapshot_interval: duration(
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
            takeover: f.takeover,
        }
    }

    /// Every database named now, for replica `replica` (the URL, which
    /// decides which kept names apply): the given paths, then the files the
    /// config entries match now, each once. A glob that matches nothing, or
    /// a config path that does not exist, contributes nothing (discovery
    /// looks again later). Two databases with one name: a usage error.
    pub fn resolve(&self, replica: &str) -> Result<Vec<(NamedDb, Settings)>> {
        self.resolve_with(replica, &[])
    }

    fn resolve_with(&self, replica: &str, extra: &[PathBuf]) -> Result<Vec<(NamedDb, Settings)>> {
        let mut found: Vec<Found> = Vec::new();
        for path in self.paths.iter().chain(extra) {
            let f = Found::new(path.clone(), Naming::Path, self.settings(None));
            if !found.iter().any(|g| g.key == f.key) {
                found.push(f);
            }
        }
        for entry in &self.config.databases {
            for f in self.expand(entry)? {
                // A file named on the command line and in the config is one
                // database, with the entry's name and settings.
                match found.iter_mut().find(|g| g.key == f.key) {
                    Some(seen) => *seen = f,
                    None => found.push(f),
                }
            }
        }
        let candidates: Vec<Candidate> = found
            .iter()
            .map(|f| Candidate {
                path: f.key.clone(),
                naming: f.naming.clone(),
                kept: crate::watch::kept_name(&f.path, replica),
            })
            .collect();
        let names = names::assign(&candidates)?;
        Ok(found
            .into_iter()
            .zip(names)
            .map(|(f, name)| (NamedDb { path: f.path, name }, f.settings))
            .collect())
    }

    /// The files a `[[databases]]` entry names now.
    fn expand(&self, entry: &DatabaseEntry) -> Result<Vec<Found>> {
        let glob = Glob::new(&entry.path);
        let settings = self.settings(Some(entry));
        if !glob.has_wildcards() {
            let path = PathBuf::from(&entry.path);
            if !path.exists() {
                return Ok(Vec::new());
            }
            let naming = match &entry.name {
                Some(n) => Naming::Given {
                    name: n.clone(),
                    captures: None,
                },
                None => Naming::Path,
            };
            return Ok(vec![Found::new(path, naming, settings)]);
        }
        let matched = glob.expand();
        let fixed_name = entry
            .name
            .as_deref()
            .filter(|n| !n.contains('{') && matched.len() > 1);
        if let Some(n) = fixed_name {
            return Err(Error::Usage(format!(
                "config entry '{}' gives the one name '{n}' to the {} files it matches; use a template such as \"tenants/{{1}}\" ({{1}} is what the first wildcard matched)",
                entry.path,
                matched.len()
            )));
        }
        Ok(matched
            .into_iter()
            .filter_map(|path| {
                let captures = glob.captures(&path)?;
                let naming = match &entry.name {
                    Some(n) => Naming::Given {
                        name: n.clone(),
                        captures: Some(captures),
                    },
                    None => Naming::Glob(captures),
                };
                Some(Found::new(path, naming, settings.clone()))
            })
            .collect())
    }

    /// The one database `path` (the `snapshot` command), named as `watch`
    /// with the same configuration names it, unless `name` is given.
    pub fn database(
        &self,
        path: &Path,
        name: Option<&str>,
        replica: &str,
    ) -> Result<(NamedDb, Settings)> {
        if let Some(n) = name {
            names::validate(n)?;
        }
        let key = absolute(path);
        let (mut db, settings) = self
            .resolve_with(replica, &[path.to_path_buf()])?
            .into_iter()
            .find(|(db, _)| absolute(&db.path) == key)
            .ok_or_else(|| Error::Other(format!("{} was not resolved", path.display())))?;
        if let Some(n) = name {
            db.name = n.to_string();
        }
        Ok((db, settings))
    }

    /// A replica name given to `restore` or `verify`: a database file's path
    /// (named as `watch` with the same configuration names it) or a name.
    pub fn replica_name(&self, arg: &str, replica: &str) -> Result<String> {
        let path = Path::new(arg);
        if path.is_file() {
            return Ok(self.database(path, None, replica)?.0.name);
        }
        // The empty name is a database at the replica's root.
        if !arg.is_empty() {
            names::validate(arg)?;
        }
        Ok(arg.to_string())
    }
}

impl Found {
    fn new(path: PathBuf, naming: Naming, settings: Settings) -> Found {
        Found {
            key: absolute(&path),
            path,
            naming,
            settings,
        }
    }
}

/// The absolute path of a file (symbolic links resolved where it exists).
pub fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}
