//! Which databases may have changed since their last poll, from the kernel
//! (inotify), so that an idle database costs no system call at all.
//!
//! A poller watches the folder of each of its databases for the database
//! file and its `-wal` being written, created, deleted or renamed, and for
//! the folder itself going away. A database with no such event since its
//! last poll, nothing due and nothing owed is skipped. Without inotify (or
//! past its limits), and every [`FULL_CHECK`] regardless, databases are
//! polled as before: two `stat` calls each.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};
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
    fd: Option<OwnedFd>,
    folders: HashMap<i32, Folder>,
    by_path: HashMap<PathBuf, i32>,
    buf: Vec<u8>,
}

impl Changes {
    /// A new instance; without inotify, every database counts as changed.
    pub fn new() -> Changes {
        // SAFETY: inotify_init1 takes flags and returns a new descriptor.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        Changes {
            // SAFETY: a descriptor we own, just created.
            fd: (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) }),
            folders: HashMap::new(),
            by_path: HashMap::new(),
            buf: Vec::new(),
        }
    }

    /// Watches the database at `db` for `slot`; `false` when it cannot be
    /// watched (the slot is then polled in full every time).
    pub fn watch(&mut self, slot: usize, db: &Path) -> bool {
        let (Some(fd), Some(dir), Some(file)) = (&self.fd, db.parent(), db.file_name()) else {
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
                let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
                    return false;
                };
                let mask = libc::IN_MODIFY
                    | libc::IN_CREATE
                    | libc::IN_DELETE
                    | libc::IN_MOVED_FROM
                    | libc::IN_MOVED_TO
                    | libc::IN_ATTRIB
                    | libc::IN_DELETE_SELF
                    | libc::IN_MOVE_SELF;
                // SAFETY: a valid descriptor and NUL-terminated path.
                let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) };
                if wd < 0 {
                    return false;
                }
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
            if let Some(fd) = &self.fd {
                // SAFETY: removing a watch of our own descriptor.
                unsafe { libc::inotify_rm_watch(fd.as_raw_fd(), wd) };
            }
        }
    }

    /// Reads the events that arrived and calls `changed` for each slot they
    /// concern (every slot when the kernel's queue overflowed).
    pub fn drain(&mut self, mut changed: impl FnMut(usize)) {
        let Some(fd) = &self.fd else { return };
        self.buf.resize(64 * 1024, 0);
        loop {
            // SAFETY: reading into a buffer we own, of its length.
            let n = unsafe {
                libc::read(
                    fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast::<libc::c_void>(),
                    self.buf.len(),
                )
            };
            if n <= 0 {
                return;
            }
            let mut at = 0usize;
            let n = n as usize;
            while at + 16 <= n {
                let field = |o: usize| {
                    let mut b = [0u8; 4];
                    b.copy_from_slice(&self.buf[at + o..at + o + 4]);
                    b
                };
                let wd = i32::from_ne_bytes(field(0));
                let mask = u32::from_ne_bytes(field(4));
                let len = u32::from_ne_bytes(field(12)) as usize;
                let end = (at + 16 + len).min(n);
                let raw = &self.buf[at + 16..end];
                let name = OsStr::from_bytes(
                    &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())],
                );
                if mask & libc::IN_Q_OVERFLOW != 0 {
                    self.folders
                        .values()
                        .flat_map(|f| &f.slots)
                        .for_each(|&s| changed(s));
                } else if let Some(folder) = self.folders.get(&wd) {
                    let whole =
                        mask & (libc::IN_DELETE_SELF | libc::IN_MOVE_SELF | libc::IN_IGNORED) != 0;
                    let slots = if whole {
                        Some(&folder.slots)
                    } else {
                        folder.names.get(name)
                    };
                    slots.into_iter().flatten().for_each(|&s| changed(s));
                }
                at = end;
            }
        }
    }
}

impl Default for Changes {
    fn default() -> Self {
        Changes::new()
    }
}
