//! Giving freed memory back to the system. A `watch` over thousands of
//! databases allocates in waves (opening them at start, a rescan that
//! finds many, a burst of large transactions) and then sits idle for
//! hours: glibc's malloc keeps what those waves freed inside its heap,
//! where it still counts as the process's memory, unless asked to return
//! it. (The binary also fixes glibc's thresholds at start, in `main.rs`,
//! so that large buffers are mapped on their own and unmapped when freed.)
//! musl's allocator, in the static build, returns freed pages by itself.

/// The process's resident memory in bytes (Linux: `/proc/self/statm`).
pub(crate) fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Returns the free pages of every malloc arena to the system. Costs a
/// walk over the allocator's free lists; meant for after a wave of work,
/// not for a hot path.
pub(crate) fn give_back() {
    // SAFETY: malloc_trim only releases memory malloc holds free; it is
    // safe to call from any thread at any time.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}
