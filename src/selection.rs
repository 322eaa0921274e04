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
use std::collections::HashMap;
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
        self.resolve_with(replica, &[], &|_| None, &mut Vec::new())
    }

    /// [`Selection::resolve`] while `known` databases (absolute path →
    /// its name, if replicated) are replicated: their names are kept without
    /// reading their local state again, so a rescan reads no file per known
    /// database.
    /// `trace` gets the folders whose entries decided the result (see
    /// [`Glob::expand_known`]).
    pub fn resolve_known(
        &self,
        replica: &str,
        known: &dyn Fn(&Path) -> Option<String>,
        trace: &mut Vec<PathBuf>,
    ) -> Result<Vec<(NamedDb, Settings)>> {
        self.resolve_with(replica, &[], known, trace)
    }

    fn resolve_with(
        &self,
        replica: &str,
        extra: &[PathBuf],
        known: &dyn Fn(&Path) -> Option<String>,
        trace: &mut Vec<PathBuf>,
    ) -> Result<Vec<(NamedDb, Settings)>> {
        let mut found: Vec<Found> = Vec::new();
        let mut at: HashMap<PathBuf, usize> = HashMap::new();
        let mut add = |f: Found, replace: bool| match at.get(&f.key) {
            Some(&i) if replace => found[i] = f,
            Some(_) => {}
            None => {
                at.insert(f.key.clone(), found.len());
                found.push(f);
            }
        };
        for path in self.paths.iter().chain(extra) {
            add(
                Found::new(path.clone(), Naming::Path, self.settings(None)),
                false,
            );
        }
        let is_known = |p: &Path| known(&absolute(p)).is_some();
        for entry in &self.config.databases {
            for f in self.expand(entry, &is_known, trace)? {
                // A file named on the command line and in the config is one
                // database, with the entry's name and settings.
                add(f, true);
            }
        }
        let candidates: Vec<Candidate> = found
            .iter()
            .map(|f| Candidate {
                path: f.key.clone(),
                naming: f.naming.clone(),
                kept: known(&f.key).or_else(|| crate::watch::kept_name(&f.path, replica)),
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
    fn expand(
        &self,
        entry: &DatabaseEntry,
        known: &dyn Fn(&Path) -> bool,
        trace: &mut Vec<PathBuf>,
    ) -> Result<Vec<Found>> {
        let glob = Glob::new(&entry.path);
        let settings = self.settings(Some(entry));
        if !glob.has_wildcards() {
            let path = PathBuf::from(&entry.path);
            if !path.exists() {
                if let Some(dir) = path.parent() {
                    trace.push(dir.to_path_buf());
                }
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
        let matched = glob.expand_known(known, trace);
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
                // A known database keeps its name (rule 2) unless the entry
                // gives one: no need to match it again.
                if entry.name.is_none() && known(&path) {
                    return Some(Found::new(path, Naming::Path, settings.clone()));
                }
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
            .resolve_with(replica, &[path.to_path_buf()], &|_| None, &mut Vec::new())?
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

/// What identifies a database file: its absolute path, without `.`
/// components. A relative path is resolved against the current folder
/// (symbolic links too); an absolute one is taken as written, so a
/// rescan over thousands of databases makes no system call for it.
pub fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        let bytes = p.as_os_str().as_encoded_bytes();
        let clean = !bytes.windows(3).any(|w| w == b"/./")
            && !bytes.ends_with(b"/.")
            && !bytes.windows(2).any(|w| w == b"//");
        if clean {
            return p.to_path_buf();
        }
        p.components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect()
    } else {
        std::fs::canonicalize(p)
            .or_else(|_| std::env::current_dir().map(|d| d.join(p)))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}
