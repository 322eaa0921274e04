//! Giving freed memory back to the system. A `watch` over thousands of
//! databases allocates in waves (opening them at start, a rescan that
//! finds many, a burst of large transactions) and then sits idle for
//! hours: glibc's malloc keeps what those waves freed inside its heap,
//! where it still counts as the process's memory, unless asked to return
//! it. (The binary also fixes glibc's thresholds at start, in `main.rs`,
//! so that large buffers are mapped on their own and unmapped when freed.)
//! musl's allocator, in the static build, returns freed pages by itself.

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
