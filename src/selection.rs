//! Which databases to replicate, with their replica names and settings:
//! the paths given on the command line and the `[[databases]]` entries of
//! the config file (globs expanded), resolved by one rule for every
//! command and for every rediscovery while `watch` runs.
//!
//! Precedence of settings: a command-line flag wins over a `[[databases]]`
//! entry, which wins over `[sync]` of the config file, which wins over the
//! built-in defaults ([`Settings::default`]). Names follow [`crate::names`].

use crate::config::{ConfigFile, DatabaseEntry};
use crate::error::{Error, Result};
use crate::glob::{Glob, Scope};
use crate::names::{self, Candidate, NamedDb, Naming};
use crate::watch::Settings;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Per-database settings given on the command line (`watch` only).
#[derive(Debug, Default, Clone)]
pub struct SettingFlags {
    pub sync_interval: Option<Duration>,
    pub snapshot_interval: Option<Duration>,
    pub snapshot_max_changes: Option<u64>,
    pub snapshot_on_idle: Option<Duration>,
    pub snapshot_max_interval: Option<Duration>,
    pub min_checkpoint_pages: Option<u64>,
    pub truncate_checkpoint_pages: Option<u64>,
    pub validation_interval: Option<Duration>,
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

/// How a running `watch` replicates a database.
#[derive(Debug, Clone, Copy)]
pub struct Replicated<'k> {
    pub name: &'k str,
    pub settings: &'k Settings,
}

/// What a running `watch` replicates, as a rescan asks it.
pub trait Running<'k> {
    /// How the database at the absolute path `key` is replicated now, if
    /// it is.
    fn replicated(&self, key: &Path) -> Option<Replicated<'k>>;
    /// The absolute path of the database replicated under `name` now.
    fn taken_by(&self, name: &str) -> Option<&'k Path>;
}

/// Nothing running: every database is resolved from scratch.
struct Nothing;

impl<'k> Running<'k> for Nothing {
    fn replicated(&self, _: &Path) -> Option<Replicated<'k>> {
        None
    }
    fn taken_by(&self, _: &str) -> Option<&'k Path> {
        None
    }
}

/// What [`Selection::rescan`] found.
pub struct Rescan {
    /// How many databases the selection has now.
    pub databases: usize,
    /// Those of them not replicated under their name and settings now:
    /// new ones, and those a reloaded config renamed or retuned.
    pub changed: Vec<(NamedDb, Settings)>,
}

/// The databases named now.
struct Resolution<'k> {
    /// The settings of each source of databases: the paths given first,
    /// then each `[[databases]]` entry.
    settings: Vec<Settings>,
    /// Each database once, named.
    found: Vec<Found<'k>>,
}

/// One database found. Kept small: a rescan makes one per database.
struct Found<'k> {
    path: PathBuf,
    /// The absolute path, what identifies the file, when `path` is not.
    other_key: Option<Box<Path>>,
    /// How the rule names it; `None`: by its path.
    naming: Option<Box<Naming>>,
    /// Where its settings are in [`Resolution::settings`].
    source: usize,
    /// How a running `watch` replicates it now.
    replicated: Option<Replicated<'k>>,
    /// Its name, once named; `None` while it keeps the one it is
    /// replicated under.
    name: Option<String>,
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

    /// Whether any database may be validated in the background (a
    /// `validation_interval` in a flag, `[sync]` or an entry).
    pub fn validates_any(&self) -> bool {
        let on = |d: Option<Duration>| d.is_some_and(|d| !d.is_zero());
        on(self.flags.validation_interval)
            || on(self.config.sync.validation_interval.map(|v| v.0))
            || self
                .config
                .databases
                .iter()
                .any(|e| on(e.validation_interval.map(|v| v.0)))
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
            snapshot_max_changes: f
                .snapshot_max_changes
                .or(entry.and_then(|e| e.snapshot_max_changes))
                .or(sync.snapshot_max_changes)
                .unwrap_or(d.snapshot_max_changes),
            snapshot_on_idle: duration(
                f.snapshot_on_idle,
                entry.and_then(|e| e.snapshot_on_idle).map(|v| v.0),
                sync.snapshot_on_idle.map(|v| v.0),
                d.snapshot_on_idle,
            ),
            snapshot_max_interval: duration(
                f.snapshot_max_interval,
                entry.and_then(|e| e.snapshot_max_interval).map(|v| v.0),
                sync.snapshot_max_interval.map(|v| v.0),
                d.snapshot_max_interval,
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
            validation_interval: duration(
                f.validation_interval,
                entry.and_then(|e| e.validation_interval).map(|v| v.0),
                sync.validation_interval.map(|v| v.0),
                d.validation_interval,
            ),
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

    /// What a rescan while `watch` runs finds among the paths `scope`
    /// reaches, `running` saying which databases are replicated now, under
    /// which name and settings. Their names are kept without reading their
    /// local state again or naming them again, so a rescan costs little per
    /// known database and reads no file of its own. `trace` hears of the
    /// folders whose entries decide the result (see [`Glob::expand_known`]).
    pub fn rescan<'k>(
        &self,
        replica: &str,
        running: &dyn Running<'k>,
        scope: Scope,
        trace: &mut dyn FnMut(&Path),
    ) -> Result<Rescan> {
        let resolution = self.resolution(replica, &[], running, scope, trace)?;
        let databases = resolution.found.len();
        let changed = resolution
            .found
            .into_iter()
            .filter(|f| !f.replicated_as_resolved(&resolution.settings))
            .filter_map(|f| f.into_named(&resolution.settings))
            .collect();
        Ok(Rescan { databases, changed })
    }

    /// Every database named now (and `extra` paths), resolved from
    /// scratch: nothing is known to be replicated.
    fn resolve_with(&self, replica: &str, extra: &[PathBuf]) -> Result<Vec<(NamedDb, Settings)>> {
        let resolution =
            self.resolution(replica, extra, &Nothing, Scope::Everywhere, &mut |_| {})?;
        Ok(resolution
            .found
            .into_iter()
            .filter_map(|f| f.into_named(&resolution.settings))
            .collect())
    }

    /// The databases named now in `scope`, each once, with their names.
    fn resolution<'k>(
        &self,
        replica: &str,
        extra: &[PathBuf],
        running: &dyn Running<'k>,
        scope: Scope,
        trace: &mut dyn FnMut(&Path),
    ) -> Result<Resolution<'k>> {
        let known = |key: &Path| running.replicated(key);
        let mut settings = vec![self.settings(None)];
        let mut found: Vec<Found> = Vec::new();
        for path in self.paths.iter().chain(extra) {
            if scope.reaches(path) {
                found.push(Found::new(path.clone(), None, 0, &known));
            }
        }
        for entry in &self.config.databases {
            settings.push(self.settings(Some(entry)));
            self.expand(entry, settings.len() - 1, &known, scope, trace, &mut found)?;
        }
        let mut found = one_per_file(found);
        // Rule 2 for the databases replicated now: nothing to work out.
        let to_name: Vec<usize> = (0..found.len())
            .filter(|&i| !found[i].keeps_its_name())
            .collect();
        if !to_name.is_empty() {
            // Names are unique across all databases, not only those in
            // scope: the others replicated now keep theirs.
            let elsewhere = match scope {
                Scope::Everywhere => None,
                Scope::Under(_) => Some(running),
            };
            let names = name_among(&found, &to_name, elsewhere, replica)?;
            for (i, name) in to_name.into_iter().zip(names) {
                found[i].name = Some(name);
            }
        }
        Ok(Resolution { settings, found })
    }

    /// Adds the files a `[[databases]]` entry names now to `found`;
    /// `source` is the entry's place in the settings of the resolution.
    fn expand<'k>(
        &self,
        entry: &DatabaseEntry,
        source: usize,
        known: &dyn Fn(&Path) -> Option<Replicated<'k>>,
        scope: Scope,
        trace: &mut dyn FnMut(&Path),
        found: &mut Vec<Found<'k>>,
    ) -> Result<()> {
        let glob = Glob::new(&entry.path);
        if !glob.has_wildcards() {
            let path = PathBuf::from(&entry.path);
            if !scope.reaches(&path) {
                return Ok(());
            }
            if !path.exists() {
                // Looked at again once its folder is traced, so that a
                // file created in between is not missed.
                if let Some(dir) = path.parent() {
                    trace(dir);
                }
                if !path.exists() {
                    return Ok(());
                }
            }
            let naming = entry.name.as_ref().map(|n| {
                Box::new(Naming::Given {
                    name: n.clone(),
                    captures: None,
                })
            });
            found.push(Found::new(path, naming, source, known));
            return Ok(());
        }
        let known_at = |p: &Path| known(&absolute(p));
        let matched = glob.expand_known(&known_at, scope, trace);
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
        found.reserve(matched.len());
        for (path, answer) in matched {
            let mut f = match answer {
                Some(r) => Found::at(path, None, source, Some(r)),
                None => Found::new(path, None, source, known),
            };
            // A known database keeps its name (rule 2) unless the entry
            // gives one: no need to match it again.
            if entry.name.is_none() && f.replicated.is_some() {
                found.push(f);
                continue;
            }
            let Some(captures) = glob.captures(&f.path) else {
                continue;
            };
            f.naming = Some(Box::new(match &entry.name {
                Some(n) => Naming::Given {
                    name: n.clone(),
                    captures: Some(captures),
                },
                None => Naming::Glob(captures),
            }));
            found.push(f);
        }
        Ok(())
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
        Ok(self.database_arg(arg, replica)?.name().to_string())
    }

    /// What a command's database argument names: a database by its path
    /// (an existing file, an absolute path, or a path a `[[databases]]`
    /// entry matches, whether or not the file exists now), else a replica
    /// name.
    pub fn database_arg(&self, arg: &str, replica: &str) -> Result<DatabaseArg> {
        let path = Path::new(arg);
        if path.is_file() {
            let name = self.database(path, None, replica)?.0.name;
            return Ok(DatabaseArg::Path {
                name,
                path: path.to_path_buf(),
            });
        }
        if let Some(name) = self.name_for_missing(path, replica)? {
            return Ok(DatabaseArg::Path {
                name,
                path: path.to_path_buf(),
            });
        }
        // The empty name is a database at the replica's root.
        if !arg.is_empty() {
            names::validate(arg)?;
        }
        Ok(DatabaseArg::Name(arg.to_string()))
    }

    /// The name `watch` with this configuration would give a database at
    /// `path` that does not exist now (restore after a loss): its entry's
    /// name or template (rule 1), the name its local state kept if that
    /// is still there (rule 2), the glob's rule (3) or the stem (4). An
    /// absolute path no entry matches is named by its stem, as `watch
    /// PATH` names it. None: a relative path nothing matches (a name).
    fn name_for_missing(&self, path: &Path, replica: &str) -> Result<Option<String>> {
        let key = absolute(path).into_owned();
        // The last entry that matches wins, as in `watch` (one_per_file).
        let matched = self.config.databases.iter().rev().find_map(|entry| {
            let glob = Glob::new(&absolute(Path::new(&entry.path)).to_string_lossy());
            if glob.has_wildcards() {
                let captures = glob.captures(&key)?;
                return Some(match &entry.name {
                    Some(n) => Naming::Given {
                        name: n.clone(),
                        captures: Some(captures),
                    },
                    None => Naming::Glob(captures),
                });
            }
            if absolute(Path::new(&entry.path)) != key {
                return None;
            }
            Some(match &entry.name {
                Some(n) => Naming::Given {
                    name: n.clone(),
                    captures: None,
                },
                None => Naming::Path,
            })
        });
        let naming = match matched {
            Some(naming) => naming,
            None if path.is_absolute() => Naming::Path,
            None => return Ok(None),
        };
        let candidate = Candidate {
            kept: crate::watch::kept_name(&key, replica),
            path: key,
            naming,
        };
        Ok(names::assign(&[candidate])?.pop())
    }
}

/// What a database argument names (see [`Selection::database_arg`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseArg {
    /// A database by its path, and the name `watch` gives it.
    Path { name: String, path: PathBuf },
    /// A replica name.
    Name(String),
}

impl DatabaseArg {
    pub fn name(&self) -> &str {
        match self {
            DatabaseArg::Path { name, .. } | DatabaseArg::Name(name) => name,
        }
    }
}

impl<'k> Found<'k> {
    /// A database, replicated now as `known` answers for it, if at all.
    fn new(
        path: PathBuf,
        naming: Option<Box<Naming>>,
        source: usize,
        known: &dyn Fn(&Path) -> Option<Replicated<'k>>,
    ) -> Found<'k> {
        let mut found = Found::at(path, naming, source, None);
        found.replicated = known(found.key());
        found
    }

    fn at(
        path: PathBuf,
        naming: Option<Box<Naming>>,
        source: usize,
        replicated: Option<Replicated<'k>>,
    ) -> Found<'k> {
        let other_key = match absolute(&path) {
            Cow::Borrowed(_) => None,
            Cow::Owned(key) => Some(key.into_boxed_path()),
        };
        Found {
            path,
            other_key,
            naming,
            source,
            replicated,
            name: None,
        }
    }

    /// What identifies the file: its absolute path.
    fn key(&self) -> &Path {
        self.other_key.as_deref().unwrap_or(&self.path)
    }

    /// Rule 2 for a database replicated now: the name it has stays, unless
    /// its entry gives one.
    fn keeps_its_name(&self) -> bool {
        self.replicated.is_some() && !matches!(self.naming.as_deref(), Some(Naming::Given { .. }))
    }

    /// Whether it is replicated now under the name and with the settings
    /// the resolution gives it.
    fn replicated_as_resolved(&self, settings: &[Settings]) -> bool {
        self.replicated.is_some_and(|r| {
            self.name.as_deref().is_none_or(|name| name == r.name)
                && r.settings == &settings[self.source]
        })
    }

    /// The database with its name and settings (`None` if it has no name,
    /// which a resolution never leaves).
    fn into_named(self, settings: &[Settings]) -> Option<(NamedDb, Settings)> {
        let name = match self.name {
            Some(name) => name,
            None => self.replicated?.name.to_string(),
        };
        let db = NamedDb {
            path: self.path,
            name,
        };
        Some((db, settings[self.source].clone()))
    }
}

/// Names the databases at `indices` of `found` by the rule, beside the
/// others (which keep the names they are replicated under).
fn name_among<'k>(
    found: &[Found<'k>],
    indices: &[usize],
    elsewhere: Option<&dyn Running<'k>>,
    replica: &str,
) -> Result<Vec<String>> {
    let keepers: HashMap<&str, &Path> = found
        .iter()
        .filter(|f| f.keeps_its_name())
        .filter_map(|f| Some((f.replicated?.name, f.key())))
        .collect();
    // A database named again (its entry gives it a name) frees the one it
    // is replicated under.
    let renamed: Vec<&Path> = indices.iter().map(|&i| found[i].key()).collect();
    let in_use = |name: &str| -> Option<PathBuf> {
        let owner = keepers
            .get(name)
            .copied()
            .or_else(|| elsewhere?.taken_by(name).filter(|p| !renamed.contains(p)))?;
        Some(owner.to_path_buf())
    };
    let candidates: Vec<Candidate> = indices
        .iter()
        .map(|&i| {
            let f = &found[i];
            Candidate {
                path: f.key().to_path_buf(),
                naming: f.naming.as_deref().cloned().unwrap_or(Naming::Path),
                kept: f
                    .replicated
                    .map(|r| r.name.to_string())
                    .or_else(|| crate::watch::kept_name(&f.path, replica)),
            }
        })
        .collect();
    names::assign_among(&candidates, &in_use)
}

/// Each file once, in the order of their absolute paths: a config entry
/// wins over a path given on the command line (which comes first), a
/// later entry over an earlier one.
fn one_per_file(mut found: Vec<Found>) -> Vec<Found> {
    // Usually so already (one glob, whose matches come sorted): one pass.
    if found
        .windows(2)
        .all(|w| w[0].key().as_os_str() < w[1].key().as_os_str())
    {
        return found;
    }
    // Stable: a file's entries stay in the order they were given.
    found.sort_by(|a, b| a.key().as_os_str().cmp(b.key().as_os_str()));
    // `dedup_by` keeps the first of a run: swapping keeps the last given.
    found.dedup_by(|later, kept| {
        let same = later.key().as_os_str() == kept.key().as_os_str();
        if same {
            std::mem::swap(later, kept);
        }
        same
    });
    found
}

/// What identifies a database file: its absolute path, without `.`
/// components. A relative path is resolved against the current folder
/// (symbolic links too); an absolute one is taken as written, so a
/// rescan over thousands of databases makes no system call for it.
pub fn absolute(p: &Path) -> Cow<'_, Path> {
    if p.is_absolute() {
        let bytes = p.as_os_str().as_encoded_bytes();
        // Only `//`, `/./` and a trailing `/.` make it unclean.
        let clean = !bytes.windows(2).enumerate().any(|(i, w)| {
            w == b"//" || (w == b"/." && matches!(bytes.get(i + 2), None | Some(b'/')))
        });
        if clean {
            return Cow::Borrowed(p);
        }
        Cow::Owned(
            p.components()
                .filter(|c| !matches!(c, std::path::Component::CurDir))
                .collect(),
        )
    } else {
        let resolved = std::fs::canonicalize(p)
            .or_else(|_| std::env::current_dir().map(|d| d.join(p)))
            .unwrap_or_else(|_| p.to_path_buf());
        Cow::Owned(resolved)
    }
}
