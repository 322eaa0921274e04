//! Which databases may have changed since their last poll, from the kernel
//! (inotify), so that an idle database costs no system call at all.
//!
//! A poller watches the folder of each of its databases for the database
//! file and its `-wal` being written, created, deleted or renamed, and for
//! the folder itself going away. A database with no such event since its
//! last poll, nothing due and nothing owed is skipped. Without inotify (or
//! past its limits), and every [`FULL_CHECK`] regardless, databases are
//! polled as before: two `stat` calls each.

use super::inotify::Inotify;
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often every database is polled in full, events or not: a safety net
/// under the kernel's notifications.
pub const FULL_CHECK: Duration = Duration::from_secs(30);

/// A folder watched, and which slots care about which of its files.
#[derive(Default)]
struct Folder {
    /// File name → slots (a database file and its `-wal` each name theirs).
    names: HashMap<OsString, Vec<usize>>,
    slots: Vec<usize>,
}

/// One inotify instance and what its watches stand for.
pub struct Changes {
    inotify: Option<Inotify>,
    folders: HashMap<i32, Folder>,
    by_path: HashMap<PathBuf, i32>,
}

impl Changes {
    /// A new instance; without inotify, every database counts as changed.
    pub fn new() -> Changes {
        Changes {
            inotify: Inotify::new(),
            folders: HashMap::new(),
            by_path: HashMap::new(),
        }
    }

    /// Watches the database at `db` for `slot`; `false` when it cannot be
    /// watched (the slot is then polled in full every time).
    pub fn watch(&mut self, slot: usize, db: &Path) -> bool {
        let (Some(inotify), Some(dir), Some(file)) = (&self.inotify, db.parent(), db.file_name())
        else {
            return false;
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let wd = match self.by_path.get(dir) {
            Some(&wd) => wd,
            None => {
                let mask = libc::IN_MODIFY
                    | libc::IN_CREATE
                    | libc::IN_DELETE
                    | libc::IN_MOVED_FROM
                    | libc::IN_MOVED_TO
                    | libc::IN_ATTRIB
                    | libc::IN_DELETE_SELF
                    | libc::IN_MOVE_SELF;
                let Some(wd) = inotify.add(dir, mask) else {
                    return false;
                };
                self.by_path.insert(dir.to_path_buf(), wd);
                wd
            }
        };
        let folder = self.folders.entry(wd).or_default();
        folder.slots.push(slot);
        let mut wal = file.to_os_string();
        wal.push("-wal");
        for name in [file.to_os_string(), wal] {
            folder.names.entry(name).or_default().push(slot);
        }
        true
    }

    /// Stops watching the database of `slot` at `db`.
    pub fn unwatch(&mut self, slot: usize, db: &Path) {
        let Some(dir) = db.parent() else { return };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let Some(&wd) = self.by_path.get(dir) else {
            return;
        };
        let Some(folder) = self.folders.get_mut(&wd) else {
            return;
        };
        folder.slots.retain(|&s| s != slot);
        for slots in folder.names.values_mut() {
            slots.retain(|&s| s != slot);
        }
        if folder.slots.is_empty() {
            self.folders.remove(&wd);
            self.by_path.remove(dir);
            if let Some(inotify) = &self.inotify {
                inotify.remove(wd);
            }
        }
    }

    /// Reads the events that arrived and calls `changed` for each slot they
    /// concern (every slot when the kernel's queue overflowed).
    pub fn drain(&mut self, mut changed: impl FnMut(usize)) {
        let Some(inotify) = &mut self.inotify else {
            return;
        };
        let folders = &self.folders;
        inotify.drain(|event| {
            if event.mask & libc::IN_Q_OVERFLOW != 0 {
                folders
                    .values()
                    .flat_map(|f| &f.slots)
                    .for_each(|&s| changed(s));
            } else if let Some(folder) = folders.get(&event.wd) {
                let whole = event.mask
                    & (libc::IN_DELETE_SELF | libc::IN_MOVE_SELF | libc::IN_IGNORED)
                    != 0;
                let slots = if whole {
                    Some(&folder.slots)
                } else {
                    folder.names.get(event.name)
                };
                slots.into_iter().flatten().for_each(|&s| changed(s));
            }
        });
    }
}

impl Default for Changes {
    fn default() -> Self {
        Changes::new()
    }
}
