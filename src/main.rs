//! The `walsync` binary: parses the command line, runs it, and turns errors
//! into the documented exit codes.

fn main() {
    // One process watches thousands of databases whose memory is allocated
    // by many threads over its life: glibc's malloc would keep an arena per
    // thread (each fragmenting on its own); two are plenty here. Buffers
    // from 128 KiB up are mapped on their own and unmapped when freed, and
    // free memory above 128 KiB at the heap's top goes back at once:
    // glibc's defaults raise both limits after the first large buffer is
    // freed, after which a start-up's transient buffers would stay
    // resident for the life of the process. (musl's allocator, in the
    // static build, has no arenas and returns freed pages by itself.)
    // SAFETY: mallopt only changes the allocator's settings, before any
    // thread starts.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
    }
    let args: Vec<String> = std::env::args().collect();
    std::process::exit(walsync::cli::main(&args));
}
