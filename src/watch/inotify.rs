//! The kernel's file change notifications (inotify), as the pollers and
//! discovery use them: one non-blocking instance, watches added and
//! removed by folder, and the events read until none is left.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// One inotify instance.
pub struct Inotify {
    fd: OwnedFd,
    buf: Vec<u8>,
}

/// One event: the watch it came from, what happened, and the entry's name
/// (empty for an event about the watched folder itself).
pub struct Event<'b> {
    pub wd: i32,
    pub mask: u32,
    pub name: &'b OsStr,
}

impl Inotify {
    /// `None` when the kernel has no inotify (or no instance left).
    pub fn new() -> Option<Inotify> {
        // SAFETY: inotify_init1 takes flags and returns a new descriptor.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        (fd >= 0).then(|| Inotify {
            // SAFETY: a descriptor we own, just created.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            buf: Vec::new(),
        })
    }

    /// Watches `dir` for the events of `mask`; `None` when it cannot be
    /// watched (gone, or past the user's limit of watches).
    pub fn add(&self, dir: &Path, mask: u32) -> Option<i32> {
        let path = CString::new(dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: a valid descriptor and a NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), path.as_ptr(), mask) };
        (wd >= 0).then_some(wd)
    }

    pub fn remove(&self, wd: i32) {
        // SAFETY: removing a watch of our own descriptor.
        unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), wd) };
    }

    /// Calls `each` for every event queued, until none is left.
    pub fn drain(&mut self, mut each: impl FnMut(Event)) {
        self.buf.resize(64 * 1024, 0);
        loop {
            // SAFETY: reading into a buffer we own, of its length.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast::<libc::c_void>(),
                    self.buf.len(),
                )
            };
            let Ok(n) = usize::try_from(n) else { return };
            if n == 0 {
                return;
            }
            parse(&self.buf[..n], &mut each);
        }
    }
}

/// The events in what one `read` returned.
fn parse(buf: &[u8], each: &mut impl FnMut(Event)) {
    // struct inotify_event { int wd; uint32_t mask, cookie, len; char name[]; }
    const HEADER: usize = 16;
    let mut at = 0usize;
    while at + HEADER <= buf.len() {
        let field = |o: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&buf[at + o..at + o + 4]);
            b
        };
        let len = u32::from_ne_bytes(field(12)) as usize;
        let end = (at + HEADER + len).min(buf.len());
        let raw = &buf[at + HEADER..end];
        each(Event {
            wd: i32::from_ne_bytes(field(0)),
            mask: u32::from_ne_bytes(field(4)),
            name: OsStr::from_bytes(&raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())]),
        });
        at = end;
    }
}
