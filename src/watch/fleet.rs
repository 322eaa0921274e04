//! The fleet: which databases `watch` replicates right now, and on which
//! poller. It opens the databases of the selection at start, looks again
//! every `discover_interval` (and at once when asked to reload the config)
//! for databases that appeared or left it, and routes requests of the
//! control channel to the poller that owns a database.
//!
//! Only databases given on the command line must be usable at start. A file
//! a config entry matches that cannot be replicated (empty, not SQLite, not
//! in WAL mode) is said once and looked at again at the next discovery;
//! the others replicate meanwhile.

use super::folders::{Changed, Folders};
use super::poller::{Command, Released};
use super::{Settings, Shipper};
use crate::error::{Error, Result};
use crate::event::{Event, EventSink};
use crate::glob::{lexically_absolute, Scope};
use crate::names::NamedDb;
use crate::selection::{absolute, Replicated, Running, Selection};
use crate::storage::Storage;
use crossbeam_channel::Sender;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The CPU time this thread has used.
fn thread_cpu() -> std::time::Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes to a local struct.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Where a database is replicated.
struct Placement {
    name: String,
    poller: usize,
    settings: Settings,
    /// The last rescan that found it under its name.
    /// (Atomic only so that `Fleet` can be shared while it opens the
    /// databases of the start in parallel.)
    seen: AtomicU64,
}

pub(super) struct Fleet {
    storage: Arc<dyn Storage>,
    pub selection: Selection,
    events: Arc<dyn EventSink>,
    replica: String,
    /// Every database a poller replicates, by absolute path.
    placed: HashMap<PathBuf, Placement>,
    /// The absolute path of each, by name: so that a rescan names a new
    /// database without going through every placement.
    by_name: HashMap<String, PathBuf>,
    /// How many databases each poller has.
    loads: Vec<usize>,
    /// What was last said about a path that could not be opened.
    refused: HashMap<PathBuf, String>,
    commands: Vec<Sender<Command>>,
    /// The folders whose entries decide what a rescan finds.
    folders: Folders,
    /// Whether the next rescan must look at everything (at start, after a
    /// reload, or a database released), and when one last did.
    full_due: bool,
    last_full: std::time::Instant,
    /// How many full rescans resolved the selection.
    generation: u64,
}

/// How often a rescan looks at everything, whatever the folders say: a
/// safety net under [`Folders`].
const FULL_RESCAN: std::time::Duration = std::time::Duration::from_secs(300);

/// What a rescan looks at.
enum Look {
    /// Nothing can have appeared.
    Nothing,
    /// Only these paths (absolute): entries that appeared, and databases
    /// refused before.
    Under(Vec<PathBuf>),
    Everything,
}

/// The databases placed, as a rescan asks about them; marks each one asked
/// about as seen by rescan `generation`.
struct Placed<'p> {
    placed: &'p HashMap<PathBuf, Placement>,
    by_name: &'p HashMap<String, PathBuf>,
    generation: u64,
}

impl<'p> Running<'p> for Placed<'p> {
    fn replicated(&self, key: &Path) -> Option<Replicated<'p>> {
        self.placed.get(key).map(|p| {
            p.seen.store(self.generation, Ordering::Relaxed);
            Replicated {
                name: &p.name,
                settings: &p.settings,
            }
        })
    }

    fn taken_by(&self, name: &str) -> Option<&'p Path> {
        self.by_name.get(name).map(PathBuf::as_path)
    }
}

impl Fleet {
    pub fn new(
        storage: Arc<dyn Storage>,
        selection: Selection,
        events: Arc<dyn EventSink>,
    ) -> Fleet {
        Fleet {
            replica: storage.describe(),
            storage,
            selection,
            events,
            placed: HashMap::new(),
            by_name: HashMap::new(),
            loads: Vec::new(),
            refused: HashMap::new(),
            commands: Vec::new(),
            folders: Folders::new(),
            full_due: true,
            last_full: std::time::Instant::now(),
            generation: 0,
        }
    }

    /// The databases of the selection, opened `threads` at a time and
    /// dealt into `pollers` shards. A given path that cannot be opened is
    /// an error; so are two databases with one name.
    pub fn open_initial(&mut self, pollers: usize, threads: usize) -> Result<Vec<Vec<Shipper>>> {
        let dbs = self.selection.resolve(&self.replica)?;
        let given: Vec<PathBuf> = self
            .selection
            .given_paths()
            .iter()
            .map(|p| absolute(p).into_owned())
            .collect();
        let opened = crate::pool::map(dbs, threads, |(db, settings)| {
            let result = self.open(&db, settings);
            (db, result)
        });
        self.loads = vec![0; pollers];
        let mut shards: Vec<Vec<Shipper>> = (0..pollers).map(|_| Vec::new()).collect();
        for (db, result) in opened {
            let key = absolute(&db.path).into_owned();
            match result {
                Ok(shipper) => {
                    let poller = self.least_loaded();
                    self.place(key, &db.name, shipper.settings().clone(), poller);
                    shards[poller].push(shipper);
                }
                Err(e) if given.contains(&key) => return Err(e),
                Err(e) => self.refuse(&db, e),
            }
        }
        Ok(shards)
    }

    /// Hands the pollers' command channels over once they run.
    pub fn connect(&mut self, commands: Vec<Sender<Command>>) {
        self.commands = commands;
    }

    pub fn len(&self) -> usize {
        self.placed.len()
    }

    /// Looks at the selection again: opens what appeared, releases what
    /// left it (a database renamed by a new config is released and opened
    /// under its new name).
    pub fn rediscover(&mut self) {
        let started = thread_cpu();
        let before = self.placed.len();
        let look = self.what_to_look_at();
        let looked_at = match &look {
            Look::Nothing => Some(0),
            Look::Under(paths) => Some(paths.len()),
            Look::Everything => None,
        };
        let appeared = match look {
            Look::Nothing => Vec::new(),
            Look::Under(paths) => self.rescan(Scope::Under(&paths)),
            Look::Everything => {
                self.folders.begin_full();
                self.full_due = false;
                let appeared = self.rescan(Scope::Everywhere);
                // A rescan that failed traced only part of the folders:
                // keep following them all until one succeeds.
                if !self.full_due {
                    self.folders.end_full();
                }
                self.last_full = std::time::Instant::now();
                appeared
            }
        };
        let scanned = thread_cpu();
        for (db, settings) in appeared {
            self.open_discovered(db, settings);
        }
        self.events.emit(Event::Rescanned {
            looked_at,
            databases: self.placed.len(),
            new: self.placed.len().saturating_sub(before),
            scan_cpu: scanned.saturating_sub(started),
            open_cpu: thread_cpu().saturating_sub(scanned),
        });
    }

    /// What the next rescan must look at: what appeared in the folders the
    /// selection depends on, and what was refused before (it may be usable
    /// now). Everything when a full rescan is due.
    fn what_to_look_at(&mut self) -> Look {
        let changed = self.folders.changes();
        if self.full_due || self.last_full.elapsed() >= FULL_RESCAN {
            return Look::Everything;
        }
        let mut paths = match changed {
            Changed::Unknown => return Look::Everything,
            Changed::Nothing => Vec::new(),
            Changed::Entries(entries) => entries,
        };
        paths.extend(self.refused.keys().map(|k| lexically_absolute(k)));
        if paths.is_empty() {
            Look::Nothing
        } else {
            Look::Under(paths)
        }
    }

    /// A reload or a release: the next rescan is a full one.
    pub fn rescan_fully(&mut self) {
        self.full_due = true;
    }

    /// Resolves the selection in `scope` again and returns the databases
    /// found there not replicated yet. A full rescan also asks the pollers
    /// to let go of what left the selection (what left a folder is noticed
    /// by its poller).
    fn rescan(&mut self, scope: Scope) -> Vec<(NamedDb, Settings)> {
        let full = matches!(scope, Scope::Everywhere);
        if full {
            self.generation += 1;
        }
        let running = Placed {
            placed: &self.placed,
            by_name: &self.by_name,
            generation: self.generation,
        };
        let folders = &mut self.folders;
        let mut trace = |dir: &Path| folders.depends_on(dir);
        let rescan = match self
            .selection
            .rescan(&self.replica, &running, scope, &mut trace)
        {
            Ok(rescan) => rescan,
            Err(e) => {
                self.report(format!("discovery: {e}; keeping the databases in use"));
                self.full_due = true;
                return Vec::new();
            }
        };
        let mut appeared = Vec::new();
        let mut renamed = 0;
        for (db, settings) in rescan.changed {
            let key = absolute(&db.path);
            match self.placed.get_mut(key.as_ref()) {
                None => appeared.push((db, settings)),
                // Renamed by a reloaded config: released first, then
                // opened under its new name by the next rescan.
                Some(p) if p.name != db.name => {
                    p.seen.store(0, Ordering::Relaxed);
                    renamed += 1;
                }
                Some(p) => {
                    p.settings = settings.clone();
                    let retune = Command::Retune {
                        key: key.into_owned(),
                        settings,
                    };
                    let _ = self.commands[p.poller].send(retune);
                }
            }
        }
        // Every database placed was found under its name, unless some
        // left or were renamed.
        let found_under_their_names = rescan.databases - appeared.len() - renamed;
        if full && found_under_their_names < self.placed.len() {
            self.release_unseen();
        }
        appeared
    }

    /// Asks the pollers to let go of the databases the last rescan did not
    /// find (under the same name).
    fn release_unseen(&self) {
        for (key, p) in &self.placed {
            if p.seen.load(Ordering::Relaxed) != self.generation {
                let _ = self.commands[p.poller].send(Command::Remove(key.clone()));
            }
        }
    }

    /// Opens a database a rescan found and hands it to the least loaded
    /// poller; one that cannot be opened is said once and tried again.
    fn open_discovered(&mut self, db: NamedDb, settings: Settings) {
        match self.open(&db, settings) {
            Ok(shipper) => {
                let poller = self.least_loaded();
                let settings = shipper.settings().clone();
                self.place(absolute(&db.path).into_owned(), &db.name, settings, poller);
                self.events.emit(Event::Discovered {
                    db: db.name.clone(),
                    path: db.path.clone(),
                });
                let _ = self.commands[poller].send(Command::Add(Box::new(shipper)));
            }
            Err(e) => self.refuse(&db, e),
        }
    }

    /// A poller let go of a database.
    pub fn released(&mut self, r: Released) {
        let (key, reason) = match r {
            Released::Gone(key) => (key, "its file is gone"),
            Released::Removed(key) => (key, "it left the configuration"),
        };
        self.rescan_fully();
        if let Some(p) = self.placed.remove(&key) {
            // Unless another database took the name since.
            if self.by_name.get(&p.name) == Some(&key) {
                self.by_name.remove(&p.name);
            }
            self.loads[p.poller] = self.loads[p.poller].saturating_sub(1);
            self.events.emit(Event::Released {
                db: p.name,
                reason: reason.to_string(),
            });
        }
    }

    /// Says something about the fleet as a whole.
    pub fn report(&self, error: String) {
        self.events.emit(Event::DiscoveryFailed { error });
    }

    /// Asks the poller replicating the database at `path` for a snapshot.
    pub fn snapshot(&self, path: &std::path::Path, reply: Sender<Result<u64, String>>) {
        match self.placed.get(absolute(path).as_ref()) {
            Some(p) => {
                let command = Command::Snapshot {
                    name: p.name.clone(),
                    reply,
                };
                let _ = self.commands[p.poller].send(command);
            }
            None => {
                let _ = reply.send(Err(format!(
                    "{} is not replicated by this watch",
                    path.display()
                )));
            }
        }
    }

    fn open(&self, db: &NamedDb, settings: Settings) -> Result<Shipper> {
        Shipper::open(
            &db.path,
            &db.name,
            Arc::clone(&self.storage),
            settings,
            Arc::clone(&self.events),
        )
    }

    fn place(&mut self, key: PathBuf, name: &str, settings: Settings, poller: usize) {
        self.refused.remove(&key);
        self.loads[poller] += 1;
        self.by_name.insert(name.to_string(), key.clone());
        self.placed.insert(
            key,
            Placement {
                name: name.to_string(),
                settings,
                poller,
                seen: AtomicU64::new(self.generation),
            },
        );
    }

    fn least_loaded(&self) -> usize {
        (0..self.loads.len())
            .min_by_key(|&i| self.loads[i])
            .unwrap_or(0)
    }

    /// Says once why a database is skipped; discovery tries it again.
    fn refuse(&mut self, db: &NamedDb, e: Error) {
        let key = absolute(&db.path).into_owned();
        let message = e.to_string();
        if self.refused.get(&key) != Some(&message) {
            self.events.emit(Event::Unavailable {
                db: db.name.clone(),
                error: format!("{message}; skipped, looked at again at the next discovery"),
            });
            self.refused.insert(key, message);
        }
    }
}
