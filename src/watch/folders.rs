//! The folders discovery depends on, and what appeared in them since it
//! last looked: so that a rescan among thousands of replicated databases
//! looks only at the entries that are new, not at every tenant again.
//!
//! Two witnesses, because either alone can miss a change:
//! - the kernel (inotify) names each entry created in, or moved into, a
//!   folder;
//! - the folder's modification time, taken before its entries were read,
//!   says that something changed. A change the kernel did not report (a
//!   file system inotify does not follow, a full event queue, a folder that
//!   went away) makes the next rescan a full one.
//!
//! Invariant: every folder a rescan read is watched (and its time taken)
//! *before* the rescan read it, so a change after the read is seen next
//! time, by one witness or the other.

use super::inotify::Inotify;
use crate::glob::lexically_absolute;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What changed in the folders since [`Folders::changes`] was last asked.
#[derive(Debug, PartialEq, Eq)]
pub enum Changed {
    /// Nothing any rescan depends on.
    Nothing,
    /// These entries (absolute paths) appeared; nothing else is known to
    /// have changed.
    Entries(Vec<PathBuf>),
    /// Something changed that the kernel did not name: look at everything.
    Unknown,
}

/// One folder a rescan depends on.
struct Folder {
    /// Its inotify watch, if it has one.
    watch: Option<i32>,
    /// Its modification time before its entries were last read.
    modified: Option<SystemTime>,
    /// The last full rescan that depended on it.
    generation: u64,
}

pub struct Folders {
    inotify: Option<Inotify>,
    /// By absolute path.
    folders: HashMap<PathBuf, Folder>,
    /// The folder of each watch.
    watched: HashMap<i32, PathBuf>,
    /// The full rescan under way, or the last one.
    generation: u64,
}

impl Folders {
    /// Without inotify, only modification times are compared (and every
    /// change means a full rescan).
    pub fn new() -> Folders {
        Folders {
            inotify: Inotify::new(),
            folders: HashMap::new(),
            watched: HashMap::new(),
            generation: 0,
        }
    }

    /// A full rescan starts: the folders it depends on replace the
    /// current ones once it [ends](Folders::end_full).
    pub fn begin_full(&mut self) {
        self.generation += 1;
    }

    /// Stops following the folders the full rescan that just ended did not
    /// depend on.
    pub fn end_full(&mut self) {
        let generation = self.generation;
        let stale: Vec<PathBuf> = self
            .folders
            .iter()
            .filter(|(_, f)| f.generation != generation)
            .map(|(dir, _)| dir.clone())
            .collect();
        for dir in stale {
            self.forget(&dir);
        }
    }

    /// A rescan is about to read the entries of `dir`.
    pub fn depends_on(&mut self, dir: &Path) {
        let dir = lexically_absolute(dir);
        let modified = modified(&dir);
        let generation = self.generation;
        if let Some(f) = self.folders.get_mut(&dir) {
            f.modified = modified;
            f.generation = generation;
            return;
        }
        let watch = self.watch(&dir);
        if let Some(wd) = watch {
            self.watched.insert(wd, dir.clone());
        }
        let folder = Folder {
            watch,
            modified,
            generation,
        };
        self.folders.insert(dir, folder);
    }

    /// What appeared since the last call: the kernel's events first, then
    /// one `stat` per folder for what they may have missed.
    pub fn changes(&mut self) -> Changed {
        let mut entries = Vec::new();
        let mut reported: Vec<PathBuf> = Vec::new();
        let mut unknown = !self.read_events(&mut entries, &mut reported);
        for (dir, folder) in &mut self.folders {
            let now = modified(dir);
            if now != folder.modified {
                folder.modified = now;
                unknown |= folder.watch.is_none() || !reported.contains(dir);
            }
        }
        if unknown {
            Changed::Unknown
        } else if entries.is_empty() {
            Changed::Nothing
        } else {
            entries.sort();
            entries.dedup();
            Changed::Entries(entries)
        }
    }

    /// Adds an inotify watch for `dir`: entries created, deleted or moved,
    /// and the folder itself deleted or moved.
    fn watch(&self, dir: &Path) -> Option<i32> {
        let mask = libc::IN_CREATE
            | libc::IN_MOVED_TO
            | libc::IN_DELETE
            | libc::IN_MOVED_FROM
            | libc::IN_DELETE_SELF
            | libc::IN_MOVE_SELF
            | libc::IN_ONLYDIR;
        self.inotify.as_ref()?.add(dir, mask)
    }

    fn forget(&mut self, dir: &Path) {
        let Some(folder) = self.folders.remove(dir) else {
            return;
        };
        if let (Some(wd), Some(inotify)) = (folder.watch, &self.inotify) {
            self.watched.remove(&wd);
            inotify.remove(wd);
        }
    }

    /// Reads the kernel's events: the entries that appeared, into
    /// `entries`, and the folders that changed, into `reported`.
    /// `false` when the kernel lost some or a folder went away.
    fn read_events(&mut self, entries: &mut Vec<PathBuf>, reported: &mut Vec<PathBuf>) -> bool {
        let Some(inotify) = &mut self.inotify else {
            return true;
        };
        let mut complete = true;
        let mut gone = Vec::new();
        let watched = &self.watched;
        inotify.drain(|event| {
            if event.mask & libc::IN_Q_OVERFLOW != 0 {
                complete = false;
                return;
            }
            let Some(dir) = watched.get(&event.wd) else {
                return;
            };
            if event.mask & (libc::IN_DELETE_SELF | libc::IN_MOVE_SELF | libc::IN_IGNORED) != 0 {
                gone.push(dir.clone());
                complete = false;
            } else {
                // An entry that left needs no look (its poller notices a
                // database gone), but it explains the folder's new time.
                if event.mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0 {
                    entries.push(dir.join(event.name));
                }
                reported.push(dir.clone());
            }
        });
        for dir in gone {
            self.forget(&dir);
        }
        complete
    }
}

fn modified(dir: &Path) -> Option<SystemTime> {
    std::fs::metadata(dir).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_appeared_and_goes_full_when_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tenants");
        std::fs::create_dir(&root).unwrap();
        let mut folders = Folders::new();
        folders.begin_full();
        folders.depends_on(&root);
        folders.end_full();
        assert_eq!(folders.changes(), Changed::Nothing);

        std::fs::create_dir(root.join("t1")).unwrap();
        std::fs::write(root.join("t1.tmp"), b"").unwrap();
        std::fs::rename(root.join("t1.tmp"), root.join("t2")).unwrap();
        // Each name that appeared, whether or not it is still there.
        assert_eq!(
            folders.changes(),
            Changed::Entries(vec![root.join("t1"), root.join("t1.tmp"), root.join("t2")])
        );
        assert_eq!(folders.changes(), Changed::Nothing);

        // An entry that left explains the folder's new time: nothing to do.
        std::fs::remove_dir(root.join("t1")).unwrap();
        assert_eq!(folders.changes(), Changed::Nothing);

        // A folder depended on that goes away: the kernel cannot say what
        // else moved; look at everything.
        std::fs::remove_file(root.join("t2")).unwrap();
        std::fs::remove_dir(&root).unwrap();
        assert_eq!(folders.changes(), Changed::Unknown);
        // And it is no longer followed.
        assert_eq!(folders.changes(), Changed::Nothing);
    }

    #[test]
    fn a_change_the_kernel_did_not_report_means_everything() {
        let dir = tempfile::tempdir().unwrap();
        let mut folders = Folders::new();
        folders.depends_on(dir.path());
        // As on a file system inotify does not follow: no event comes, the
        // time still changes.
        folders.watched.clear();
        if let (Some(inotify), Some(f)) = (&folders.inotify, folders.folders.values().next()) {
            if let Some(wd) = f.watch {
                inotify.remove(wd);
            }
        }
        let _ = folders.changes();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(dir.path().join("new.db"), b"").unwrap();
        assert_eq!(folders.changes(), Changed::Unknown);
    }

    #[test]
    fn a_full_rescan_forgets_the_folders_it_no_longer_needs() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let mut folders = Folders::new();
        folders.begin_full();
        folders.depends_on(&a);
        folders.depends_on(&b);
        folders.end_full();
        folders.begin_full();
        folders.depends_on(&a);
        folders.end_full();
        assert_eq!(folders.folders.len(), 1);
        std::fs::write(b.join("x"), b"").unwrap();
        assert_eq!(folders.changes(), Changed::Nothing);
    }
}
